"""Optional dependencies: the core imports without them, and each feature that
needs one raises an ImportError that names the extra to install.

A missing package is simulated by putting None into ``sys.modules`` for it (and
its submodules), which makes Python's import raise ModuleNotFoundError.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import robustfit
from robustfit._utils import OPTIONAL, OptionalDependencyError, optional_import
from robustfit.datasets import load_mnist
from robustfit.losses import sinkhorn_distance
from robustfit.metrics import (
    RobustnessCurve,
    conditional_wasserstein_distance,
    plot_robustness_curve,
)
from robustfit.models import ResNet18
from robustfit.proxy import DiffusionProxy

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def _hide(monkeypatch, top):
    """Make ``top`` and its submodules unimportable for the rest of the test."""
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")] + [top]:
        monkeypatch.setitem(sys.modules, key, None)


def _digits_pair(n=40, d=6, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, d), np.arange(n) % 2, rng.rand(n, d), np.arange(n) % 2


FEATURES = {
    "ot": ("ot", lambda tmp: conditional_wasserstein_distance(*_digits_pair(), method="exact")),
    "matplotlib": ("plot", lambda tmp: plot_robustness_curve([RobustnessCurve([0, 0.1], [0.9, 0.5])])),
    "diffusers": ("diffusion", lambda tmp: DiffusionProxy(max_epochs=1).fit(
        np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 0, 1]))),
    "torchvision": ("vision", lambda tmp: ResNet18()),
}


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_missing_package_names_the_extra(name, monkeypatch, tmp_path):
    extra, use = FEATURES[name]
    _hide(monkeypatch, name)
    with pytest.raises(ImportError, match=re.escape(f"pip install 'robustfit[{extra}]'")) as info:
        use(tmp_path)
    err = info.value
    assert isinstance(err, OptionalDependencyError)
    assert err.extra == extra and err.package == OPTIONAL[name][0]
    assert err.package in str(err)


def test_sinkhorn_distance_needs_no_extra(monkeypatch):
    """GeneratorSynth's OT term is robustfit's own solver: it runs without geomloss or POT."""
    _hide(monkeypatch, "geomloss")
    _hide(monkeypatch, "ot")
    assert float(sinkhorn_distance(torch.zeros(4, 3), torch.ones(4, 3), blur=0.01)) == pytest.approx(1.5, rel=1e-3)


def test_load_mnist_download_needs_vision(monkeypatch, tmp_path):
    _hide(monkeypatch, "torchvision")
    with pytest.raises(ImportError, match=r"load_mnist\(download=True\).*robustfit\[vision\]"):
        load_mnist(root=tmp_path, download=True)
    # without download, a missing file is a FileNotFoundError, torchvision or not
    with pytest.raises(FileNotFoundError):
        load_mnist(root=tmp_path)


def test_broken_package_names_the_extra(monkeypatch):
    """An installed package that fails to import (as PyPI's torchvision does next to a CPU-only
    torch: RuntimeError, operator torchvision::nms does not exist) gets the same hint, and the cause."""
    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr("robustfit._utils.importlib.import_module", broken)
    with pytest.raises(ImportError, match=r"robustfit\[vision\].*matches your torch.*installed but failed "
                                          r"to import: RuntimeError: operator torchvision::nms"):
        ResNet18()


def test_optional_import():
    assert optional_import("numpy", "a test") is np
    with pytest.raises(ImportError, match="a test needs the optional package no_such_pkg_xyz: "
                                          "pip install no_such_pkg_xyz$"):
        optional_import("no_such_pkg_xyz", "a test")


def test_extras_match_the_table():
    """setup.py's extras list every package of OPTIONAL under the same extra, and 'all' has them all."""
    text = SETUP.read_text()
    for pip_name, extra in OPTIONAL.values():
        assert re.search(rf'"{extra}": \[[^\]]*"{pip_name}[>=<]', text, re.IGNORECASE), (pip_name, extra)
    assert '"all": sorted(' in text


def test_core_import_without_optional_packages():
    """``import robustfit`` and every subpackage and module import with none of the extras."""
    blocked = sorted(OPTIONAL)
    code = f"""
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None
import robustfit
names = [m.name for m in pkgutil.walk_packages(robustfit.__path__, "robustfit.")]
for name in names:
    importlib.import_module(name)
loaded = sorted(n for n in {blocked!r} if sys.modules.get(n) is not None)
assert not loaded, loaded
print(len(names))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(robustfit.__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 20


def test_conftest_recognizes_a_missing_extra():
    """The suite skips a test of a missing extra (conftest.py): each form of the error is recognized."""
    from conftest import _missing_extra

    class CellError(Exception):  # the fields of nbclient's CellExecutionError
        def __init__(self, ename, evalue):
            self.ename, self.evalue = ename, evalue

    assert _missing_extra(OptionalDependencyError("m", package="pot", extra="ot", feature="f")) == "ot"
    assert _missing_extra(ModuleNotFoundError("No module named 'matplotlib.pyplot'",
                                              name="matplotlib.pyplot")) == "plot"
    assert _missing_extra(CellError("OptionalDependencyError", "... pip install 'robustfit[diffusion]'")) \
        == "diffusion"
    assert _missing_extra(CellError("ModuleNotFoundError", "No module named 'ot'")) == "ot"
    # anything else is a real failure
    assert _missing_extra(ModuleNotFoundError("No module named 'numpyy'", name="numpyy")) is None
    assert _missing_extra(CellError("ValueError", "robustfit[ot]")) is None
    assert _missing_extra(ValueError("x")) is None
