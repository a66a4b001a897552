"""A batch iterator that slices tensors already on the compute device."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset


def _dataset_arrays(dataset):
    """Return ``(X, y)`` behind a skorch ``Dataset`` (or a ``Subset`` of one),
    or ``None`` when the dataset is of another kind."""
    if isinstance(dataset, Subset):
        inner = _dataset_arrays(dataset.dataset)
        if inner is None:
            return None
        idx = np.asarray(dataset.indices)
        X, y = inner
        return X[idx], (None if y is None else y[idx])
    X, y = getattr(dataset, "X", None), getattr(dataset, "y", None)
    ok = (np.ndarray, torch.Tensor)
    if not isinstance(X, ok) or not (y is None or isinstance(y, ok)):
        return None
    if y is not None and len(y) != len(X):
        return None
    return X, y


class TensorLoader:
    """Minibatches by slicing tensors kept on the compute device.

    The default ``iterator_train`` and ``iterator_valid`` of
    :class:`~robustfit.AdversarialClassifier`. The whole array is moved to
    ``device`` once per ``fit``/``predict`` call, and each batch is a slice
    (or, when shuffling, an ``index_select`` with a permutation drawn on the
    device), in the spirit of airbench: no per-sample ``__getitem__``, no
    collation and no host-to-device copy per batch. Datasets that do not wrap
    arrays (any other :class:`torch.utils.data.Dataset`) fall back to a
    :class:`~torch.utils.data.DataLoader` with the same arguments.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset, torch.utils.data.Subset or Dataset
        The data to iterate over.
    batch_size : int, default=128
        Samples per batch.
    shuffle : bool, default=False
        Draw a new permutation every pass (from torch's global generator, so
        ``random_state`` makes it repeatable).
    drop_last : bool, default=False
        Skip the last, smaller batch.
    device : str or torch.device, default="cpu"
        Where the data is kept.
    **kwargs
        Passed to the :class:`~torch.utils.data.DataLoader` fallback.
    """

    def __init__(self, dataset, batch_size=128, shuffle=False, drop_last=False,
                 device="cpu", **kwargs):
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        arrays = _dataset_arrays(dataset)
        self.fallback = None
        if arrays is None:
            self.fallback = DataLoader(
                dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **kwargs
            )
            return
        X, y = arrays
        device = torch.device(device)
        self.X = torch.as_tensor(X).to(device, non_blocking=True)
        if device.type == "cuda" and self.X.dim() == 4:
            self.X = self.X.contiguous(memory_format=torch.channels_last)
        self.y = None if y is None else torch.as_tensor(y).to(device, non_blocking=True)

    def __len__(self):
        if self.fallback is not None:
            return len(self.fallback)
        n, b = len(self.X), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        if self.fallback is not None:
            yield from self.fallback
            return
        n, b = len(self.X), self.batch_size
        perm = torch.randperm(n, device=self.X.device) if self.shuffle else None
        stop = n - n % b if self.drop_last else n
        for start in range(0, stop, b):
            if perm is None:
                sl = slice(start, start + b)
                yield self.X[sl], (None if self.y is None else self.y[sl])
            else:
                idx = perm[start:start + b]
                yield self.X[idx], (None if self.y is None else self.y[idx])
