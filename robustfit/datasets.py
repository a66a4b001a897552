"""Loaders for the data the examples, tests and benchmarks use.

Images come back as float32 arrays of shape ``(n, C, H, W)`` with values in
[0, 1] (robustfit's default input box) and labels as int64 arrays.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ._utils import optional_import

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_digits_images():
    """scikit-learn's bundled 8x8 digits as images.

    Returns
    -------
    X : numpy.ndarray of shape (1797, 1, 8, 8), float32
        Pixel intensities scaled from 0..16 to [0, 1].
    y : numpy.ndarray of shape (1797,), int64
        Digit labels 0-9.

    Examples
    --------
    >>> from robustfit.datasets import load_digits_images
    >>> X, y = load_digits_images()
    >>> X.shape, X.dtype.name, float(X.max())
    ((1797, 1, 8, 8), 'float32', 1.0)
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    return X, d.target.astype(np.int64)


def _read_idx(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is cut short: its header declares {ndim} dimensions, but the "
                         f"file has only {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        what = "truncated" if arr.size < int(np.prod(shape)) else "corrupt (bytes past the end)"
        raise ValueError(f"{path} is {what}: its header declares {int(np.prod(shape))} values, "
                         f"the file holds {arr.size}")
    return arr.reshape(shape)


def _find(root, name):
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def default_data_home():
    """Where loaders look when no ``root`` is given.

    ``$ROBUSTFIT_DATA`` if set, else ``~/.robustfit_data`` (``~`` expanded in both).

    Returns
    -------
    path : pathlib.Path
    """
    return Path(os.environ.get("ROBUSTFIT_DATA", Path.home() / ".robustfit_data")).expanduser()


def load_mnist(root=None, split="test", download=False):
    """Read MNIST from its standard IDX files.

    The files (``t10k-images-idx3-ubyte`` and friends, gzipped or not) are
    looked up in ``root``, then in ``root/MNIST/raw`` (torchvision's layout),
    then in ``root/raw``.

    Parameters
    ----------
    root : str or path-like, default=None
        Folder holding the files (``~`` is expanded). ``None`` uses
        :func:`default_data_home`.
    split : {"test", "train"}, default="test"
        The 10,000-image test split or the 60,000-image training split.
    download : bool, default=False
        If the files are missing, download them with
        :class:`torchvision.datasets.MNIST` into ``root/MNIST/raw`` (needs a
        network connection).

    Returns
    -------
    X : numpy.ndarray of shape (n, 1, 28, 28), float32
        Pixel intensities in [0, 1].
    y : numpy.ndarray of shape (n,), int64
        Digit labels.

    Raises
    ------
    FileNotFoundError
        If the files are not found and ``download`` is False.
    """
    if split not in _MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser() if root is not None else default_data_home()
    img_name, lbl_name = _MNIST_FILES[split]
    img, lbl = _find(root, img_name), _find(root, lbl_name)
    if (img is None or lbl is None) and download:
        MNIST = optional_import("torchvision.datasets", "load_mnist(download=True)").MNIST
        MNIST(str(root), train=(split == "train"), download=True)
        img, lbl = _find(root, img_name), _find(root, lbl_name)
    if img is None or lbl is None:
        raise FileNotFoundError(
            f"MNIST {split} files ({img_name}[.gz], {lbl_name}[.gz]) not found in "
            f"{root}, {root / 'MNIST' / 'raw'} or {root / 'raw'}; pass root=... "
            "or download=True"
        )
    X = _read_idx(img).astype(np.float32)[:, None, :, :] / 255.0
    y = _read_idx(lbl).astype(np.int64)
    if len(X) != len(y):
        raise ValueError(f"{img} and {lbl} hold different numbers of samples")
    return X, y
