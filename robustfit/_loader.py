"""Batch iterators: slices of tensors kept on the compute device, datasets
streamed through a DataLoader, real/proxy mixing; sharded across ranks in
data-parallel training."""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader

from ._distributed import Shard, ShardedBatch, split_bounds
from ._proxy_pool import proxy_per_batch, real_per_batch
from ._utils import randperm
from ._validation import dataset_arrays


class TensorLoader:
    """Minibatches by slicing tensors kept on the compute device.

    The default ``iterator_train`` and ``iterator_valid`` of
    :class:`~robustfit.AdversarialClassifier`. The whole array is moved to
    ``device`` once per ``fit``/``predict`` call, and each batch is a slice
    (or, when shuffling, an ``index_select`` with a permutation drawn on the
    device), in the spirit of airbench: no per-sample ``__getitem__``, no
    collation and no host-to-device copy per batch.

    Datasets that do not wrap arrays (any other
    :class:`torch.utils.data.Dataset`, e.g. torchvision's ``ImageFolder``)
    stream through a :class:`~torch.utils.data.DataLoader` (its workers, with
    pinned memory on CUDA) that follows the same plan of batches: the
    permutation is drawn by robustfit, and the DataLoader loads the indices
    of each batch.

    **Data-parallel.** With ``num_replicas > 1`` every rank draws the same
    permutation (the fit's random source is seeded alike on every rank), cuts
    it into the same *global* batches of ``batch_size``, and yields only its
    contiguous share of each batch (sizes differing by at most one), as a
    :class:`~robustfit._distributed.ShardedBatch` that records which rows of
    the global batch it holds. A last batch with fewer samples than ranks is
    skipped (with a warning), so that every rank trains on every step.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset, torch.utils.data.Subset or Dataset
        The data to iterate over.
    batch_size : int, default=128
        Samples per batch (per global batch, all ranks together).
    shuffle : bool, default=False
        Draw a new permutation every pass (from the current random source, so
        ``random_state`` makes it repeatable).
    drop_last : bool, default=False
        Skip the last, smaller batch.
    device : str or torch.device, default="cpu"
        Where the data is kept (where streamed batches are moved).
    num_replicas : int, default=1
        Ranks sharing each batch.
    rank : int, default=0
        This process's rank among them.
    **kwargs
        Passed to the :class:`~torch.utils.data.DataLoader` that streams a
        Dataset of another kind (``num_workers``, ``pin_memory``,
        ``persistent_workers``, ``collate_fn``, ...).
    """

    def __init__(self, dataset, batch_size=128, shuffle=False, drop_last=False,
                 device="cpu", num_replicas=1, rank=0, **kwargs):
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.device = torch.device(device)
        arrays = dataset_arrays(dataset)
        self.fallback = None
        self.n = len(dataset)
        self.warned_ = False
        self.min_last = self.num_replicas  # MixedLoader decides on real + proxy itself
        if arrays is None:
            kwargs.setdefault("pin_memory", self.device.type == "cuda")
            self._sampler = _PlannedBatches()
            self.fallback = DataLoader(dataset, batch_sampler=self._sampler, **kwargs)
            return
        X, y = arrays
        X, y = _model_dtypes(torch.as_tensor(X), None if y is None else torch.as_tensor(y))
        self.X = X.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and self.X.dim() == 4:
            self.X = self.X.contiguous(memory_format=torch.channels_last)
        self.y = None if y is None else y.to(self.device, non_blocking=True)

    def _batch_sizes(self):
        """Sizes of the global batches of one pass (tiny last batch skipped)."""
        n, b = self.n, self.batch_size
        sizes = [b] * (n // b)
        if n % b and not self.drop_last:
            sizes.append(n % b)
        if sizes and sizes[-1] < self.min_last:
            sizes.pop()
        return sizes

    def __len__(self):
        return len(self._batch_sizes())

    def _plan(self):
        """``(global_rows, start, stop)`` per batch: the global batch's indices
        into the data (a slice, or a tensor of a permutation) and this rank's
        part of it."""
        sizes = self._batch_sizes()
        if len(sizes) < len(range(0, self.n, self.batch_size)) and not self.drop_last \
                and not self.warned_:
            _warn_skipped(self.n % self.batch_size, self.num_replicas)
            self.warned_ = True
        perm = None
        if self.shuffle:
            perm = randperm(self.n, device=self.X.device if self.fallback is None else "cpu")
        plan, pos = [], 0
        for size in sizes:
            rows = slice(pos, pos + size) if perm is None else perm[pos:pos + size]
            start, stop = split_bounds(size, self.num_replicas, self.rank)
            plan.append((rows, size, start, stop))
            pos += size
        return plan

    def _iter_shards(self):
        """Yield ``(X, y, total, start, stop)``: this rank's part of each global batch."""
        plan = self._plan()
        if self.fallback is not None:
            self._sampler.batches = [_indices(rows)[start:stop] for rows, _, start, stop in plan]
            for (_, size, start, stop), batch in zip(plan, self.fallback):
                X, y = _to_device(batch, self.device)
                yield X, y, size, start, stop
            return
        for rows, size, start, stop in plan:
            if isinstance(rows, slice):
                local = slice(rows.start + start, rows.start + stop)
            else:
                local = rows[start:stop] if self.num_replicas > 1 else rows
            yield self.X[local], (None if self.y is None else self.y[local]), size, start, stop

    def __iter__(self):
        for X, y, size, start, stop in self._iter_shards():
            if self.num_replicas > 1:
                yield ShardedBatch((X, y), Shard(size, ((start, stop),)))
            else:
                yield X, y


def _warn_skipped(n, ranks):
    warnings.warn(
        f"the last batch of every epoch ({n} sample(s)) is skipped: it has fewer "
        f"samples than the {ranks} ranks", UserWarning, stacklevel=5,
    )


class _PlannedBatches:
    """A batch sampler that yields the index lists a :class:`TensorLoader` planned."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _indices(rows):
    if isinstance(rows, slice):
        return list(range(rows.start, rows.stop))
    return rows.tolist()


def _to_device(batch, device):
    """``(X, y)`` of a streamed batch, moved to ``device`` (asynchronously
    from pinned memory)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        X, y = batch
    else:
        X, y = batch, None

    def move(t):
        return t.to(device, non_blocking=True) if torch.is_tensor(t) else t

    return _model_dtypes(move(X), move(y))


def _model_dtypes(X, y):
    """Floating inputs as float32 and integer labels as int64, as ``fit`` makes
    arrays (``check_array``, ``check_labels``): a Dataset of float64 features or
    int32 labels reaches the module and the loss as the same arrays would."""
    if torch.is_tensor(X) and X.is_floating_point() and X.dtype != torch.float32:
        X = X.float()
    if torch.is_tensor(y) and not y.is_floating_point() and y.dtype not in (torch.int64, torch.bool):
        y = y.long()
    return X, y


class MixedLoader:
    """Training batches that mix real samples with proxy (synthetic) ones.

    One pass is one pass over the real data. Each batch holds
    ``batch_size - n_proxy`` real samples and ``n_proxy`` proxy samples
    (:func:`~robustfit._proxy_pool.proxy_per_batch`: ``round(batch_size *
    proxy_ratio)``, at least one of each kind), or with ``mixing="append"``
    ``batch_size`` real samples and ``round(batch_size * proxy_ratio / (1 -
    proxy_ratio))`` proxy samples, the proxy ones drawn without replacement from a fresh
    permutation of the proxy pool every pass (cycling through it again when
    the pool is smaller than a pass needs). The last, smaller real batch gets
    proxy samples in the same ratio.

    With ``num_replicas > 1`` (data-parallel training) every rank draws the
    same real and proxy indices and keeps its contiguous share of both parts
    of each global batch, so the ranks together train on exactly the batch
    one process would, and no proxy sample is used twice.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset or torch.utils.data.Dataset
        The real training data.
    X_proxy, y_proxy : torch.Tensor
        The proxy pool; labels are class indices.
    proxy_ratio : float
        Fraction of every batch drawn from the pool, in ``[0, 1)``.
    batch_size : int, default=128
        Samples per (global) batch, real and proxy together (``"split"``), or
        real samples per batch (``"append"``).
    mixing : {"split", "append"}, default="split"
        ``"append"`` adds the proxy samples to a full batch of ``batch_size``
        real ones (the batch grows to ``batch_size / (1 - proxy_ratio)``);
        see :func:`~robustfit._proxy_pool.proxy_per_batch`.
    shuffle : bool, default=True
        Shuffle the real data every pass.
    device : str or torch.device, default="cpu"
        Where batches are assembled.
    num_replicas : int, default=1
        Ranks sharing each batch.
    rank : int, default=0
        This process's rank among them.
    **kwargs
        Passed to the :class:`TensorLoader` over the real data.
    """

    def __init__(self, dataset, X_proxy, y_proxy, proxy_ratio, batch_size=128, shuffle=True,
                 device="cpu", num_replicas=1, rank=0, mixing="split", **kwargs):
        self.proxy_ratio = float(proxy_ratio)
        self.n_proxy = proxy_per_batch(batch_size, self.proxy_ratio, mixing)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.real = TensorLoader(dataset, batch_size=real_per_batch(batch_size, self.proxy_ratio, mixing),
                                 shuffle=shuffle,
                                 device=device, num_replicas=num_replicas, rank=rank, **kwargs)
        self.real.min_last = 0
        self.warned_ = False
        device = torch.device(device)
        self.X_proxy = torch.as_tensor(X_proxy).to(device)
        self.y_proxy = torch.as_tensor(y_proxy).to(device)

    def _n_proxy(self, size):
        """Proxy samples in a global batch of ``size`` real samples."""
        if self.n_proxy == 0 or len(self.X_proxy) == 0:
            return 0
        if size == self.real.batch_size:
            return self.n_proxy
        return max(1, int(round(size * self.proxy_ratio / (1 - self.proxy_ratio))))

    def _skips_last(self):
        """Whether the last batch has fewer samples (real and proxy) than ranks."""
        sizes = self.real._batch_sizes()
        return bool(sizes) and sizes[-1] + self._n_proxy(sizes[-1]) < self.num_replicas

    def __len__(self):
        return len(self.real) - self._skips_last()

    def __iter__(self):
        n_pool = len(self.X_proxy)
        perm = None
        pos = 0
        n_batches = len(self)
        if n_batches < len(self.real) and not self.warned_:
            _warn_skipped(self.real._batch_sizes()[-1], self.num_replicas)
            self.warned_ = True
        for b, (Xr, yr, size, start, stop) in enumerate(self.real._iter_shards()):
            if b >= n_batches:
                break
            k = self._n_proxy(size)
            k_total = k
            idx = []
            while k > 0:
                if perm is None or pos >= n_pool:
                    perm, pos = randperm(n_pool, device=self.X_proxy.device), 0
                take = perm[pos:pos + k]
                idx.append(take)
                pos += len(take)
                k -= len(take)
            if not idx:
                batch, total, ranges = (Xr, yr), size, ((start, stop),)
            else:
                idx = torch.cat(idx) if len(idx) > 1 else idx[0]
                pstart, pstop = split_bounds(len(idx), self.num_replicas, self.rank)
                if self.num_replicas > 1:
                    idx = idx[pstart:pstop]
                Xp = self.X_proxy.index_select(0, idx).to(dtype=Xr.dtype)
                yp = self.y_proxy.index_select(0, idx).to(dtype=yr.dtype)
                if Xr.device != Xp.device:
                    Xp, yp = Xp.to(Xr.device), yp.to(Xr.device)
                batch = (torch.cat([Xr, Xp]), torch.cat([yr, yp]))
                total = size + k_total
                ranges = ((start, stop), (size + pstart, size + pstop))
            if self.num_replicas > 1:
                yield ShardedBatch(batch, Shard(total, ranges))
            else:
                yield batch
