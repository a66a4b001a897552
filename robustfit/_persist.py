"""Files without pickle: what robustfit writes to disk and how it reads it back.

Every file robustfit writes (a saved classifier, a checkpoint's training
state, a proxy-cache entry) is one :func:`torch.save` payload of plain values
(``dict``, ``list``, ``str``, numbers) and tensors, read back with
``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which
builds tensors and containers and refuses every other Python object, so a
file cannot make the loader run code. The payload is::

    {"format": "robustfit.<kind>", "version": 1, "spec": "<JSON text>", "tensors": {name: tensor}}

``spec`` describes the objects as JSON (:func:`encode`): plain values as
themselves, arrays and tensors by name in ``tensors``, classes by their import
path, and estimators (attacks, objectives, proxies) by class, parameters and
fitted state. :func:`decode` rebuilds them. A class named in a file is
accepted only when it is of a kind robustfit builds (a torch module,
optimizer or dataset, a scikit-learn estimator, a skorch callback or split,
or a robustfit class), and only from a module that is already imported or
belongs to a package robustfit trusts (robustfit, torch, torchvision, skorch,
scikit-learn, numpy, scipy, diffusers), or that the caller names in
``trusted_modules``. A file cannot name a function to call.

Writes are atomic: a file is written under a temporary name in the same
folder and renamed over the target, so a process killed while saving leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import numbers
import os
import pickle
import sys
import tempfile
import types

import numpy as np
import torch
from sklearn.base import BaseEstimator
from skorch.callbacks import Callback
from skorch.dataset import ValidSplit
from skorch.net import NeuralNet
from skorch.utils import noop

#: Version of the payload layout; a file of another version is refused.
VERSION = 1

#: Top-level packages whose modules a file may make robustfit import.
TRUSTED_PACKAGES = ("robustfit", "torch", "torchvision", "skorch", "sklearn", "numpy", "scipy",
                    "diffusers", "builtins")

#: Kinds of class a file may name as a value (a ``module=`` or ``optimizer=`` class, ...).
CLASS_KINDS = (torch.nn.Module, torch.optim.Optimizer, torch.utils.data.Dataset,
               torch.utils.data.DataLoader, torch.optim.lr_scheduler.LRScheduler,
               BaseEstimator, NeuralNet, Callback, ValidSplit)

#: Kinds of class a file may make robustfit instantiate (with the saved parameters).
INSTANCE_KINDS = (BaseEstimator, NeuralNet, Callback, ValidSplit)

#: The only functions a file may name (skorch's Checkpoint default ``sink``, ``print``).
FUNCTIONS = {"skorch.utils:noop": noop, "builtins:print": print}


class UnsupportedValue(ValueError):
    """A value that cannot be written without pickle; the message says where and why."""


# --------------------------------------------------------------------------- files
def save_payload(kind, spec, tensors, path):
    """Write ``spec`` (JSON-able) and ``tensors`` to ``path`` atomically.

    Parameters
    ----------
    kind : str
        The file kind, e.g. ``"model"``; stored as ``"robustfit.<kind>"``.
    spec : dict
        JSON-able description (from :func:`encode`).
    tensors : dict of str to torch.Tensor
        The tensors ``spec`` refers to.
    path : str, os.PathLike or file-like
        Target. A path is written through a temporary file and a rename.
    """
    payload = {"format": f"robustfit.{kind}", "version": VERSION,
               "spec": json.dumps(spec, allow_nan=True), "tensors": tensors}
    if not isinstance(path, (str, os.PathLike)):
        torch.save(payload, path)
        return
    atomic_write(path, lambda f: torch.save(payload, f))


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_payload(path, kind, what):
    """Read a file written by :func:`save_payload`, with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path : str, os.PathLike or file-like
        The file.
    kind : str
        The expected kind.
    what : str
        What the file is, for messages (e.g. ``"saved model"``).

    Returns
    -------
    spec : object
        The decoded JSON description.
    tensors : dict of str to torch.Tensor

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file holds anything but tensors and plain values (nothing of
        it is executed), is truncated or corrupt, or is of another kind.
    """
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"refused to load the {what} {name}: it holds Python objects that only an "
            "unrestricted unpickler could build, and unpickling can run code. robustfit reads "
            "tensors and plain values only (torch.load(weights_only=True)); nothing of the file "
            f"was executed. Delete it, or rewrite it with robustfit. (torch: {first})"
        ) from None
    except Exception as exc:  # truncated zip, not a torch file at all, ...
        raise ValueError(
            f"cannot read the {what} {name}: {type(exc).__name__}: {exc}. The file is truncated, "
            "corrupt or not written by robustfit"
        ) from None
    expected = f"robustfit.{kind}"
    if not isinstance(payload, dict) or payload.get("format") != expected:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"the {what} {name} is not a {expected} file (it holds {found!r})")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"the {what} {name} has format version {payload.get('version')!r}; this robustfit "
            f"reads version {VERSION}"
        )
    tensors = payload.get("tensors")
    if not isinstance(payload.get("spec"), str) or not isinstance(tensors, dict):
        raise ValueError(f"the {what} {name} is malformed (no spec or tensors)")
    try:
        spec = json.loads(payload["spec"])
    except ValueError as exc:
        raise ValueError(f"the {what} {name} is malformed: {exc}") from None
    return spec, tensors


# --------------------------------------------------------------------------- classes
def class_path(obj, where="value"):
    """``"module:qualname"`` of a class or function, checked to import back to ``obj``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if module is None or "<" in qualname:
        raise UnsupportedValue(
            f"cannot save {where}: {obj!r} is defined inside a function or is a lambda, so it "
            "cannot be imported by name; define it at module level"
        )
    try:
        found = _resolve(module, qualname)
    except (ImportError, AttributeError):
        found = None
    if found is not obj:
        raise UnsupportedValue(
            f"cannot save {where}: {module}.{qualname} does not import back to {obj!r}"
        )
    return f"{module}:{qualname}"


