"""Small helpers shared across robustfit's modules."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib
import numbers
import random as pyrandom
import threading

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from ._distributed import current_shard

#: Held while torch's global generator is seeded and drawn from (weight
#: initialization), so that a fit in another thread cannot interleave draws.
GLOBAL_RNG_LOCK = threading.RLock()

#: Optional dependencies: top-level import name -> (pip name, robustfit extra).
#: setup.py's ``extras_require`` lists the same packages under the same extras.
OPTIONAL = {
    "ot": ("pot", "ot"),
    "matplotlib": ("matplotlib", "plot"),
    "diffusers": ("diffusers", "diffusion"),
    "torchvision": ("torchvision", "vision"),
}

#: What else the install hint of a package says.
_INSTALL_NOTES = {
    "torchvision": "; it must be the build that matches your torch, e.g. with "
                   "--index-url https://download.pytorch.org/whl/cpu for a CPU-only torch",
}


class OptionalDependencyError(ImportError):
    """An optional package that a feature needs is not installed (or fails to import).

    An :class:`ImportError`, so ``except ImportError`` catches it. ``package``
    is the pip name, ``extra`` the robustfit extra that installs it (or None)
    and ``feature`` what needed it.
    """

    def __init__(self, message, *, package, extra, feature):
        super().__init__(message, name=package)
        self.package = package
        self.extra = extra
        self.feature = feature


def optional_import(name, feature):
    """Import an optional dependency, or raise an ImportError naming the extra.

    Call it where the package is needed, not at module level, so that
    ``import robustfit`` works with the core dependencies alone.

    Parameters
    ----------
    name : str
        The module to import, e.g. ``"ot"`` or ``"matplotlib.pyplot"``; its
        top-level package is a key of ``OPTIONAL``.
    feature : str
        What needs it, for the message (e.g. ``"GeneratorSynth's OT term"``).

    Returns
    -------
    module : module

    Raises
    ------
    OptionalDependencyError
        A subclass of ImportError, when the import fails (the package is
        missing, or installed but broken, such as a torchvision built for
        another torch): the message names the feature, the package and the
        extra to install, e.g. ``pip install 'robustfit[ot]'``.
    """
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a broken install can raise anything, e.g. a RuntimeError
        top = name.split(".")[0]
        pip_name, extra = OPTIONAL.get(top, (top, None))
        note = _INSTALL_NOTES.get(top, "")
        hint = (f"pip install 'robustfit[{extra}]' (or pip install {pip_name}{note})" if extra
                else f"pip install {pip_name}")
        absent = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == top
        cause = "" if absent else f" (it is installed but failed to import: {type(exc).__name__}: {exc})"
        raise OptionalDependencyError(
            f"{feature} needs the optional package {pip_name}: {hint}{cause}",
            package=pip_name, extra=extra, feature=feature,
        ) from exc


@contextlib.contextmanager
def torch_seeded(seed):
    """Seed torch's generators inside the block; restore them on exit.

    Forks the CPU generator and, when CUDA is available, the generators of
    every visible GPU, so that seeding here changes nothing outside the block.
    ``seed=None`` leaves the generators alone.

    The save-and-seed on entry and the restore on exit each happen under
    :data:`GLOBAL_RNG_LOCK`: a fit seeding the global generator for its whole
    run must not reseed or rewind it in the middle of another thread's seeded
    weight initialization (which holds the lock from its seed to its last
    draw). Unlocked draws inside the block (dropout) still share the one global
    generator with other threads.
    """
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with GLOBAL_RNG_LOCK:
        cpu_state = torch.get_rng_state()
        gpu_states = [torch.cuda.get_rng_state(d) for d in devices]
        torch.manual_seed(int(seed))
    try:
        yield
    finally:
        with GLOBAL_RNG_LOCK:
            torch.set_rng_state(cpu_state)
            for d, state in zip(devices, gpu_states):
                torch.cuda.set_rng_state(state, d)


@contextlib.contextmanager
def random_streams_kept(device="cpu"):
    """Run a block without moving the random streams around it.

    On exit, every stream the surrounding code draws from is put back where it
    was on entry: torch's CPU generator, the generator of ``device`` when it is
    a GPU (that device's only, so no other GPU is initialized), numpy's and
    Python's global generators, and the generators of the current
    :class:`RandomSource` (a generator the block created for a new device is
    dropped, to be created afresh). A measurement made during training (robust
    validation, the collapse guard) runs inside it, so a fit with the
    measurement draws the numbers the fit without it draws.

    Save and restore, like :func:`torch.random.fork_rng`: a thread drawing
    from torch's global generator while another thread is inside the block can
    see its draws repeated. Both happen under :data:`GLOBAL_RNG_LOCK`, so they
    never fall inside another fit's seeded weight initialization; robustfit's
    own draws go through the per-fit :class:`RandomSource` (a context
    variable), which threads do not share.

    Parameters
    ----------
    device : str or torch.device, default="cpu"
        The device the block computes on.
    """
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    cuda_index = _device_key(device).index if cuda else None
    source = _CURRENT_SOURCE.get()
    with GLOBAL_RNG_LOCK:  # never in the middle of another thread's seeded weight init
        saved = (
            torch.get_rng_state(),
            torch.cuda.get_rng_state(cuda_index) if cuda else None,
            np.random.get_state(),
            pyrandom.getstate(),
            None if source is None else (source.get_state(), set(source._generators)),
        )
    try:
        yield
    finally:
        cpu, gpu, np_state, py_state, src = saved
        with GLOBAL_RNG_LOCK:
            torch.set_rng_state(cpu)
            if cuda:
                torch.cuda.set_rng_state(gpu, cuda_index)
            np.random.set_state(np_state)
            pyrandom.setstate(py_state)
        if src is not None:
            states, keys = src
            for key in set(source._generators) - keys:
                del source._generators[key]
            source.set_state(states)


def is_fitted(estimator):
    """scikit-learn's fitted check, extended: a skorch net counts as fitted
    once initialized, and a duck-typed classifier when it has ``classes_``."""
    if hasattr(estimator, "initialized_"):
        return bool(estimator.initialized_)
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    except (TypeError, AttributeError):
        return hasattr(estimator, "classes_")
    return True


def clone_keeping_fitted(estimator, names):
    """``sklearn.base.clone``, except that the parameters ``names`` are kept by
    reference when they hold fitted estimators.

    For estimators whose parameter is a model to *use* (a teacher, the
    classifier under study): the default ``clone`` would replace it by an
    unfitted copy, and the clone could not work.
    """
    params = estimator.get_params(deep=False)
    new = {}
    for key, value in params.items():
        if key in names and value is not None and is_fitted(value):
            new[key] = value
        else:
            new[key] = clone(value, safe=False)
    return type(estimator)(**new)


def amp_dtype(amp, device):
    """The autocast dtype for an ``amp`` setting on ``device``, or None.

    ``"bf16"`` is bfloat16 everywhere; ``"auto"`` is bfloat16 on CUDA and full
    precision elsewhere; ``None``/``False`` is full precision.
    """
    if amp == "bf16" or (amp == "auto" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return None


def autocast(amp, device):
    """A context manager: autocast for ``amp`` on ``device``, or a no-op."""
    dtype = amp_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def fitted_copy(value, current, previous_params, reset):
    """The fitted copy of a parameter object (an attack, an objective).

    Returns ``(copy, params)``: a fresh ``clone(value)`` when ``reset`` is true
    (a new ``fit``), when there is no ``current`` copy, or when ``value``'s
    parameters differ from ``previous_params``; otherwise ``current``, so that
    learned state (a generator, a dual variable) carries over ``partial_fit``.
    A value without ``get_params`` (a plain callable) is used as is.
    """
    if value is None:
        return None, None
    params = value.get_params() if hasattr(value, "get_params") else None
    if params is None:
        return value, None
    if reset or current is None or type(current) is not type(value) or previous_params != params:
        return clone(value), params
    return current, params


def split_nested_params(params, heads):
    """Split ``{"attack__epsilon": 0.1, "lr": 1}`` into the nested parameters
    of the objects named in ``heads`` and the rest.

    Returns
    -------
    nested : dict
        Head name to a dict of its parameters.
    rest : dict
        The other parameters.
    """
    nested, rest = {}, {}
    for key, value in params.items():
        head, sep, tail = key.partition("__")
        if sep and head in heads:
            nested.setdefault(head, {})[tail] = value
        else:
            rest[key] = value
    return nested, rest


# --------------------------------------------------------------------------- random numbers
# Every random draw in robustfit goes through the functions below. Inside a
# ``random_source(seed)`` block they use that source's generators (one per
# device); outside, torch's global generator. The current source is a context
# variable, so two fits in two threads never share a generator: seeded fits
# repeat exactly in threads too (torch's global generator is process-wide).
# In data-parallel training the per-sample draws of a batch shard are made for
# the global batch and sliced (``_sharded``), so N ranks draw what one process
# draws; randint and randperm are never sharded.
_CURRENT_SOURCE = contextvars.ContextVar("robustfit_random_source", default=None)


def _device_key(device):
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class RandomSource:
    """Seeded torch generators, one per device, for one fit or one evaluation.

    Parameters
    ----------
    seed : int
        The seed; the generator of each device is seeded with ``seed`` plus a
        fixed offset per device, so CPU and GPU streams differ.

    Examples
    --------
    >>> import torch
    >>> from robustfit._utils import RandomSource, random_source, rand_like
    >>> with random_source(RandomSource(0)):
    ...     a = rand_like(torch.zeros(3))
    >>> with random_source(0):
    ...     b = rand_like(torch.zeros(3))
    >>> bool(torch.equal(a, b))
    True
    """

    def __init__(self, seed):
        self.seed = int(seed)
        self._generators = {}

    def generator(self, device="cpu"):
        """The generator for ``device`` (created and seeded on first use)."""
        key = _device_key(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=key)
            offset = 0 if key.type == "cpu" else 7919 * (1 + (key.index or 0))
            gen.manual_seed((self.seed + offset) % 2**63)
            self._generators[key] = gen
        return gen

    def get_state(self):
        """The generators' states, as ``{device string: uint8 CPU tensor}``."""
        return {str(k): g.get_state().cpu() for k, g in self._generators.items()}

    def set_state(self, state):
        """Restore states from :meth:`get_state` (devices absent here are skipped)."""
        for name, value in state.items():
            key = torch.device(name)
            if key.type == "cuda" and not torch.cuda.is_available():
                continue
            self.generator(key).set_state(value.cpu() if key.type == "cpu" else value)


def seed_of(random_state):
    """An int seed from ``random_state`` (None stays None), without mutating it.

    A :class:`numpy.random.RandomState` gives the first draw of a copy, so
    the same state gives the same seed and the caller's object is unchanged.
    """
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(copy.deepcopy(random_state).randint(2**31))
    raise ValueError(
        f"random_state must be None, an int or a numpy RandomState, got {random_state!r}"
    )


@contextlib.contextmanager
def random_source(source):
    """Use ``source`` (a :class:`RandomSource`, an int seed, or None) for every
    robustfit draw inside the block; None keeps the enclosing source."""
    if source is None:
        yield _CURRENT_SOURCE.get()
        return
    if not isinstance(source, RandomSource):
        source = RandomSource(source)
    token = _CURRENT_SOURCE.set(source)
    try:
        yield source
    finally:
        _CURRENT_SOURCE.reset(token)


def current_source():
    """The :class:`RandomSource` in use (set by :func:`random_source`), or None."""
    return _CURRENT_SOURCE.get()


def current_generator(device):
    """The current source's generator for ``device``, or None (torch's global one)."""
    source = _CURRENT_SOURCE.get()
    return None if source is None else source.generator(device)


def _sharded(draw, size):
    """``draw(size)``, except that while a :func:`~robustfit._distributed.batch_shard`
    is active, a per-sample draw (leading dimension = the shard's size) is made
    for the whole global batch and this rank's rows are kept. Every rank then
    draws the numbers one process would draw for the same global batch."""
    shard = current_shard()
    size = tuple(size)
    if shard is None or not size or size[0] != shard.size or shard.size == shard.total:
        return draw(size)
    return shard.select(draw((shard.total, *size[1:])))


def rand_like(t):
    """Uniform [0, 1) numbers shaped like ``t`` (same device and dtype)."""
    gen = current_generator(t.device)
    return _sharded(lambda s: torch.rand(s, generator=gen, device=t.device, dtype=t.dtype), t.shape)


def randn_like(t):
    """Standard normal numbers shaped like ``t``."""
    gen = current_generator(t.device)
    return _sharded(lambda s: torch.randn(s, generator=gen, device=t.device, dtype=t.dtype), t.shape)


def rand(size, device="cpu", dtype=None):
    """Uniform [0, 1) numbers of shape ``size``."""
    gen = current_generator(device)
    return _sharded(lambda s: torch.rand(s, generator=gen, device=device, dtype=dtype), size)


def randn(size, device="cpu", dtype=None):
    """Standard normal numbers of shape ``size``."""
    gen = current_generator(device)
    return _sharded(lambda s: torch.randn(s, generator=gen, device=device, dtype=dtype), size)


def randint(low, high, size, device="cpu"):
    """Integers uniform in ``[low, high)`` of shape ``size``."""
    return torch.randint(low, high, size, generator=current_generator(device), device=device)


def randperm(n, device="cpu"):
    """A random permutation of ``range(n)``."""
    return torch.randperm(n, generator=current_generator(device), device=device)


def exponential_like(t):
    """Standard exponential numbers shaped like ``t``."""
    gen = current_generator(t.device)
    return _sharded(
        lambda s: torch.empty(s, device=t.device, dtype=t.dtype).exponential_(generator=gen), t.shape)
