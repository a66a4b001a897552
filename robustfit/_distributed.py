"""Process-group helpers: data-parallel training and evaluation on torch.distributed.

Everything here is a thin layer over :mod:`torch.distributed`; nothing manages
processes or moves bytes by itself. Without an initialized process group (one
process, the default) every helper is a no-op: ``world_size()`` is 1,
``rank()`` is 0, reductions return their input.

* :func:`init_from_env` - initialize the default process group from the
  variables ``torchrun`` sets, when the script did not;
* :func:`all_reduce_sum`, :func:`all_reduce_max`, :func:`broadcast_object`,
  :func:`all_gather_object`, :func:`run_on_main` - collectives that accept
  tensors on any device (moved to the backend's device: CUDA for NCCL, the
  CPU for gloo);
* :class:`Shard` and :func:`batch_shard` - which rows of a *global* batch
  this rank holds. While a shard is active, robustfit's per-sample random
  draws (attack starts, Langevin noise, generator inputs) are drawn for the
  whole global batch on every rank and sliced (see
  :func:`robustfit._utils.rand_like`), so N ranks draw exactly the numbers
  one process draws.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime
import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

#: Environment variables ``torchrun`` sets for every worker.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_initialized():
    """Whether a default process group is initialized in this process."""
    return dist.is_available() and dist.is_initialized()


def world_size():
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if is_initialized() else 1


def rank():
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if is_initialized() else 0


def is_main():
    """Whether this process is rank 0 (always true without a process group)."""
    return rank() == 0


def local_rank():
    """This process's rank on its node (``LOCAL_RANK``; 0 when not set)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def launched_by_torchrun():
    """Whether torchrun's variables describe a group of more than one process."""
    if not all(v in os.environ for v in TORCHRUN_VARIABLES):
        return False
    try:
        return int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def init_from_env(device="cpu"):
    """Initialize the default process group from torchrun's variables if needed.

    Does nothing when a group is already initialized (the script called
    :func:`torch.distributed.init_process_group`) or when the process was not
    started by ``torchrun`` with more than one worker. The backend is NCCL for
    a CUDA ``device`` and gloo otherwise. On CUDA, the current device is set to
    ``cuda:LOCAL_RANK`` when the script has not chosen one, so that
    ``device="cuda"`` means this rank's GPU. A group initialized here is
    destroyed when the interpreter exits (a group left alive at exit can
    abort the process).

    Parameters
    ----------
    device : str or torch.device, default="cpu"
        The training device, for the choice of backend.

    Returns
    -------
    distributed : bool
        Whether a process group of more than one process is now active.
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    torchrun = launched_by_torchrun()
    if torchrun:
        _warn_restarts_on_shared_store()
    if not is_initialized() and torchrun:
        if cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        _watch_for_uncaught_exceptions()
        atexit.register(_destroy)
    if not is_initialized():
        return False
    if cuda and torch.device(device).index is None and torch.cuda.current_device() != local_rank() \
            and local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank())
    return world_size() > 1


_RESTART_WARNING = (
    "torchrun restarts workers (--max-restarts={restarts}) and shares its rendezvous store "
    "with them: a restarted worker can read a peer's address from the attempt before and "
    "fail with 'Connection refused' or hang while joining the group (pytorch/pytorch#135712, "
    "#167288). Export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun so that every "
    "attempt joins through a fresh store; see 'Resuming a data-parallel run' in the docs.")
_warned_restarts = False


def _warn_restarts_on_shared_store():
    """Warn once, on rank 0, when torchrun both restarts workers and shares its store."""
    global _warned_restarts
    restarts = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if (_warned_restarts or os.environ.get("RANK") != "0" or restarts in ("", "0")
            or os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"):
        return
    _warned_restarts = True
    frame, level = sys._getframe(1), 2  # point at the first caller outside robustfit
    package = os.path.dirname(os.path.abspath(__file__))
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(_RESTART_WARNING.format(restarts=restarts), RuntimeWarning, stacklevel=level)


def barrier():
    """Wait until every rank gets here (no-op on one process)."""
    if world_size() > 1:
        dist.barrier()


_uncaught = []


def _watch_for_uncaught_exceptions():
    """Remember an uncaught exception, so that exiting after it does not wait for the peers."""
    previous = sys.excepthook

    def hook(*exc_info):
        _uncaught.append(exc_info[0])
        previous(*exc_info)

    sys.excepthook = hook


EXIT_WAIT = datetime.timedelta(minutes=2)


def _destroy():
    """Destroy the group robustfit created, at exit.

    A gloo group destroyed while a peer is still at work (rank 0 pickling the
    model) can abort the process ("terminate called without an active
    exception"), which torchrun reports as a failed run. So after a normal
    exit the gloo ranks first wait for each other, at most ``EXIT_WAIT``; a
    rank whose peers do not come (gone, or still busy) leaves without
    destroying the group. After an uncaught exception a rank leaves at once,
    so that its peers fail fast. NCCL groups are destroyed as before.
    """
    if not is_initialized():
        return
    if not _uncaught and world_size() > 1 and dist.get_backend() == "gloo":
        try:  # point to point: never matched with a peer's collective
            dist.monitored_barrier(timeout=EXIT_WAIT)
        except RuntimeError:
            return
    dist.destroy_process_group()


def comm_device():
    """Where tensors must live for the default group's backend."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(tensor, op):
    if world_size() == 1:
        return tensor
    buf = tensor.detach().to(comm_device(), copy=True)
    dist.all_reduce(buf, op=op)
    return buf.to(tensor.device)


def all_reduce_sum(tensor):
    """The sum of ``tensor`` over all ranks (a new tensor on its device)."""
    return _reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor):
    """The element-wise maximum of ``tensor`` over all ranks."""
    return _reduce(tensor, dist.ReduceOp.MAX)


