"""Class-folder image datasets (the ImageNet layout) with ADM/DiT centre-crop preprocessing.

``root/<class name>/<image files>``: classes sorted by name give the label indices, so
the labels of a folder do not depend on the order the file system lists it in. The
helpers here (folder scan, centre crop, seeded generators, skipping of unreadable files)
are shared with :mod:`ardiff.data.video_folder`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ardiff.utils.seeding import seeded_generator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's centre crop (also used by DiT): short side to ``image_size``, then the centre square.

    Large images are first halved with BOX filtering while the short side is at least twice
    the target, which anti-aliases better than one big bicubic step; the last step is
    BICUBIC. Returns a uint8 array (image_size, image_size, channels).
    """
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def scan_class_folders(root: str | os.PathLike, extensions: tuple[str, ...],
                       kind: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted) and ``(file, label)`` pairs of a ``root/<class>/<files>`` tree.

    Files are found recursively inside each class directory and matched by extension,
    case-insensitively; hidden files and directories are ignored. Errors name ``root`` and
    the expected layout, since a wrong ``data.root`` is the usual cause.
    """
    root = Path(root)
    layout = (f"expected {root}/<class name>/<{kind} files> with one subdirectory per class "
              f"and {kind} files ending in {', '.join(extensions)}")
    if not root.is_dir():
        raise FileNotFoundError(f"{kind} folder {root} does not exist; {layout}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class subdirectories; {layout}")
    samples = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            samples.extend((Path(dirpath) / f, label) for f in sorted(filenames)
                           if not f.startswith(".") and f.lower().endswith(extensions))
    if not samples:
        raise FileNotFoundError(f"no {kind} files in the {len(classes)} class directories of {root}; {layout}")
    return classes, samples


class ClassFolderDataset(Dataset):
    """Base of the image and video folders: indexing, labels and skipping of unreadable files.

    ``_load(path, generator)`` returns the sample tensor or raises ``ValueError`` naming the
    file. With ``skip_corrupt`` such a file is recorded in ``skipped_files``, a warning is
    issued, and the next readable index is returned in its place, so one bad file among
    millions does not stop a run. Files are checked when first loaded, not at construction
    (opening every file of ImageNet up front takes hours). With DataLoader workers each
    worker keeps its own record.
    """

    extensions: tuple[str, ...] = ()
    kind = "data"

    def __init__(self, root: str | os.PathLike, image_size: int, hflip: bool = True,
                 skip_corrupt: bool = False, seed: int = 0):
        if image_size <= 0:
            raise ValueError(f"image_size={image_size} must be > 0")
        self.root = Path(root)
        self.image_size = int(image_size)
        self.hflip = hflip
        self.skip_corrupt = skip_corrupt
        self.seed = seed
        self.classes, self.samples = scan_class_folders(root, self.extensions, self.kind)
        self.num_classes = len(self.classes)
        self.skipped_files: list[str] = []
        self._unreadable: set[int] = set()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: Path, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _flip(self, generator: torch.Generator) -> bool:
        return self.hflip and bool(torch.rand((), generator=generator) < 0.5)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a {self.kind} folder of {n} files")
        index %= n
        for offset in range(n):
            i = (index + offset) % n
            if i in self._unreadable:
                continue
            path, label = self.samples[i]
            try:
                # Keyed on the requested index, so a substitute sample is augmented the same
                # way whether or not the bad file was already known.
                x = self._load(path, seeded_generator(self.seed, index))
            except ValueError as e:
                if not self.skip_corrupt:
                    raise
                self._unreadable.add(i)
                self.skipped_files.append(str(path))
                warnings.warn(f"skip_corrupt=True: skipping an unreadable {self.kind} file ({self.num_skipped} "
                              f"skipped so far): {e}", stacklevel=2)
                continue
            return x, torch.tensor(label, dtype=torch.int64)
        raise ValueError(f"none of the {n} {self.kind} files under {self.root} could be read "
                         f"(skip_corrupt=True skipped them all); see skipped_files")


def load_image(path: Path, image_size: int) -> np.ndarray:
    """RGB uint8 (image_size, image_size, 3); a ``ValueError`` naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: PIL is lazy, and truncated files fail only here
            image = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return center_crop_arr(image, image_size)


class ImageFolder(ClassFolderDataset):
    """Images of a class-folder tree as float (3, image_size, image_size) in [-1, 1] and the class index.

    Any resolution and colour mode is accepted (converted to RGB, then ADM centre crop).
    The random horizontal flip is drawn from a generator seeded by ``(seed, index)``: the
    same sample gets the same flip in every run and every epoch.
    """

    extensions = IMAGE_EXTENSIONS
    kind = "image"

    def _load(self, path: Path, generator: torch.Generator) -> torch.Tensor:
        arr = load_image(path, self.image_size)
        if self._flip(generator):
            arr = arr[:, ::-1]
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0
