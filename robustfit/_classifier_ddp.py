"""Data-parallel training of an :class:`~robustfit.AdversarialClassifier`
under ``torchrun``: the hooks of :class:`DataParallelMixin`, which the
classifier inherits, and the per-fit state :class:`_DistributedRun`."""

from __future__ import annotations

import numpy as np
import torch
from skorch.utils import is_dataset
from torch.nn.parallel import DistributedDataParallel

from ._distributed import (
    all_gather_object,
    all_reduce_mean_,
    barrier,
    broadcast_object,
    init_from_env,
    is_main,
    silent,
    world_size,
)
from ._utils import GLOBAL_RNG_LOCK


class DataParallelMixin:
    """Joining the process group, checking the ranks' data, wrapping the
    module in DistributedDataParallel for the training forward pass, and
    silencing file-writing callbacks on ranks other than 0."""

    def _distributed_run(self):
        """The state of the data-parallel fit in progress, or None."""
        run = self.__dict__.get("_ddp_run_")
        return run if run is not None and run.active else None

    def _prepare_distributed(self, X, y):
        """Join the process group (from torchrun's variables if the script did
        not) and check that every rank passed the same data; no-op on one process."""
        self._ddp_run_ = _DistributedRun()
        self._shared_seed_ = None
        if not init_from_env(self.device):
            return
        world = world_size()
        if self.batch_size != -1 and self.batch_size < world:
            raise ValueError(
                f"batch_size={self.batch_size} is the global batch, split across the "
                f"{world} ranks, so each rank would get less than one sample; use "
                f"batch_size >= {world} (or fewer ranks)")
        n = len(X)
        y_sum = None
        if y is not None and not is_dataset(X):
            y_sum = int(np.asarray(y, dtype=np.int64).sum())
        mine = (n, tuple(getattr(self, "input_shape_", ())), y_sum)
        every = all_gather_object(mine)
        if any(other != mine for other in every):
            sizes = ", ".join(f"rank {r}: {o[0]} samples of shape {o[1]}" for r, o in enumerate(every))
            same_size = len({o[:2] for o in every}) == 1
            raise ValueError(
                "every rank must call fit with the same data (robustfit shards it across "
                f"ranks itself), but the ranks passed different {'labels' if same_size else 'data'}: "
                f"{sizes}" + (" (same sizes, different labels)" if same_size else ""))
        if n < world:
            raise ValueError(
                f"X has {n} samples, fewer than the {world} ranks training on it")
        if self.random_state is None:  # one shared seed, so every rank shuffles alike
            self._shared_seed_ = broadcast_object(int(np.random.randint(2**31)))
        self._ddp_run_.active = True

    def _check_shardable(self, dataset):
        n, world = len(dataset), world_size()
        if n < world:
            raise ValueError(
                f"the training data has {n} samples after train_split, fewer than the "
                f"{world} ranks: every rank needs at least one sample per batch")

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        """Wrap the module in DistributedDataParallel for a data-parallel fit.

        The wrapper is used for the training forward pass only; ``module_``
        stays the plain module (attacks, evaluation and pickling use it). On
        ranks other than 0, callbacks that write files (skorch's
        ``Checkpoint`` family) and print (``sink``) are silenced for the fit.
        Resume state loaded outside this call (before it, or by ``load_best``
        at the end of the last one) is dropped: it is not this call's to
        resume; ``LoadInitState`` loads after this hook, in its own
        ``on_train_begin``.
        """
        super().on_train_begin(net, X=X, y=y, **kwargs)
        for key in ("_resume_rng_", "_resume_proxy_"):
            self.__dict__.pop(key, None)
        run = self._distributed_run()
        if run is None:
            return
        module = self.module_
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        run.ddp = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
        run.hooks = [p.register_hook(_canonical_grad) for p in module.parameters()
                     if p.requires_grad and p.dim() > 1 and 1 in p.shape]
        if not is_main():
            run.silence([cb for _, cb in self.callbacks_])

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        """In a data-parallel fit, seed torch's global generators for the epoch.

        The seed is drawn from (the fit's seed, this rank, the epoch), so the
        ranks draw independent dropout masks and a run resumed from a
        checkpoint (which holds rank 0's generator state only) draws on every
        rank what the uninterrupted run draws. One process keeps one stream
        for the whole fit.
        """
        super().on_epoch_begin(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)
        run = self._distributed_run()
        if run is not None and run.torch_seed is not None:
            seed = np.random.SeedSequence([run.torch_seed, len(self.history)])
            with GLOBAL_RNG_LOCK:  # as torch_seeded: never in another thread's seeded draws
                torch.manual_seed(int(seed.generate_state(1, np.uint64)[0]))

    def _average_buffers(self):
        """After a data-parallel training pass, average the floating-point
        buffers over the ranks: the module's (BatchNorm's running statistics,
        which each rank updated from its own shard of every batch) and those
        a callback keeps beside the module (:class:`~robustfit.recipes.EMA`'s
        average of them, through its ``distributed_buffers`` method). The
        validation pass, the checkpoints and the fitted estimator are then
        the same on every rank. Averaging, rather than rank 0's copy, gives
        statistics of the whole batch's samples (as timm's ``distribute_bn``
        does). A no-op on one process."""
        if self._distributed_run() is None:
            return
        tensors = list(self.module_.buffers())
        for _, cb in self.callbacks_:
            extra = getattr(cb, "distributed_buffers", None)
            if callable(extra):
                tensors += list(extra(self))
        all_reduce_mean_([t for t in tensors if t.is_floating_point()])

    def on_train_end(self, net, X=None, y=None, **kwargs):
        super().on_train_end(net, X=X, y=y, **kwargs)
        if self._distributed_run() is not None:
            # rank 0 has written its last checkpoint before any rank's callbacks
            # run on_train_end (e.g. Checkpoint(load_best=True) reading it back)
            barrier()

    def _end_distributed(self):
        run = self.__dict__.get("_ddp_run_")
        if run is not None:
            run.close()


