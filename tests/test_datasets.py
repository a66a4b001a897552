"""Dataset loaders: bundled digits and MNIST from IDX files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from robustfit.datasets import default_data_home, load_digits_images, load_mnist


def test_load_digits_images():
    X, y = load_digits_images()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    from sklearn.datasets import load_digits

    np.testing.assert_allclose(X[:, 0] * 16, load_digits().images)


def test_load_mnist_real_test_split(mnist_dir):
    X, y = load_mnist(mnist_dir, split="test")
    assert X.shape == (10000, 1, 28, 28) and X.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    # the published test split starts 7, 2, 1, 0, 4
    np.testing.assert_array_equal(y[:5], [7, 2, 1, 0, 4])
    # about a fifth of MNIST pixels are ink
    assert 0.1 < float((X > 0.5).mean()) < 0.3


# ------------------------------------------------------------ synthetic IDX
def _idx_bytes(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def _write_mnist(folder, split="test", n=5, gz=False, images=None, labels=None):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (n, 28, 28)) if images is None else images
    labels = rng.randint(0, 10, n) if labels is None else labels
    stem = "t10k" if split == "test" else "train"
    for name, arr in ((f"{stem}-images-idx3-ubyte", images), (f"{stem}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(arr)
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)
    return np.asarray(images), np.asarray(labels)


@pytest.mark.parametrize("layout", ["root", "torchvision", "raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_layouts(tmp_path, layout, gz):
    folder = {"root": tmp_path, "torchvision": tmp_path / "MNIST" / "raw",
              "raw": tmp_path / "raw"}[layout]
    images, labels = _write_mnist(folder, gz=gz)
    X, y = load_mnist(tmp_path)
    assert X.shape == (5, 1, 28, 28) and X.dtype == np.float32
    np.testing.assert_allclose(X[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path, split="train")


def test_load_mnist_train_split_and_string_root(tmp_path):
    images, labels = _write_mnist(tmp_path, split="train", n=3)
    X, y = load_mnist(str(tmp_path), split="train")
    assert X.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(y, labels)


def test_load_mnist_default_root_from_env(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "MNIST" / "raw")
    monkeypatch.setenv("ROBUSTFIT_DATA", str(tmp_path))
    assert default_data_home() == tmp_path
    X, _ = load_mnist()
    assert X.shape == (5, 1, 28, 28)


def test_load_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path / "nowhere")
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "nowhere") in msg
    assert "download=True" in msg
    # only one of the two files present is still missing
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((1, 28, 28))))
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("split", ["val", "Test", None])
def test_load_mnist_bad_split(tmp_path, split):
    with pytest.raises(ValueError, match=rf"split must be 'train' or 'test', got {split!r}"):
        load_mnist(tmp_path, split=split)


def test_load_mnist_corrupt_files(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path)
    path.write_bytes(b"\x00\x00\x0d\x03" + bytes(12))  # float32 IDX, not uint8
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        load_mnist(tmp_path)
    _write_mnist(tmp_path)
    path.write_bytes(path.read_bytes() + bytes(10))  # was reported as "truncated"
    with pytest.raises(ValueError, match=r"corrupt \(bytes past the end\): its header declares "
                                         r"\d+ values, the file holds \d+"):
        load_mnist(tmp_path)
    path.write_bytes(b"\x00\x00\x08\x03" + bytes(4))  # numpy's raw "offset must be..." before
    with pytest.raises(ValueError, match="is cut short: its header declares 3 dimensions"):
        load_mnist(tmp_path)


def test_load_mnist_expands_the_home_folder(tmp_path, monkeypatch):
    """"~/data" was looked up literally, in root= and in $ROBUSTFIT_DATA."""
    _write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_mnist("~/mnist")[0].shape[1:] == (1, 28, 28)
    monkeypatch.setenv("ROBUSTFIT_DATA", "~/mnist")
    assert default_data_home() == tmp_path / "mnist"
    assert load_mnist()[0].shape[1:] == (1, 28, 28)


def test_load_mnist_length_mismatch(tmp_path):
    _write_mnist(tmp_path, images=np.zeros((4, 28, 28)), labels=np.zeros(3))
    with pytest.raises(ValueError, match="different numbers of samples"):
        load_mnist(tmp_path)
