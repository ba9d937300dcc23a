"""Fashion-MNIST from its IDX files.

Search order: a directory the user names; Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist/``); a download from the dataset's public URLs
into a user cache when the network allows it; otherwise a clear error saying how to get it.
"""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
PUBLIC_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped); errors name the file and what is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its header needs {header} bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes of data), "
                         f"the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _download(directory: Path, stems: tuple[str, ...]) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        for stem in stems:
            target = directory / f"{stem}.gz"
            if target.is_file():
                continue
            tmp = target.with_suffix(".part")
            with urllib.request.urlopen(PUBLIC_URL + stem + ".gz", timeout=30) as r, open(tmp, "wb") as f:
                f.write(r.read())
            os.replace(tmp, target)
    except OSError:
        return False
    return True


def locate_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train", download: bool = True) -> Path:
    if split not in FILES:
        raise ValueError(f"split={split!r}; use 'train' or 'test'")
    stems = FILES[split][:2]
    if root:  # a directory the user names is the only place looked at
        missing = [s for s in stems if not _find(Path(root), s)]
        if missing:
            raise FileNotFoundError(f"Fashion-MNIST files {missing} (or .gz) not found in {root}")
        return Path(root)
    if all(_find(DEBIAN_DIR, s) for s in stems):
        return DEBIAN_DIR
    cache = Path(os.environ.get("ARDIFF_CACHE", Path.home() / ".cache" / "ardiff")) / "fashion-mnist"
    if all(_find(cache, s) for s in stems) or (download and _download(cache, stems)):
        return cache
    raise FileNotFoundError(
        "Fashion-MNIST not found. Install Debian's package (`apt-get install dataset-fashion-mnist`, "
        f"which puts it in {DEBIAN_DIR}), or pass the directory holding {stems[0]}[.gz] and "
        f"{stems[1]}[.gz], or allow the download from {PUBLIC_URL}"
    )


def load_fashion_mnist(root=None, split: str = "train", download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,)."""
    directory = locate_fashion_mnist(root, split, download)
    img_stem, lbl_stem, count = FILES[split]
    images = read_idx(_find(directory, img_stem))
    labels = read_idx(_find(directory, lbl_stem))
    if images.shape != (count, 28, 28) or labels.shape != (count,):
        raise ValueError(f"Fashion-MNIST {split} files in {directory} have shapes {images.shape} and {labels.shape}, "
                         f"expected ({count}, 28, 28) and ({count},)")
    if labels.max() > 9:
        raise ValueError(f"Fashion-MNIST {split} labels in {directory} hold {labels.max()}; labels are 0..9")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionMNIST(Dataset):
    """Images in [-1, 1], shape (1, 28, 28), and their class label.

    ``pad_to`` (>= 28) centres the items on a larger black canvas, e.g. 32 so that
    4x4 patches tile the image.
    """

    num_classes = 10

    def __init__(self, root=None, split: str = "train", download: bool = True, pad_to: int | None = None):
        images, self.labels = load_fashion_mnist(root, split, download)
        if pad_to is not None and pad_to != 28:
            if pad_to < 28:
                raise ValueError(f"pad_to={pad_to} must be >= 28 (Fashion-MNIST items are 28x28)")
            before = (pad_to - 28) // 2
            after = pad_to - 28 - before
            images = torch.nn.functional.pad(images, (before, after, before, after))
        self.images = images.unsqueeze(1)

    def __len__(self) -> int:
        return len(self.labels)

    def class_labels(self) -> torch.Tensor:
        """The class of every image (for class-weighted sampling, ``train.class_weights``)."""
        return self.labels

    def __getitem__(self, index: int):
        return self.images[index].float() / 127.5 - 1.0, self.labels[index]