def _canonical_grad(grad):
    """The gradient with the strides a fresh tensor of its shape has, when its
    memory is already in that order (a view: no copy, the same numbers).

    A dimension of size 1 can have any stride. torch's CPU convolution, given
    a one-channel image batch whose channel stride is not the canonical one
    (numpy's ``X[:, None]``), writes the gradient of a ``(out, 1, k, k)``
    kernel with channels-last strides; DistributedDataParallel compares
    strides literally, so it warned in every such run ("Grad strides do not
    match bucket view strides ... may impair performance").
    """
    return grad.view(grad.shape) if grad.is_contiguous() else grad


class _DistributedRun:
    """What one data-parallel ``fit`` holds: the DistributedDataParallel
    wrapper and the callbacks silenced on this rank. Never pickled (an empty
    one is), so a fitted estimator carries no process-group state."""

    def __init__(self):
        self.active = False
        self.ddp = None
        self.hooks = []  # gradient hooks on the module's parameters, for this fit
        self.patched = []
        self.torch_seed = None  # this rank's seed of torch's global generator (None: unseeded)

    def silence(self, callbacks):
        """Turn off file writes and printing of ``callbacks`` for this fit."""
        for cb in callbacks:
            for target in (cb, getattr(cb, "checkpoint_", None)):
                if target is None:
                    continue
                if hasattr(target, "save_model"):  # skorch's Checkpoint, TrainEndCheckpoint
                    self._patch(target, "save_model", silent)
                if callable(getattr(target, "sink", None)):  # PrintLog, Checkpoint messages
                    self._patch(target, "sink", silent)

    def _patch(self, obj, name, value):
        had = name in obj.__dict__
        self.patched.append((obj, name, had, obj.__dict__.get(name)))
        setattr(obj, name, value)

    def close(self):
        """Undo the patches and drop the wrapper."""
        for obj, name, had, old in reversed(self.patched):
            if had:
                setattr(obj, name, old)
            else:
                obj.__dict__.pop(name, None)
        self.patched = []
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        self.ddp = None
        self.active = False

    def __reduce__(self):
        return (_DistributedRun, ())
