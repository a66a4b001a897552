"""Small helpers shared across robustfit's modules."""

from __future__ import annotations

import contextlib
import importlib

import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

#: Optional dependencies: import name -> (pip name, robustfit extra).
OPTIONAL = {
    "geomloss": ("geomloss", "ot"),
    "ot": ("pot", "ot"),
    "matplotlib": ("matplotlib", "plot"),
    "diffusers": ("diffusers", "diffusion"),
    "torchvision": ("torchvision", "vision"),
}


def optional_import(name, feature):
    """Import an optional dependency, or raise an ImportError naming the extra.

    Parameters
    ----------
    name : str
        The module to import (a key of ``OPTIONAL``).
    feature : str
        What needs it, for the message (e.g. ``"GeneratorSynth's OT term"``).

    Returns
    -------
    module : module
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pip_name, extra = OPTIONAL.get(name, (name, None))
        hint = f"pip install 'robustfit[{extra}]' (or pip install {pip_name})" if extra \
            else f"pip install {pip_name}"
        raise ImportError(f"{feature} needs the optional package {pip_name}: {hint}") from exc


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
