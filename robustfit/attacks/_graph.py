"""CUDA graphs for the fixed-step ascent loop of the training attack.

On a GPU, PGD-10 on a small network at a moderate batch size is bound by the
host, not the device: one ascent step is a forward and a backward pass of a
few hundred small kernels, each launched from Python. A CUDA graph records the
kernels of all ``steps`` ascent steps once and replays them with one launch.

:func:`cuda_graphs` switches the graphs on for the calls inside its block
(:class:`~robustfit.AdversarialClassifier` does it around the training attack
when ``cuda_graphs`` is on); :func:`~robustfit.attacks._steps.ascent_steps`
then asks :func:`run_graphed` first. What is graphed, and when:

- the ascent loop of PGD and FGSM on the cross-entropy (not Langevin's noisy
  steps, not TRADES' KL potential), on CUDA tensors;
- the random start is drawn outside the graph, by the usual seeded
  generators, so graphed and eager runs draw the same numbers;
- a graph is recorded the second time the same call is seen (same module,
  batch shape, dtypes, autocast setting, number of steps, norm, box,
  parameter storage and forward hooks), so a batch shape seen once per epoch
  (the last, smaller batch) runs eagerly in the first epoch; at most
  :data:`MAX_GRAPHS` graphs are kept per module, the least recently used
  dropped first (settings seen once are remembered apart, so they never push
  a graph out); the restarts of ``PGD(restarts=k)``, which attack
  data-dependent subsets, run eagerly;
- ``epsilon`` and the step size are inputs of the graph, like the batch, so
  the epsilon warm-up (a new epsilon every batch) replays one graph;
- autocast runs with its weight-cast cache off inside the graph, so every
  replay casts the current weights (a cached cast would freeze the weights
  of the recording);
- a module that cannot be recorded (one that reads a value back to the host
  in ``forward``, say) runs eagerly from then on, after one warning.

The graph reads the module's parameters and buffers where they live, so
optimizer steps (in place) are seen by the next replay; a module whose
parameters move to new storage (``module.to(...)``, ``load_state_dict`` with
``assign=True``) gets a new graph. What ``forward`` reads besides its input,
parameters and buffers (plain Python attributes, tensors that are not
buffers) is frozen at the recording, as with any CUDA graph: the module's
function must not change through them during a fit.
:class:`~robustfit.AdversarialClassifier` drops a module's graphs when
``fit`` ends, so a fitted estimator holds no graph memory.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import itertools
import warnings
import weakref

import torch

#: Graphs kept per module (one per batch shape and setting).
MAX_GRAPHS = 3
#: Settings seen once, remembered per module (apart from the graphs).
MAX_SEEN = 16

_ENABLED = contextvars.ContextVar("robustfit_cuda_graphs", default=False)
_GRAPHS = weakref.WeakKeyDictionary()  # module -> OrderedDict(key -> _FAILED | _Graph)
_SEEN = weakref.WeakKeyDictionary()  # module -> OrderedDict(key -> None), settings seen once
_FAILED = "failed"


@contextlib.contextmanager
def cuda_graphs(enabled=True):
    """Record and replay the ascent loops inside the block as CUDA graphs.

    Parameters
    ----------
    enabled : bool, default=True
        ``False`` runs every loop eagerly (the default outside the block).
    """
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _autocast_state(device):
    try:
        return torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)
    except (TypeError, AttributeError):  # torch < 2.4
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


def _recordable(x):
    return x.is_cuda and not torch.cuda.is_current_stream_capturing()


def hook_state(module):
    """The forward hooks that can run in ``module`` (global ones included), by identity."""
    from torch.nn.modules import module as nn_module

    hooks = tuple(
        (id(m), tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
        for m in module.modules() if m._forward_hooks or m._forward_pre_hooks
    )
    return hooks, tuple(nn_module._global_forward_hooks), tuple(nn_module._global_forward_pre_hooks)


def storage_state(module):
    """Where ``module``'s parameters and buffers live (and which take gradients): what a
    recording or a trace reads, so a change means recording or tracing again."""
    return tuple((t.data_ptr(), t.requires_grad)
                 for t in itertools.chain(module.parameters(), module.buffers()))


def _key(module, x, y, autocast_state, options, scalar_names):
    flags = tuple(m.training for m in module.modules()), hook_state(module)
    return (tuple(x.shape), x.dtype, x.device, tuple(y.shape), y.dtype, autocast_state,
            tuple(sorted(options.items())), scalar_names, storage_state(module), flags,
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


class _Graph:
    """``loop(module, x, y, delta, **options)`` recorded for static tensors."""

    def __init__(self, module, x, y, delta, loop, options, scalars, autocast_state):
        self.x = x.detach().clone()
        self.y = y.detach().clone()
        self.delta = delta.detach().clone()
        # float32 at least: a half-precision epsilon would round where a float does not
        dtype = torch.promote_types(x.dtype, torch.float32)
        self.scalars = {k: torch.tensor(float(v), dtype=dtype, device=x.device)
                        for k, v in scalars.items()}
        enabled, dtype = autocast_state

        def run(delta):
            with torch.autocast(x.device.type, dtype=dtype, enabled=enabled, cache_enabled=False):
                return loop(module, self.x, self.y, delta, **options, **self.scalars)

        self._record(run)

    def _record(self, run):
        """Record ``run(self.delta)`` as a CUDA graph; ``self.out`` is its output.
        (``run`` holds the module: it is not kept, so that the cache, weakly
        keyed by the module, does not keep the module alive.)"""
        device = self.x.device
        # one run on a side stream first, as torch.cuda.graph asks: lazy
        # initializations (cuDNN plans, the autograd engine's device thread)
        # happen outside the recording. It runs with host synchronizations
        # turned into errors, so a module that reads values back to the host
        # fails here, before a recording starts
        with torch.cuda.device(device):  # the batch's device, whichever is current
            current = torch.cuda.current_stream(device)
            side = torch.cuda.Stream(device=device)
            side.wait_stream(current)
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                with torch.cuda.stream(side):
                    run(self.delta.clone())
            finally:
                torch.cuda.set_sync_debug_mode(mode)
            current.wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: unsafe calls of other threads (a DataLoader's pin-memory
            # thread, NCCL's watchdog) do not break the recording or fail there
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device=device),
                                  capture_error_mode="thread_local"):
                self.out = run(self.delta)

    def _replay(self):
        with torch.cuda.device(self.x.device):
            self.graph.replay()

    @torch.no_grad()
    def __call__(self, x, y, delta, scalars):
        self.x.copy_(x)
        self.y.copy_(y)
        self.delta.copy_(delta)
        for k, v in scalars.items():
            self.scalars[k].fill_(float(v))
        self._replay()
        return self.out.clone()


def run_graphed(module, x, y, delta, loop, options, scalars):
    """``loop(module, x, y, delta, **options, **scalars)`` through a CUDA graph, or None.

    None means "run it eagerly": graphs are off, the tensors are not on CUDA,
    this call is seen for the first time, or the module could not be
    recorded. ``options`` must be hashable values (they are part of the key);
    ``scalars`` (floats) reach the loop as 0-dim float32 (or float64) tensors, set
    before each replay, so the loop must use them only in tensor arithmetic.
    """
    if not (_ENABLED.get() and _recordable(x)):
        return None
    state = _autocast_state(x.device)
    key = _key(module, x, y, state, options, tuple(sorted(scalars)))
    cache = _GRAPHS.get(module)
    if cache is None:
        cache = _GRAPHS[module] = collections.OrderedDict()
    entry = cache.get(key)
    if entry is None:
        seen = _SEEN.get(module)
        if seen is None:
            seen = _SEEN[module] = collections.OrderedDict()
        if key not in seen:  # first sighting: remember it apart, run eagerly
            seen[key] = None
            while len(seen) > MAX_SEEN:
                seen.popitem(last=False)
            return None
        del seen[key]
        try:
            entry = _Graph(module, x, y, delta, loop, options, scalars, state)
        except Exception as exc:  # noqa: BLE001 - any failure to record means "run eagerly"
            cache[key] = _FAILED
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            warnings.warn(
                f"robustfit could not record the attack on {type(module).__name__} as a CUDA "
                f"graph ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "it runs eagerly instead. cuda_graphs=False skips the attempt.",
                RuntimeWarning, stacklevel=4)
            return None
        cache[key] = entry
        while len(cache) > MAX_GRAPHS:
            cache.popitem(last=False)
    elif entry is _FAILED:
        cache.move_to_end(key)
        return None
    cache.move_to_end(key)
    return entry(x, y, delta, scalars)


def clear_graphs(module=None):
    """Drop the recorded graphs of ``module`` (of every module when None)."""
    if module is None:
        _GRAPHS.clear()
        _SEEN.clear()
    else:
        _GRAPHS.pop(module, None)
        _SEEN.pop(module, None)
