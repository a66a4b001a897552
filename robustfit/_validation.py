"""Shared checks: parameter constraints, devices, input boxes, arrays and labels.

The lowest layer of robustfit: every other module may import from here, and
this module imports nothing from robustfit.

**Parameter constraints.** Every parameter object (attacks, objectives, proxy
distributions, :class:`~robustfit.metrics.TransferBound`) and
:class:`~robustfit.AdversarialClassifier` declare what each constructor
argument may be in one table, ``_parameter_constraints``, in the spirit of
scikit-learn's (this is a small implementation of our own, not scikit-learn's
private module)::

    _parameter_constraints = {
        "epsilon": [Interval(Real, 0, None, closed="left")],
        "norm": [Options({"linf", "l2"})],
        "step_size": [None, Interval(Real, 0, None, closed="left")],
        "random_start": ["boolean"],
    }

A value is valid when it satisfies at least one entry of its list. The public
method :meth:`ParamsValidationMixin.validate_params` checks the table, then
calls the class's ``_validate_params_extra`` hook for conditions that involve
several parameters. Every error names the class, the parameter, the value and
what is allowed.
"""

from __future__ import annotations

import numbers
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.exceptions import DataConversionWarning
from skorch.dataset import ValidSplit
from skorch.utils import to_numpy
from torch.utils.data import Subset