def all_reduce_mean_(tensors):
    """Average a list of tensors over the ranks, in place, with one collective
    per dtype (in float32 for half precisions, in their own for the others,
    so float64 buffers keep their precision)."""
    if world_size() == 1 or not tensors:
        return tensors
    groups = {}
    for t in tensors:
        dtype = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
        groups.setdefault(dtype, []).append(t)
    for dtype, group in groups.items():
        flat = torch.cat([t.detach().reshape(-1).to(comm_device(), dtype) for t in group])
        dist.all_reduce(flat)
        flat /= world_size()
        pos = 0
        for t in group:
            n = t.numel()
            with torch.no_grad():
                t.copy_(flat[pos:pos + n].view_as(t))
            pos += n
    return tensors


def broadcast_tensors_(tensors, src=0):
    """Overwrite ``tensors`` with rank ``src``'s values, in place."""
    if world_size() == 1:
        return tensors
    device = comm_device()
    for t in tensors:
        buf = t.detach().to(device, copy=True)
        dist.broadcast(buf, src=src)
        with torch.no_grad():
            t.copy_(buf)
    return tensors


def broadcast_object(obj, src=0):
    """``obj`` as rank ``src`` holds it, on every rank (pickled)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=comm_device())
    return box[0]


def all_gather_object(obj):
    """The list of every rank's ``obj``, indexed by rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class _Failure:
    """An exception raised on the main rank, sent to the others."""

    def __init__(self, exc):
        self.type = type(exc)
        self.message = str(exc)

    def reraise(self):
        try:
            error = self.type(f"on rank 0: {self.message}")
        except Exception:  # an exception class with another signature
            error = RuntimeError(f"on rank 0: {self.type.__name__}: {self.message}")
        raise error


def run_on_main(fn):
    """Call ``fn()`` on rank 0 only and return its result on every rank.

    An exception on rank 0 is raised on every rank (the other ranks get the
    same type and message), so no rank waits forever for a result; so are a
    ``KeyboardInterrupt`` and a ``SystemExit`` there.
    """
    if world_size() == 1:
        return fn()
    result = None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            broadcast_object(_Failure(exc))
            raise
    result = broadcast_object(result)
    if isinstance(result, _Failure):
        result.reraise()
    return result


def main_print(*args, **kwargs):
    """``print`` on rank 0, nothing on the others (a picklable sink)."""
    if is_main():
        print(*args, **kwargs)


def silent(*args, **kwargs):
    """A sink that drops everything (for callbacks on ranks other than 0)."""


def split_bounds(n, parts, index):
    """``(start, stop)`` of part ``index`` when ``n`` items are split into
    ``parts`` contiguous parts whose sizes differ by at most one (the first
    ``n % parts`` parts are one larger, as :func:`numpy.array_split`)."""
    base, extra = divmod(int(n), int(parts))
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


# --------------------------------------------------------------------------- batch shards
@dataclass(frozen=True)
class Shard:
    """The rows of one global batch that this rank holds.

    Parameters
    ----------
    total : int
        Samples in the global batch (all ranks together).
    ranges : tuple of (int, int)
        ``(start, stop)`` row ranges of the global batch held here, in the
        order of the local batch (two ranges for a batch of real and proxy
        samples).
    """

    total: int
    ranges: tuple

    @property
    def size(self):
        """Samples held by this rank."""
        return sum(b - a for a, b in self.ranges)

    @property
    def weight(self):
        """Factor on this rank's mean loss so that the mean over ranks that
        DistributedDataParallel takes of the gradients is the gradient of the
        global batch's mean loss: ``size * world_size / total``."""
        return self.size * world_size() / self.total

    def select(self, full):
        """This rank's rows of a tensor drawn for the whole global batch."""
        parts = [full[a:b] for a, b in self.ranges if b > a]
        if len(parts) == 1:
            return parts[0].clone()
        return torch.cat(parts) if parts else full[:0].clone()


class ShardedBatch(tuple):
    """A ``(X, y)`` batch that also carries its :class:`Shard` (``batch.shard``).

    A tuple, so skorch and its callbacks unpack it as any batch.
    """

    def __new__(cls, items, shard):
        obj = super().__new__(cls, items)
        obj.shard = shard
        return obj


_CURRENT_SHARD = contextvars.ContextVar("robustfit_batch_shard", default=None)


@contextlib.contextmanager
def batch_shard(shard):
    """Make ``shard`` the current shard inside the block (None: no shard)."""
    if shard is None:
        yield None
        return
    token = _CURRENT_SHARD.set(shard)
    try:
        yield shard
    finally:
        _CURRENT_SHARD.reset(token)


def current_shard():
    """The :class:`Shard` of the batch being trained on, or None."""
    return _CURRENT_SHARD.get()


def batch_mean(value):
    """The global batch's mean of a per-sample mean computed on this rank's shard.

    Outside a shard (one process, evaluation) ``value`` itself; inside, the
    all-reduced ``sum over ranks of value * size / total``.
    """
    shard = current_shard()
    if shard is None or world_size() == 1:
        return value
    return all_reduce_sum(value * (shard.size / shard.total))
