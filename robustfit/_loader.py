"""A batch iterator that slices tensors already on the compute device."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ._proxy_pool import proxy_per_batch
from ._utils import randperm
from ._validation import dataset_arrays


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
        arrays = dataset_arrays(dataset)
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
        perm = randperm(n, device=self.X.device) if self.shuffle else None
        stop = n - n % b if self.drop_last else n
        for start in range(0, stop, b):
            if perm is None:
                sl = slice(start, start + b)
                yield self.X[sl], (None if self.y is None else self.y[sl])
            else:
                idx = perm[start:start + b]
                yield self.X[idx], (None if self.y is None else self.y[idx])


class MixedLoader:
    """Training batches that mix real samples with proxy (synthetic) ones.

    One pass is one pass over the real data. Each batch holds
    ``batch_size - n_proxy`` real samples and ``n_proxy`` proxy samples
    (:func:`~robustfit._proxy_pool.proxy_per_batch`: ``round(batch_size *
    proxy_ratio)``, at least one of each kind), drawn without replacement from a fresh
    permutation of the proxy pool every pass (cycling through it again when
    the pool is smaller than a pass needs). The last, smaller real batch gets
    proxy samples in the same ratio.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset or torch.utils.data.Dataset
        The real training data.
    X_proxy, y_proxy : torch.Tensor
        The proxy pool; labels are class indices.
    proxy_ratio : float
        Fraction of every batch drawn from the pool, in ``[0, 1)``.
    batch_size : int, default=128
        Samples per batch, real and proxy together.
    shuffle : bool, default=True
        Shuffle the real data every pass.
    device : str or torch.device, default="cpu"
        Where batches are assembled.
    **kwargs
        Passed to the :class:`TensorLoader` over the real data.
    """

    def __init__(self, dataset, X_proxy, y_proxy, proxy_ratio, batch_size=128, shuffle=True,
                 device="cpu", **kwargs):
        self.proxy_ratio = float(proxy_ratio)
        n_proxy = proxy_per_batch(batch_size, self.proxy_ratio)
        self.n_proxy = n_proxy
        self.real = TensorLoader(dataset, batch_size=batch_size - n_proxy, shuffle=shuffle,
                                 device=device, **kwargs)
        device = torch.device(device)
        self.X_proxy = torch.as_tensor(X_proxy).to(device)
        self.y_proxy = torch.as_tensor(y_proxy).to(device)

    def __len__(self):
        return len(self.real)

    def __iter__(self):
        n_pool = len(self.X_proxy)
        perm = None
        pos = 0
        for Xr, yr in self.real:
            if self.n_proxy == 0 or n_pool == 0:
                yield Xr, yr
                continue
            k = self.n_proxy if len(Xr) == self.real.batch_size else max(
                1, int(round(len(Xr) * self.proxy_ratio / (1 - self.proxy_ratio))))
            idx = []
            while k > 0:
                if perm is None or pos >= n_pool:
                    perm, pos = randperm(n_pool, device=self.X_proxy.device), 0
                take = perm[pos:pos + k]
                idx.append(take)
                pos += len(take)
                k -= len(take)
            idx = torch.cat(idx) if len(idx) > 1 else idx[0]
            Xp = self.X_proxy.index_select(0, idx).to(dtype=Xr.dtype)
            yp = self.y_proxy.index_select(0, idx).to(dtype=yr.dtype)
            if Xr.device != Xp.device:
                Xp, yp = Xp.to(Xr.device), yp.to(Xr.device)
            yield torch.cat([Xr, Xp]), torch.cat([yr, yp])
