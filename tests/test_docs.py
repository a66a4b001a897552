"""The documentation builds without a single warning, lists every public name, and its
getting-started code runs."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    # Build a copy, so that the generated API pages do not land in the source tree.
    src = tmp_path / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "generated"))
    # pages include scripts from examples/ by relative path
    shutil.copytree(DOCS.parent / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src),
         str(out)],
        capture_output=True, text=True, timeout=600,
    )
    # -W turns every warning into an error, and so into a non-zero exit status.
    assert proc.returncode == 0, f"the docs build warned or failed:\n{proc.stderr[-6000:]}"
    assert (out / "generated" / "robustfit.AdversarialClassifier.html").is_file()
    assert (out / "attacks.html").is_file()


def _documented_names():
    """Fully qualified names listed in api.rst's autosummary tables."""
    names, module = set(), None
    for line in (DOCS / "api.rst").read_text().splitlines():
        if line.startswith(".. currentmodule::"):
            module = line.split("::", 1)[1].strip()
        elif re.fullmatch(r"   [A-Za-z_]\w*", line):
            names.add(f"{module}.{line.strip()}")
    return names


def _public_names():
    names = {"robustfit.classifier.resolve_device", "robustfit.classifier.training_state_path"}
    packages = ("robustfit", "robustfit.attacks", "robustfit.metrics", "robustfit.losses",
                 "robustfit.proxy", "robustfit.certify", "robustfit.recipes")
    for package in packages:
        mod = importlib.import_module(package)
        names |= {f"{package}.{n}" for n in mod.__all__ if not n.startswith("__")}
    for module in ("robustfit.datasets", "robustfit.models", "robustfit.callbacks"):
        mod = importlib.import_module(module)
        names |= {
            f"{module}.{n}" for n, obj in vars(mod).items()
            if not n.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == module
        }
    return names


def test_api_page_lists_every_public_name():
    documented, public = _documented_names(), _public_names()
    assert not public - documented, f"add to docs/api.rst: {sorted(public - documented)}"
    stale = sorted(documented - public)
    assert not stale, f"not public (any more), remove from docs/api.rst: {stale}"


@pytest.mark.parametrize("page,min_blocks", [("getting_started.rst", 5), ("skorch_tools.rst", 5),
                                             ("recipes.rst", 8)])
def test_page_code_runs(tmp_path, page, min_blocks):
    """Every Python block of a docs page, run in order as one script."""
    text = (DOCS / page).read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
    assert len(blocks) >= min_blocks
    script = "import torch\ntorch.set_num_threads(1)\n" + "\n".join(
        "\n".join(line[4:] for line in block.splitlines()) for block in blocks
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


EXECUTED = DOCS / "notebooks"
NOTE_KEY = "robustfit_execution_note"  # docs/execute_notebooks.py marks its note cell with it


def _cells(nb):
    return [(c["cell_type"], c["source"]) for c in nb["cells"] if not c["metadata"].get(NOTE_KEY)]


@pytest.mark.parametrize("path", sorted(DOCS.parent.glob("examples/*.ipynb")), ids=lambda p: p.name)
def test_executed_notebook_matches_source(path):
    """The docs render executed copies of the notebooks: each copy has its source's cells (plus
    one note saying how it was run), outputs for every code cell that ran, and a listed page."""
    nbformat = pytest.importorskip("nbformat")
    copy = EXECUTED / path.name
    fix = f"run: python docs/execute_notebooks.py {path.name[:2]}"
    assert copy.is_file(), f"docs/notebooks/{path.name} is missing; {fix}"
    source, executed = nbformat.read(path, as_version=4), nbformat.read(copy, as_version=4)
    assert _cells(executed) == _cells(source), f"docs/notebooks/{path.name} is stale; {fix}"
    notes = [c for c in executed.cells if c.metadata.get(NOTE_KEY)]
    assert len(notes) == 1 and "executed with `python docs/execute_notebooks.py" in notes[0].source
    assert re.search(r"\*\*(quick|full) mode\*\*", notes[0].source), notes[0].source
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), f"{copy.name} has cells that did not run; {fix}"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if any("plt." in c.source or "plot_" in c.source for c in code):
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{copy.name}: no plot"
    assert f"notebooks/{path.stem}" in (DOCS / "tutorials.rst").read_text()


def test_no_executed_notebook_without_source():
    stale = {p.name for p in EXECUTED.glob("*.ipynb")} - {
        p.name for p in DOCS.parent.glob("examples/*.ipynb")}
    assert not stale, f"remove from docs/notebooks/ (no source in examples/): {sorted(stale)}"