__all__ = [
    "Bounds",
    "HasMethods",
    "InstanceOf",
    "Interval",
    "InvalidParameterError",
    "Options",
    "ParamsValidationMixin",
    "CheckedAttack",
    "check_array",
    "check_attack",
    "check_attack_data",
    "check_attack_output",
    "check_bounds",
    "check_param",
    "check_proxy_pair",
    "dataset_arrays",
    "check_device",
    "check_in_bounds",
    "check_labels",
    "encode_labels",
    "invalid_value",
    "resolve_device",
    "truthy",
    "valid_split_or_fallback",
    "validate_parameter_constraints",
]


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a value its constraints do not allow.

    A subclass of both :class:`ValueError` and :class:`TypeError`, so callers
    may catch either (scikit-learn's convention).
    """


# --------------------------------------------------------------------------- constraints
class _Constraint:
    """A condition on one parameter value."""

    def is_satisfied_by(self, value):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement is_satisfied_by(value)")

    def invalid_example(self):
        """A value that violates this constraint (for conformance tests), or None."""
        return None


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


class Interval(_Constraint):
    """A number in an interval.

    Parameters
    ----------
    type : {numbers.Integral, numbers.Real}
        ``Integral`` accepts integers only (not ``bool``); ``Real`` any real
        number, integers included (not ``bool``).
    left, right : float or None
        Bounds; ``None`` is unbounded on that side.
    closed : {"both", "left", "right", "neither"}, default="both"
        Which bounds belong to the interval.
    finite : bool, default=True
        Reject ``inf`` and ``nan`` (for ``Real``).
    """

    def __init__(self, type, left, right, *, closed="both", finite=True):
        self.type = type
        self.left = left
        self.right = right
        self.closed = closed
        self.finite = finite

    def is_satisfied_by(self, value):
        if self.type is Integral:
            if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
                return False
        elif not _is_real(value):
            return False
        if self.finite and not np.isfinite(float(value)):
            return False
        if np.isnan(float(value)):
            return False
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def invalid_example(self):
        if self.left is not None:
            return self.left - 1
        if self.right is not None:
            return self.right + 1
        return "not-a-number"

    def __str__(self):
        kind = "an integer" if self.type is Integral else "a number"
        if self.left is None and self.right is None:
            return kind + (" (finite)" if self.finite and self.type is Real else "")
        if self.right is None:
            op = ">=" if self.closed in ("both", "left") else ">"
            return f"{kind} {op} {self.left:g}"
        if self.left is None:
            op = "<=" if self.closed in ("both", "right") else "<"
            return f"{kind} {op} {self.right:g}"
        lo = "[" if self.closed in ("both", "left") else "("
        hi = "]" if self.closed in ("both", "right") else ")"
        return f"{kind} in {lo}{self.left:g}, {self.right:g}{hi}"


class Options(_Constraint):
    """One of a fixed set of values (compared with ``==``, types must match).

    Parameters
    ----------
    options : iterable
        The allowed values; kept in the given order for messages.
    """

    def __init__(self, options):
        self.options = tuple(options)

    def is_satisfied_by(self, value):
        for option in self.options:
            if type(value) is type(option) or (isinstance(value, str) and isinstance(option, str)):
                try:
                    if value == option:
                        return True
                except Exception:  # noqa: BLE001 - arrays and odd objects compare badly
                    continue
        return False

    def invalid_example(self):
        return "__not_an_option__"

    def __str__(self):
        return "one of " + ", ".join(repr(o) for o in self.options)


class InstanceOf(_Constraint):
    """An instance of the given type(s), described as ``description`` in messages."""

    def __init__(self, types, description=None):
        self.types = types if isinstance(types, tuple) else (types,)
        self.description = description

    def is_satisfied_by(self, value):
        return isinstance(value, self.types)

    def invalid_example(self):
        return object()

    def __str__(self):
        if self.description:
            return self.description
        names = " or ".join(t.__name__ for t in self.types)
        return f"an instance of {names}"


class HasMethods(_Constraint):
    """An object with all the given methods (duck typing).

    Parameters
    ----------
    methods : str or sequence of str
        Method names the value must have.
    """

    def __init__(self, methods):
        self.methods = (methods,) if isinstance(methods, str) else tuple(methods)

    def is_satisfied_by(self, value):
        return not isinstance(value, type) and all(
            callable(getattr(value, m, None)) for m in self.methods)

    def invalid_example(self):
        return object()

    def __str__(self):
        return "an object with " + ", ".join(f"{m}()" for m in self.methods)


class _NoneConstraint(_Constraint):
    def is_satisfied_by(self, value):
        return value is None

    def __str__(self):
        return "None"


class _Boolean(_Constraint):
    def is_satisfied_by(self, value):
        return isinstance(value, (bool, np.bool_))

    def invalid_example(self):
        return "yes"

    def __str__(self):
        return "True or False"


class _RandomState(_Constraint):
    def is_satisfied_by(self, value):
        if value is None or isinstance(value, np.random.RandomState):
            return True
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) \
            and 0 <= value < 2**32

    def invalid_example(self):
        return -1

    def __str__(self):
        return "None, an integer in [0, 2**32) or a numpy RandomState"


class _Callable(_Constraint):
    def is_satisfied_by(self, value):
        return callable(value)

    def invalid_example(self):
        return 3.5

    def __str__(self):
        return "a callable"


class Bounds(_Constraint):
    """An input box: ``None`` (unbounded) or a pair ``(low, high)`` with ``low < high``."""

    def is_satisfied_by(self, value):
        try:
            check_bounds(value)
        except ValueError:
            return False
        return True

    def invalid_example(self):
        return (1.0, 0.0)

    def __str__(self):
        return "None or a pair (low, high) of finite numbers with low < high"


_SPECIAL = {
    "boolean": _Boolean(),
    "random_state": _RandomState(),
    "callable": _Callable(),
    "bounds": Bounds(),
}


def make_constraint(spec):
    """Turn one entry of a constraints table into a constraint object.

    ``None`` allows ``None``; ``"boolean"``, ``"random_state"``, ``"callable"``
    and ``"bounds"`` name common constraints; a class (or tuple of classes)
    allows its instances; a constraint object is returned as is.
    """
    if isinstance(spec, _Constraint):
        return spec
    if spec is None:
        return _NoneConstraint()
    if isinstance(spec, str):
        try:
            return _SPECIAL[spec]
        except KeyError:
            raise ValueError(f"unknown constraint name {spec!r}") from None
    if isinstance(spec, type) or (isinstance(spec, tuple) and all(isinstance(t, type) for t in spec)):
        return InstanceOf(spec)
    raise TypeError(f"cannot make a constraint from {spec!r}")


def describe_constraints(specs):
    """One phrase for a list of constraints: "a number >= 0 or None"."""
    parts = [str(make_constraint(s)) for s in specs]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def validate_parameter_constraints(constraints, params, owner):
    """Check ``params`` against a constraints table.

    Parameters
    ----------
    constraints : dict
        Parameter name to a list of allowed kinds (see the module docstring),
        or to ``"no_validation"``.
    params : dict
        Parameter name to value; names absent from ``constraints`` are not
        checked.
    owner : str
        The class name, used in messages.

    Raises
    ------
    InvalidParameterError
        For the first parameter that satisfies none of its constraints; the
        message names ``owner``, the parameter, what is allowed and the value.
    """
    for name, allowed in constraints.items():
        if allowed == "no_validation" or name not in params:
            continue
        value = params[name]
        if any(make_constraint(spec).is_satisfied_by(value) for spec in allowed):
            continue
        prefix = f"{owner}: " if owner else ""
        raise InvalidParameterError(
            f"{prefix}{name} must be {describe_constraints(allowed)}, got {value!r}"
        )


def invalid_value(specs):
    """A value that satisfies none of the constraints in ``specs``.

    Built from each constraint's ``invalid_example()`` (and a few generic
    candidates when those fail), for conformance tests that check every
    parameter's error.

    Parameters
    ----------
    specs : list
        One entry of a constraints table.

    Returns
    -------
    value : object or None
        ``None`` when no candidate violates every constraint.
    """
    constraints = [make_constraint(s) for s in specs]
    candidates = [c.invalid_example() for c in constraints]
    candidates += ["__invalid__", object(), -1, 0, 3.5, float("nan"), (1.0, 0.0)]
    for value in candidates:
        if value is None:
            continue
        if not any(c.is_satisfied_by(value) for c in constraints):
            return value
    return None


def check_param(value, name, allowed, owner=None):
    """Check one argument of a function against a list of allowed kinds.

    Parameters
    ----------
    value : object
        The argument.
    name : str
        Its name, for the message.
    allowed : list
        Allowed kinds, as in a constraints table.
    owner : str or None, default=None
        The function or class name, for the message.

    Returns
    -------
    value : object
        The argument, unchanged.
    """
    validate_parameter_constraints({name: allowed}, {name: value}, owner or "")
    return value


class ParamsValidationMixin:
    """Adds :meth:`validate_params` to a parameter object.

    The class declares ``_parameter_constraints``; conditions that involve
    several parameters go in ``_validate_params_extra``.
    """

    #: Parameter name to the list of allowed kinds (see :mod:`robustfit._validation`).
    _parameter_constraints: dict = {}

    def validate_params(self):
        """Check every parameter against the class's constraints.

        Returns
        -------
        self
            The object, unchanged.

        Raises
        ------
        robustfit._validation.InvalidParameterError
            A :class:`ValueError` (and :class:`TypeError`) naming the class,
            the parameter, the value and what is allowed.
        """
        validate_parameter_constraints(
            self._parameter_constraints, self.get_params(deep=False), type(self).__name__
        )
        self._validate_params_extra()
        return self

    def _validate_params_extra(self):
        """Checks that involve several parameters (none by default)."""

    def _param_error(self, name, message):
        """An :class:`InvalidParameterError` naming this class and parameter ``name``."""
        value = getattr(self, name, None)
        return InvalidParameterError(f"{type(self).__name__}: {name} {message}, got {value!r}")


# --------------------------------------------------------------------------- devices
def resolve_device(device):
    """Turn ``"auto"`` into ``"cuda"`` when a GPU is present, else ``"cpu"``.

    Parameters
    ----------
    device : str, torch.device or None

    Returns
    -------
    device : str, torch.device or None
    """
    if isinstance(device, str) and device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device, name="device"):
    """Resolve ``device`` and check that it can be used here.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (``None`` leaves
        tensors where they are).
    name : str, default="device"
        The parameter's name, for messages.

    Returns
    -------
    device : str, torch.device or None
        The resolved device.

    Raises
    ------
    ValueError
        For a string torch cannot parse, or a CUDA device on a machine without
        one (or with fewer GPUs than the index asks for).
    """
    device = resolve_device(device)
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name}={device!r} is not a device torch knows: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={device!r} but no CUDA GPU is available here; use device='cpu' "
                "or device='auto' (CUDA when present)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device


# --------------------------------------------------------------------------- input boxes
def check_bounds(bounds):
    """Validate an input box and return it as a tuple of floats (or None).

    Parameters
    ----------
    bounds : pair of float or None

    Returns
    -------
    bounds : tuple of float or None
    """
    if bounds is None:
        return None
    try:
        lo, hi = bounds
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be None or a pair (low, high), got {bounds!r}"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or not lo < hi:
        raise ValueError(f"bounds must be finite and satisfy low < high, got {bounds!r}")
    return lo, hi


def check_in_bounds(X, bounds, name="X", owner="the attack's"):
    """Raise ``ValueError`` if ``X`` holds NaN or infinite values, or any value
    outside ``bounds``.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor
    bounds : tuple of float or None
        As returned by :func:`check_bounds`; ``None`` checks finiteness only.
    name : str, default="X"
        The input's name, for messages.
    owner : str, default="the attack's"
        Whose ``bounds`` the message tells to set.
    """
    if isinstance(X, torch.Tensor):
        if X.numel() == 0:
            return
        xmin, xmax = float(X.min()), float(X.max())
    else:
        X = np.asarray(X)
        if X.size == 0:
            return
        xmin, xmax = float(np.min(X)), float(np.max(X))
    if not (np.isfinite(xmin) and np.isfinite(xmax)):  # min/max propagate NaN
        raise ValueError(
            f"{name} contains NaN or infinite values; remove or impute them before "
            "attacking or training"
        )
    if bounds is None:
        return
    lo, hi = bounds
    tol = 1e-6
    if xmin < lo - tol or xmax > hi + tol:
        raise ValueError(
            f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the declared "
            f"input box bounds=({lo:g}, {hi:g}). Scale the data into the box, or "
            f"set {owner} bounds (bounds=None for unbounded features)."
        )


# --------------------------------------------------------------------------- attacks
def check_attack(attack, name="attack", owner=None):
    """Check an attack argument: ``None``, an attack object or a callable.

    Parameters
    ----------
    attack : object
        ``None``, a robustfit attack (its :meth:`validate_params` is called) or
        a callable ``attack(module, X, y) -> X_adv``.
    name : str, default="attack"
        The parameter's name, for messages.
    owner : str or None, default=None
        The class or function, for messages.

    Returns
    -------
    attack : object
        Unchanged.

    Raises
    ------
    InvalidParameterError
        For an attack class (not an instance), a torch module, or anything not
        callable; the message names the parameter, the value and the fix.
    """
    prefix = f"{owner}: " if owner else ""
    if attack is None:
        return None
    if isinstance(attack, type):
        raise InvalidParameterError(
            f"{prefix}{name} must be an instance, not the class itself: pass "
            f"{attack.__name__}(...), got {attack!r}"
        )
    if isinstance(attack, torch.nn.Module):
        raise InvalidParameterError(
            f"{prefix}{name} must be an attack (robustfit.attacks.PGD(...) or a callable "
            f"attack(module, X, y) -> X_adv), not a torch module, got {type(attack).__name__}"
        )
    if not callable(attack):
        raise InvalidParameterError(
            f"{prefix}{name} must be None, a robustfit attack or a callable "
            f"attack(module, X, y) -> X_adv, got {attack!r}"
        )
    if hasattr(attack, "validate_params"):
        attack.validate_params()
    return attack


def check_attack_data(X, y):
    """Check the ``X`` and ``y`` an attack or an evaluation is called with.

    ``X``: a real numeric array or tensor of shape ``(n_samples, ...)`` with at
    least one sample and one feature (finiteness is checked by
    :func:`check_in_bounds`). ``y``: one integer class index per sample.

    Parameters
    ----------
    X : array-like or torch.Tensor
    y : array-like or torch.Tensor

    Returns
    -------
    X, y
        Unchanged tensors, or numpy arrays (float32 and int64) for other input.

    Raises
    ------
    ValueError, TypeError
        Naming the input, what it is and what is expected.
    """
    if hasattr(X, "tocsr"):
        raise TypeError("X is a sparse matrix; attacks need dense input: pass X.toarray()")
    if torch.is_tensor(X):
        if X.is_complex():
            raise ValueError("X is complex: Complex data not supported; attacks need real input")
    else:
        arr = np.asarray(X)
        if np.iscomplexobj(arr):
            raise ValueError("X is complex: Complex data not supported; attacks need real input")
        try:
            X = np.asarray(arr, dtype=np.float32)
        except TypeError as exc:
            raise TypeError(f"X must be numeric: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"X must be numeric: {exc}") from None
    if X.ndim < 2 or X.shape[0] == 0 or any(s == 0 for s in X.shape[1:]):
        raise ValueError(
            f"X must have shape (n_samples, ...) with at least one sample and one feature, "
            f"got shape {tuple(X.shape)}"
        )
    if y is None:
        raise ValueError("y is None: attacks need the true class indices, one per sample")
    if torch.is_tensor(y):
        if y.dim() != 1:
            raise ValueError(f"y must be 1-d with one class index per sample, got shape "
                             f"{tuple(y.shape)}")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X and y have different lengths: {X.shape[0]} and {y.shape[0]}")
        if y.is_complex() or (y.is_floating_point() and not bool((y == y.round()).all())):
            raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
        return X, y
    y = check_labels(y, X.shape[0])
    if y.dtype.kind not in "iuf" and y.dtype.kind != "b":
        raise ValueError(
            f"y must hold integer class indices, got labels of dtype {y.dtype}; encode them "
            "(e.g. numpy.unique(y, return_inverse=True)) or score a fitted classifier instead"
        )
    return X, y.astype(np.int64)


def check_attack_output(x, x_adv, *, epsilon=None, norm="linf", bounds=None, name="attack"):
    """Check what an attack returned for the clean batch ``x``.

    A tensor of ``x``'s shape, floating point, finite; inside the ``norm``
    ball of radius ``epsilon`` around ``x`` (when ``epsilon`` is given) and
    inside ``bounds`` (when given).

    Parameters
    ----------
    x : torch.Tensor
        The clean batch.
    x_adv : object
        What the attack returned.
    epsilon : float or None, default=None
        The attack's budget; ``None`` skips the ball check.
    norm : {"linf", "l2"}, default="linf"
        Norm of the ball.
    bounds : tuple of float or None, default=None
        The input box; ``None`` skips the box check.
    name : str, default="attack"
        The attack's name, for messages.

    Raises
    ------
    TypeError, ValueError
        Naming the attack, what it returned and what was expected.
    """
    if not torch.is_tensor(x_adv):
        raise TypeError(
            f"{name} returned {type(x_adv).__name__}; attack(module, X, y) must return a "
            f"tensor shaped like X, {tuple(x.shape)}"
        )
    if tuple(x_adv.shape) != tuple(x.shape):
        raise ValueError(
            f"{name} returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}; "
            "attack(module, X, y) must return X_adv of the same shape as X"
        )
    if not x_adv.is_floating_point():
        raise TypeError(f"{name} returned dtype {x_adv.dtype}; X_adv must be floating point")
    if not bool(torch.isfinite(x_adv).all()):
        raise ValueError(f"{name} returned NaN or infinite values")
    tol = 1e-5 if x_adv.dtype in (torch.float32, torch.float64) else 1e-2
    if epsilon is not None and len(x):
        d = (x_adv.detach().float() - x.detach().float()).reshape(len(x), -1)
        size = d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)
        worst = float(size.max())
        if worst > float(epsilon) * (1 + 1e-4) + tol:
            raise ValueError(
                f"{name} moved inputs by up to {worst:.4g} in the {norm} norm, outside its "
                f"epsilon-ball of radius {float(epsilon):g}; project the perturbation onto the "
                "ball (robustfit.attacks.project) before returning it"
            )
    if bounds is not None:
        lo, hi = float(x_adv.min()), float(x_adv.max())
        if lo < bounds[0] - tol or hi > bounds[1] + tol:
            raise ValueError(
                f"{name} returned values in [{lo:.4g}, {hi:.4g}], outside its input box "
                f"bounds={tuple(bounds)}; clip X_adv into the box"
            )


class CheckedAttack:
    """A plain callable attack whose first output is checked.

    :class:`~robustfit.AdversarialClassifier` wraps a callable ``attack`` that
    is not a robustfit :class:`~robustfit.attacks.Attack` in this object for
    each ``fit``: the first call's result goes through
    :func:`check_attack_output` (shape, dtype, finiteness and, when the
    callable has ``epsilon`` (with ``norm``, default ``"linf"``) or
    ``bounds`` attributes, the ball and the box); later calls run unchecked.

    Parameters
    ----------
    attack : callable
        ``attack(module, X, y) -> X_adv``.
    name : str, default="attack"
        For messages.
    """

    def __init__(self, attack, name="attack"):
        self.attack = attack
        self.name = name
        self.checked_ = False

    def _threat_model(self):
        eps = getattr(self.attack, "epsilon", None)
        if not _is_real(eps) or not np.isfinite(float(eps)) or eps < 0:
            eps = None
        norm = getattr(self.attack, "norm", "linf")
        try:
            bounds = check_bounds(getattr(self.attack, "bounds", None))
        except ValueError:
            bounds = None
        return eps, norm if norm in ("linf", "l2") else "linf", bounds

    def __call__(self, module, X, y):
        x_adv = self.attack(module, X, y)
        if not self.checked_:
            eps, norm, bounds = self._threat_model()
            check_attack_output(X, x_adv, epsilon=eps, norm=norm, bounds=bounds,
                                name=f"{self.name}={self.attack!r}")
            self.checked_ = True
        return x_adv

    def __repr__(self):
        return f"CheckedAttack({self.attack!r})"


# --------------------------------------------------------------------------- arrays and labels
def check_array(X, name="X", *, ndims=(2, 4), allow_tensor=True):
    """Validate model input and return it as float32 (array or tensor).

    Parameters
    ----------
    X : array-like or torch.Tensor
        Numeric input of shape ``(n, d)`` or ``(n, C, H, W)``.
    name : str, default="X"
        The input's name, for messages.
    ndims : tuple of int, default=(2, 4)
        Allowed numbers of dimensions.
    allow_tensor : bool, default=True
        Keep a torch tensor as a tensor (float32); otherwise convert to numpy.

    Returns
    -------
    X : numpy.ndarray or torch.Tensor
        float32, finite, with at least one sample and one feature.

    Raises
    ------
    ValueError, TypeError
        For sparse, complex, non-numeric, empty, wrongly shaped or non-finite
        input; the message names the input and the fix.
    """
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"{name} is a sparse matrix; robustfit trains dense networks: pass "
            f"{name}.toarray() (or a dense array)"
        )
    if torch.is_tensor(X) and allow_tensor:
        if X.is_complex():
            raise ValueError(f"{name} is complex: Complex data not supported; robustfit needs "
                             "real-valued input")
        if not X.is_floating_point():
            X = X.float()
        elif X.dtype != torch.float32:
            X = X.float()
    else:
        if torch.is_tensor(X):
            X = X.detach().cpu().numpy()
        arr = np.asarray(X)
        if np.iscomplexobj(arr):
            raise ValueError(f"{name} is complex: Complex data not supported; robustfit needs "
                             "real-valued input")
        try:
            X = np.asarray(arr, dtype=np.float32)
        except TypeError as exc:
            raise TypeError(f"{name} must be numeric: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{name} must be numeric: {exc}") from None
    if X.ndim not in ndims:
        hint = " (add a channel axis: X[:, None])" if X.ndim == 3 and 4 in ndims else ""
        if X.ndim == 1 and 2 in ndims:
            hint = (". Reshape your data either using X.reshape(-1, 1) if your data has a single "
                    "feature or X.reshape(1, -1) if it contains a single sample")
        allowed = " or ".join(
            {2: "2 (n_samples, n_features)", 4: "4 (n_samples, channels, height, width)"}.get(d, str(d))
            for d in ndims
        )
        raise ValueError(
            f"{name} must have {allowed} dimensions, got {X.ndim} with shape "
            f"{tuple(X.shape)}{hint}"
        )
    if X.shape[0] == 0:
        raise ValueError(
            f"{name} has 0 samples (shape={tuple(X.shape)}) while a minimum of 1 is required."
        )
    if any(s == 0 for s in X.shape[1:]):
        raise ValueError(
            f"{name} has 0 feature(s) (shape={tuple(X.shape)}) while a minimum of 1 is required."
        )
    finite = bool(torch.isfinite(X).all()) if torch.is_tensor(X) else bool(np.isfinite(X).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def check_labels(y, n_samples=None, name="y"):
    """Validate class labels: 1-d, one per sample, no NaN, one kind of value.

    Parameters
    ----------
    y : array-like or torch.Tensor
        Labels of any sortable kind (integers, strings, ...).
    n_samples : int or None, default=None
        The expected length.
    name : str, default="y"

    Returns
    -------
    y : numpy.ndarray
    """
    if y is None:
        raise ValueError(
            f"this estimator requires {name} to be passed, but the target {name} is None; pass "
            f"class labels, or X as a Dataset that holds them"
        )
    if hasattr(y, "tocsr"):
        raise TypeError(f"{name} is a sparse matrix; pass a 1-d array of class labels")
    y = np.asarray(y.detach().cpu() if torch.is_tensor(y) else y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            f"A column-vector {name} was passed when a 1d array was expected. Please change "
            f"the shape of {name} to (n_samples,), for example using ravel().",
            DataConversionWarning, stacklevel=3,
        )
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {y.shape}")
    if n_samples is not None and len(y) != n_samples:
        raise ValueError(f"X and {name} have different lengths: {n_samples} and {len(y)}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or infinite labels")
        if not np.all(y == np.round(y)):
            bad = y[y != np.round(y)][:3].tolist()
            raise ValueError(
                f"{name} has non-integer float labels such as {bad}; a classifier needs "
                "class labels (integers or strings), not continuous targets"
            )
    if y.dtype.kind == "c":
        raise ValueError(f"{name} is complex; class labels must be integers or strings")
    if y.dtype == object:
        kinds = {type(v).__name__ for v in y}
        if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in y):
            raise ValueError(f"{name} contains missing labels (None or NaN)")
        if len(kinds) > 1:
            raise ValueError(
                f"{name} mixes label types {sorted(kinds)}; use one kind (all integers or all strings)"
            )
    return y


def encode_labels(classes, y):
    """Map labels to their indices in the array ``classes``.

    Parameters
    ----------
    classes : numpy.ndarray
        Distinct class labels, in any order (a user's ``classes=`` keeps
        its order: index ``i`` is ``classes[i]``).
    y : array-like
        Labels, all among ``classes``.

    Returns
    -------
    indices : numpy.ndarray of int64

    Raises
    ------
    ValueError
        Naming the labels that are not among ``classes``.
    """
    y = np.asarray(y)
    try:
        order = np.argsort(classes, kind="stable")
        pos = np.clip(np.searchsorted(classes[order], y), 0, len(classes) - 1)
        idx = order[pos]
        ok = np.all(classes[idx] == y)
    except TypeError:
        ok = False
    if not ok:
        try:
            unknown = np.setdiff1d(np.unique(y), classes)[:5].tolist()
        except TypeError:
            unknown = sorted({repr(v) for v in y.tolist()} - {repr(v) for v in classes.tolist()})[:5]
        raise ValueError(
            f"y has labels not among classes_: {unknown} (unseen in fit; "
            f"classes_ is {np.asarray(classes)[:10].tolist()})"
        )
    return idx.astype(np.int64)


def check_proxy_pair(proxy_data, classes):
    """Check an ``(X, y)`` pair given as ``proxy_data``: labels among ``classes``, every class present.

    The same requirement as :class:`~robustfit.proxy.ArrayProxy`'s: every
    training batch mixes proxy samples in, so a class without any would be
    under-represented.

    Parameters
    ----------
    proxy_data : tuple
        ``(X, y)``.
    classes : numpy.ndarray
        The classifier's ``classes_``.

    Raises
    ------
    ValueError
        Naming ``proxy_data``, the missing or unknown classes and the fix.
    """
    Xp, yp = proxy_data
    yp = check_labels(yp, len(Xp), "proxy_data y")
    try:
        idx = encode_labels(classes, yp)
    except ValueError as exc:
        raise ValueError(f"proxy_data: {exc}") from None
    missing = np.setdiff1d(np.arange(len(classes)), idx)
    if len(missing):
        raise ValueError(
            f"proxy_data (an (X, y) pair) has no samples of classes "
            f"{np.asarray(classes)[missing][:10].tolist()} ({len(missing)} of {len(classes)} "
            "classes missing); every training batch mixes proxy samples in, so the missing "
            "classes would be under-represented. Give samples of every class, or "
            "proxy_data=None"
        )


def truthy(value):
    """``bool(value)``; False for a value without one (an array), which fit then rejects."""
    try:
        return bool(value)
    except (TypeError, ValueError):
        return False


def valid_split_or_fallback(split, dataset, y, **fit_params):
    """Run a skorch ``ValidSplit``; on data too small for it, fall back with a warning.

    A stratified split needs enough samples of each class (the default
    ``ValidSplit(10)`` needs 10 samples of some class); without them the split
    becomes non-stratified with the same validation fraction, and when even
    that is impossible, training uses all data without validation.
    """
    try:
        return split(dataset, y, **fit_params)
    except ValueError as exc:
        reason = str(exc)
    counts = np.unique(to_numpy(y), return_counts=True)[1]
    what = (f"train_split=ValidSplit(cv={split.cv!r}, stratified={split.stratified}) cannot split "
            f"these {len(y)} samples (the smallest class has {counts.min()}): {reason.rstrip('.')}")
    if split.stratified:
        try:
            train, valid = ValidSplit(cv=split.cv, stratified=False,
                                      random_state=split.random_state)(dataset, y, **fit_params)
        except ValueError:
            pass  # the non-stratified split fails too: no validation split (below)
        else:
            warnings.warn(
                f"{what}. Falling back to a non-stratified split with the same validation "
                "fraction. Pass train_split=None to train on all data, or a train_split of "
                "your own.", UserWarning, stacklevel=4)
            return train, valid
    warnings.warn(
        f"{what}. Training on all data without a validation split. Pass train_split=None to "
        "do so without this warning.", UserWarning, stacklevel=4)
    return dataset, None


def dataset_arrays(dataset):
    """Return ``(X, y)`` behind a skorch ``Dataset`` (or a ``Subset`` of one),
    or ``None`` when the dataset is of another kind."""
    if isinstance(dataset, Subset):
        inner = dataset_arrays(dataset.dataset)
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
