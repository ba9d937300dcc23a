import gzip
import struct

import numpy as np
import pytest
import torch

from ardiff.data.fashion_mnist import DEBIAN_DIR, FashionMNIST, load_fashion_mnist, read_idx

HAVE_FMNIST = (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()


def write_idx(path, array, gz=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_read_idx_roundtrip_and_corrupt_files(tmp_path):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x.gz", a)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), a)
    write_idx(tmp_path / "raw", a, gz=False)
    assert np.array_equal(read_idx(tmp_path / "raw"), a)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 20)
    with pytest.raises(ValueError, match=r"bad is not an IDX file"):
        read_idx(tmp_path / "bad")
    data = (tmp_path / "raw").read_bytes()
    (tmp_path / "short").write_bytes(data[:-5])
    with pytest.raises(ValueError, match=r"short is truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"cannot read IDX file .*broken.gz"):
        read_idx(tmp_path / "broken.gz")


def test_missing_user_directory_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST files .* not found in"):
        load_fashion_mnist(tmp_path, "train")


def test_user_directory_with_wrong_shapes(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(ValueError, match=r"have shapes \(5, 28, 28\) and \(5,\), expected \(10000, 28, 28\)"):
        load_fashion_mnist(tmp_path, "test")


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_splits():
    train = FashionMNIST(split="train")
    test = FashionMNIST(split="test")
    assert len(train) == 60000 and len(test) == 10000
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.min() >= -1 and x.max() <= 1 and 0 <= int(y) <= 9
    assert torch.bincount(test.labels).tolist() == [1000] * 10