def _resolve(module, qualname):
    obj = sys.modules[module] if module in sys.modules else importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def import_class(path, where, kinds=CLASS_KINDS, trusted_modules=()):
    """The class named ``path`` (``"module:qualname"``), if it is of an allowed kind.

    The module must be imported already, or belong to :data:`TRUSTED_PACKAGES`
    or ``trusted_modules``; a file never makes robustfit import anything else.
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"{where}: malformed class path {path!r}")
    module, qualname = path.split(":")
    top = module.split(".")[0]
    if module not in sys.modules and top not in TRUSTED_PACKAGES and top not in set(trusted_modules) \
            and module not in set(trusted_modules):
        raise ValueError(
            f"{where} names the class {module}.{qualname}, from a module that is not imported. "
            f"robustfit does not import modules a file names on its own: import {module} first, "
            f"or pass trusted_modules=[{top!r}]"
        )
    try:
        obj = _resolve(module, qualname)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{where}: cannot import {module}.{qualname} ({exc})") from None
    robustfit_class = inspect.isclass(obj) and obj.__module__.split(".")[0] == "robustfit"
    if not inspect.isclass(obj) or not (robustfit_class or issubclass(obj, kinds)):
        allowed = ", ".join(k.__name__ for k in kinds)
        raise ValueError(
            f"{where} names {module}.{qualname}, which is not a class of an allowed kind "
            f"({allowed} or a robustfit class); refused"
        )
    return obj


# --------------------------------------------------------------------------- fitted state
def default_fitted_state(obj):
    """An object's attributes other than its parameters (its fitted state).

    Parameters
    ----------
    obj : object with get_params
        An estimator-like object.

    Returns
    -------
    state : dict
    """
    params = obj.get_params(deep=False) if hasattr(obj, "get_params") else {}
    return {k: v for k, v in vars(obj).items() if k not in params and not k.startswith("__")}


def fitted_state(obj):
    """``obj.get_fitted_state()`` if it has one, else :func:`default_fitted_state`."""
    getter = getattr(obj, "get_fitted_state", None)
    return getter() if callable(getter) else default_fitted_state(obj)


def set_fitted_state(obj, state, where="state"):
    """Restore what :func:`fitted_state` returned (``obj.set_fitted_state`` if it has one)."""
    setter = getattr(obj, "set_fitted_state", None)
    if callable(setter):
        setter(state)
        return obj
    if not isinstance(state, dict):
        raise ValueError(f"{where}: the fitted state must be a mapping, got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("__"):
            raise ValueError(f"{where}: bad attribute name {key!r}")
        setattr(obj, key, value)
    return obj


# --------------------------------------------------------------------------- values
def encode(value, tensors, where="value"):
    """A JSON-able description of ``value``; its arrays and tensors go into ``tensors``.

    Plain values (None, bool, int, float, str) are kept; lists, tuples and
    dicts are described element-wise; tensors and numeric arrays are stored in
    ``tensors`` by name; string arrays are listed; classes are named by import
    path; estimators (anything with ``get_params``) by class, parameters and
    fitted state. Anything else (a lambda, a torch module instance, an open
    file, ...) raises :class:`UnsupportedValue`, naming ``where``.

    Parameters
    ----------
    value : object
    tensors : dict
        Receives the tensors, under fresh names.
    where : str, default="value"
        Where ``value`` sits, for messages (e.g. ``"params['attack']"``).

    Returns
    -------
    spec : JSON-able object
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, list):
        return [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, tensors, f"{where} key"), encode(v, tensors, f"{where}[{k!r}]")]
                             for k, v in value.items()]}
    if torch.is_tensor(value):
        return {"__tensor__": _store(tensors, value.detach().cpu().contiguous().clone())}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            return {"__strings__": value.tolist(), "dtype": value.dtype.str}
        if value.dtype.kind not in "biufc":
            raise UnsupportedValue(
                f"cannot save {where}: an array of dtype {value.dtype} (only numeric, boolean "
                "and string arrays are saved without pickle)"
            )
        return {"__ndarray__": _store(tensors, torch.from_numpy(np.array(value, copy=True)))}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).replace("torch.", "")}
    if isinstance(value, np.random.RandomState):
        _, keys, pos, has_gauss, cached = value.get_state()
        return {"__randomstate__": [_store(tensors, torch.from_numpy(keys.astype(np.int64))),
                                    int(pos), int(has_gauss), float(cached)]}
    if inspect.isclass(value):
        return {"__class__": class_path(value, where)}
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        path = class_path(value, where)
        if path not in FUNCTIONS:
            raise UnsupportedValue(
                f"cannot save {where}: the function {path} (a file may not name functions, "
                "which loading would call; only {sorted(FUNCTIONS)})"
            )
        return {"__function__": path}
    if isinstance(value, torch.nn.Module):
        raise UnsupportedValue(
            f"cannot save {where}: a torch module instance ({type(value).__name__}) has no "
            "description without pickle; pass its class (and its arguments as module__*) instead"
        )
    if type(value).__name__ == "Memory" and hasattr(value, "location"):  # joblib.Memory
        return {"__location__": None if value.location is None else os.fspath(value.location)}
    if isinstance(value, (BaseEstimator, NeuralNet)):
        params = {k: v for k, v in value.get_params(deep=False).items() if not k.startswith("_")}
        return {
            "__estimator__": class_path(type(value), where),
            "params": encode(params, tensors, f"{where}.params"),
            "state": encode(fitted_state(value), tensors, f"{where} (fitted state)"),
        }
    if isinstance(value, INSTANCE_KINDS):  # skorch callbacks and splits: their arguments only
        params = (value.get_params(deep=False) if hasattr(value, "get_params")
                  else _init_arguments(value, where))
        return {"__object__": class_path(type(value), where),
                "params": encode(params, tensors, f"{where}.params")}
    raise UnsupportedValue(
        f"cannot save {where}: {type(value).__name__} objects have no description without pickle"
    )


