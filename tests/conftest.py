"""Shared fixtures: small digits splits, quickly trained models, MNIST location.

Everything here is sized for a fast suite on two CPU cores: a few hundred 8x8
digits, a handful of epochs.

Optional packages: a test that needs an extra that is not installed (an
``OptionalDependencyError`` from robustfit, or a ``ModuleNotFoundError`` for
one of the packages in ``robustfit._utils.OPTIONAL``) is reported as skipped,
naming the extra, so the suite runs on the core install. With
``ROBUSTFIT_REQUIRE_EXTRAS=1`` (CI, which installs every extra) it fails.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robustfit import AdversarialClassifier
from robustfit._utils import OPTIONAL, OptionalDependencyError
from robustfit.attacks import PGD
from robustfit.datasets import load_digits_images

MNIST_FILE = "t10k-images-idx3-ubyte"

# Figures drawn by tests and examples go to files, never to a window.
os.environ.setdefault("MPLBACKEND", "Agg")


def _missing_extra(exc):
    """The robustfit extra whose absence raised ``exc``, or None.

    Also for an error raised in a notebook's kernel (nbclient's
    CellExecutionError carries only the error's class name and message).
    """
    if isinstance(exc, OptionalDependencyError):
        return exc.extra or exc.package
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        entry = OPTIONAL.get(exc.name.split(".")[0])
        return entry[1] if entry else None
    ename, evalue = getattr(exc, "ename", None), str(getattr(exc, "evalue", ""))
    if ename == "OptionalDependencyError":
        found = re.search(r"robustfit\[(\w+)\]", evalue)
        return found[1] if found else None
    if ename == "ModuleNotFoundError":
        found = re.search(r"No module named '([\w.]+)'", evalue)
        entry = OPTIONAL.get(found[1].split(".")[0]) if found else None
        return entry[1] if entry else None
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Report a test that needs a missing extra as skipped (or failed under
    ``ROBUSTFIT_REQUIRE_EXTRAS=1``)."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or os.environ.get("ROBUSTFIT_REQUIRE_EXTRAS") == "1":
        return
    exc = call.excinfo.value
    extra = _missing_extra(exc)
    if extra is not None:
        path, line, _ = item.reportinfo()
        # a notebook's error: its class and message, not the whole cell and traceback
        message = f"{exc.ename}: {exc.evalue}" if hasattr(exc, "ename") else str(exc)
        report.outcome = "skipped"
        report.longrepr = (str(path), (line or 0) + 1, f"Skipped: needs robustfit[{extra}]: {message}")


def _has_mnist_test_split(root):
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (MNIST_FILE, MNIST_FILE + ".gz"):
            if (folder / name).is_file():
                return True
    return False


@pytest.fixture(autouse=True)
def _one_thread_if_marked(request):
    """Tests marked ``one_thread`` (e.g. a module's ``pytestmark``) run with one torch thread."""
    if request.node.get_closest_marker("one_thread") is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder holding the real MNIST test split.

    ``$ROBUSTFIT_MNIST_DIR`` if set, else ``<repo>/../shared/datasets/mnist``.
    Missing data skips the test, unless ``ROBUSTFIT_REQUIRE_DATA=1``, in which
    case the test fails (for CI machines that must have the data).
    """
    override = os.environ.get("ROBUSTFIT_MNIST_DIR")
    if override:
        root = Path(override)
    else:
        root = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"
    if not _has_mnist_test_split(root):
        msg = f"MNIST test split ({MNIST_FILE}[.gz]) not found under {root}"
        if os.environ.get("ROBUSTFIT_REQUIRE_DATA") == "1":
            pytest.fail(msg + " and ROBUSTFIT_REQUIRE_DATA=1")
        pytest.skip(msg + "; set ROBUSTFIT_MNIST_DIR to run this test")
    return root


@pytest.fixture(scope="session")
def digits():
    """All 1797 digits images, shuffled once with a fixed seed."""
    X, y = load_digits_images()
    perm = np.random.RandomState(0).permutation(len(X))
    return X[perm], y[perm]


@pytest.fixture(scope="session")
def digits_small(digits):
    """600 training and 300 test digits images (disjoint)."""
    X, y = digits
    return X[:600], y[:600], X[1500:1800], y[1500:1800]


@pytest.fixture(scope="module")
def std_clf(digits_small):
    """A standard (non-adversarial) digits classifier, trained in about a second."""
    Xtr, ytr, _, _ = digits_small
    return AdversarialClassifier(
        max_epochs=10, lr=1e-2, random_state=0, train_split=None
    ).fit(Xtr, ytr)


@pytest.fixture(scope="module")
def std_module(std_clf):
    """The torch module of :func:`std_clf`, in eval mode (tests must not change it)."""
    return std_clf.module_.eval()


@pytest.fixture(scope="module")
def pgd_clf(digits_small):
    """A quickly PGD-trained digits classifier with a validation split."""
    Xtr, ytr, _, _ = digits_small
    return AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=2), max_epochs=8, lr=1e-2, random_state=0
    ).fit(Xtr, ytr)

