"""Small helpers shared across robustfit's modules."""

from __future__ import annotations

import contextlib
import importlib

import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

#: Optional dependencies: top-level import name -> (pip name, robustfit extra).
#: setup.py's ``extras_require`` lists the same packages under the same extras.
OPTIONAL = {
    "geomloss": ("geomloss", "ot"),
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
    """
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


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
