import gzip
import shutil

import numpy as np
import pytest

from rgm_ray.data import DatasetNotFoundError, IDXFormatError, load_dataset, read_idx
from rgm_ray.data.datasets import FASHION_MNIST_DEFAULT_ROOT


def test_fashion_mnist_default_root_shapes(fmnist_test):
    assert fmnist_test.images.shape == (10000, 1, 28, 28)
    assert fmnist_test.images.dtype == np.uint8
    assert fmnist_test.labels.dtype == np.int64
    assert set(np.unique(fmnist_test.labels)) == set(range(10))
    assert fmnist_test.shape == (1, 28, 28)


def test_torchvision_layout_root(tmp_path, fmnist_test):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(FASHION_MNIST_DEFAULT_ROOT / name) as src, open(raw / name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)  # uncompressed, as torchvision leaves them
    ds = load_dataset("fashion-mnist", "test", root=tmp_path)
    np.testing.assert_array_equal(ds.images, fmnist_test.images)
    np.testing.assert_array_equal(ds.labels, fmnist_test.labels)


def test_missing_data_names_path_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "train", root=tmp_path)
    assert str(tmp_path) in str(info.value) and "apt-get install dataset-fashion-mnist" in str(info.value)


def test_cifar10_requires_user_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--root"):
        load_dataset("cifar10", "train")
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist-ish", "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("fashion-mnist", "valid")


def test_idx_reader_rejects_bad_files(tmp_path):
    good = tmp_path / "good.idx"
    good.write_bytes(bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    truncated = tmp_path / "trunc.idx"
    truncated.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(IDXFormatError, match="trunc.idx.*expected 6 bytes"):
        read_idx(truncated)
    bad_magic = tmp_path / "magic.idx"
    bad_magic.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(IDXFormatError, match="bad magic"):
        read_idx(bad_magic)
    corrupt_gz = tmp_path / "x.gz"
    corrupt_gz.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(IDXFormatError, match="x.gz"):
        read_idx(corrupt_gz)
