"""The examples run end to end: the quickstart script and the tutorial notebooks."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = r"(standard|PGD-7 training|FGSM training)"
ROW = re.compile(NAMES + r"\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)s$")


def test_quickstart_quick(tmp_path):
    importlib.import_module("matplotlib")  # robustfit[plot]; conftest skips without it
    out = tmp_path / "x.png"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--quick", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = proc.stdout.splitlines()[1].split()
    # the fast ensemble is named for what it is, never "AutoAttack"
    assert header[:2] == ["model", "clean"] and "fast" in header, proc.stdout
    assert "AutoAttack" not in header, proc.stdout
    assert "fast ens.: fast ensemble (APGD-CE + APGD-T x3, 10 steps)" in proc.stdout
    matches = [ROW.match(line) for line in proc.stdout.splitlines()]
    rows = {m[1]: [float(v) for v in m.groups()[1:]] for m in matches if m}
    assert set(rows) == {"standard", "PGD-7 training", "FGSM training"}, proc.stdout
    for clean, pgd, auto, seconds in rows.values():
        # a point counts as robust only if it is also classified correctly clean
        assert 0 <= pgd <= clean <= 100 and 0 <= auto <= clean and seconds >= 0, proc.stdout
    # Even after a few epochs, the standard model is learned, and both adversarially trained
    # models beat it under the stronger attack.
    assert rows["standard"][0] > 80, proc.stdout
    assert rows["PGD-7 training"][2] > rows["standard"][2] + 10, proc.stdout
    assert rows["FGSM training"][2] > rows["standard"][2] + 10, proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved {out}" in proc.stdout


NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    # Notebooks read ROBUSTFIT_QUICK=1 and shrink their data and epochs, so the suite stays fast;
    # the kernel inherits this environment.
    monkeypatch.setenv("ROBUSTFIT_QUICK", "1")
    importlib.import_module("matplotlib")  # robustfit[plot]; conftest skips without it
    if importlib.util.find_spec("ipykernel") is None:
        pytest.skip("ipykernel is not installed (pip install -e '.[test]'), so no kernel can run")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{path.name} is committed with outputs; clear them"
    )
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell, on any error
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "error" not in {o.get("output_type") for c in nb.cells for o in c.get("outputs", [])}
    if path.name.startswith("01_"):
        assert "best: {'attack__epsilon':" in text, text
    if path.name.startswith("06_"):
        # a certificate holds against an attack on the smoothed classifier within its radius
        assert "best: {'sigma':" in text, text
        assert re.search(r"certified radius \+ 0\.0: flipped 0 of [1-9]", text), text