def _store(tensors, tensor):
    key = f"t{len(tensors)}"
    tensors[key] = tensor
    return key


def _init_arguments(obj, where):
    params = {}
    for name, p in inspect.signature(type(obj).__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL,):
            continue
        if p.kind == p.VAR_KEYWORD:
            continue
        if not hasattr(obj, name):
            raise UnsupportedValue(
                f"cannot save {where}: {type(obj).__name__} does not keep its argument {name!r}"
            )
        params[name] = getattr(obj, name)
    return params


def decode(spec, tensors, where="value", trusted_modules=()):
    """Rebuild a value from :func:`encode`'s description.

    Parameters
    ----------
    spec : JSON-able object
    tensors : dict of str to torch.Tensor
    where : str, default="value"
        For messages.
    trusted_modules : sequence of str, default=()
        Modules (or top-level packages) whose classes may be imported although
        not imported yet (see :func:`import_class`).

    Returns
    -------
    value : object

    Raises
    ------
    ValueError
        For anything malformed or not allowed, naming ``where``.
    """
    def rec(s, w):
        return decode(s, tensors, w, trusted_modules)

    if spec is None or isinstance(spec, (bool, int, float, str)):
        return spec
    if isinstance(spec, list):
        return [rec(s, f"{where}[{i}]") for i, s in enumerate(spec)]
    if not isinstance(spec, dict) or len([k for k in spec if k.startswith("__")]) != 1:
        raise ValueError(f"{where}: malformed entry {str(spec)[:80]!r}")
    tag = next(k for k in spec if k.startswith("__"))
    body = spec[tag]
    if tag == "__tuple__":
        return tuple(rec(s, f"{where}[{i}]") for i, s in enumerate(body))
    if tag == "__dict__":
        return {_hashable(rec(k, f"{where} key")): rec(v, f"{where}[{k!r}]") for k, v in body}
    if tag in ("__tensor__", "__ndarray__"):
        t = tensors.get(body) if isinstance(body, str) else None
        if not torch.is_tensor(t):
            raise ValueError(f"{where}: missing tensor {body!r}")
        return t if tag == "__tensor__" else t.numpy()
    if tag == "__strings__":
        dtype = np.dtype(spec.get("dtype", "<U1"))
        if dtype.kind not in "US":
            raise ValueError(f"{where}: bad string dtype {dtype}")
        return np.array(body, dtype=dtype)
    if tag == "__device__":
        return torch.device(body)
    if tag == "__dtype__":
        dtype = getattr(torch, str(body), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{where}: unknown dtype {body!r}")
        return dtype
    if tag == "__randomstate__":
        keys, pos, has_gauss, cached = body
        rs = np.random.RandomState()
        rs.set_state(("MT19937", rec({"__ndarray__": keys}, where).astype(np.uint32), int(pos),
                      int(has_gauss), float(cached)))
        return rs
    if tag == "__class__":
        return import_class(body, where, CLASS_KINDS, trusted_modules)
    if tag == "__function__":
        if body not in FUNCTIONS:
            raise ValueError(f"{where} names the function {body!r}; a file may not name functions")
        return FUNCTIONS[body]
    if tag == "__location__":
        return body if body is None or isinstance(body, str) else str(body)
    if tag in ("__estimator__", "__object__"):
        cls = import_class(body, where, INSTANCE_KINDS, trusted_modules)
        params = rec(spec.get("params", {"__dict__": []}), f"{where}.params")
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ValueError(f"{where}: malformed parameters")
        try:
            obj = cls(**params)
        except TypeError as exc:
            raise ValueError(f"{where}: cannot build {cls.__name__} from the saved parameters ({exc})") from None
        if tag == "__estimator__" and "state" in spec:
            state = rec(spec["state"], f"{where} (fitted state)")
            if state:
                set_fitted_state(obj, state, where)
        return obj
    raise ValueError(f"{where}: unknown entry {tag!r}")


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
