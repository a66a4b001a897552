"""A run killed with SIGKILL in the middle of an epoch and started again the documented way
(skorch's Checkpoint + LoadInitState) ends where the uninterrupted run ends.

Real subprocesses (tests/resume_run.py) on digits: for PGD (with proxy samples and a robust
validation score), DALE (Langevin + PrimalDual: the dual variable) and GeneratorSynth (a
generator and its optimizer), an uninterrupted run and a run killed in epoch 3 of 4 start
together; the killed run is then started again and finishes. Weights, optimizer state,
history, the attack's and the objective's state must agree with the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("resume_run.py")
METHODS = ("pgd", "dale", "synth")
KILL_EPOCH, KILL_BATCH = 3, 5
IGNORED = {"dur"}  # wall-clock time differs from run to run


def _start(method, dirname, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(SCRIPT.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(SCRIPT), method, str(dirname), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]


def _rows(history):
    """History rows without timing, batches included."""
    rows = []
    for row in history:
        row = {k: v for k, v in row.items() if k not in IGNORED}
        row["batches"] = [{k: v for k, v in b.items() if k not in IGNORED} for b in row["batches"]]
        rows.append(row)
    return rows


def _max_diff(a, b, where=""):
    """Largest absolute difference between two nested structures (they must match in shape)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape, where
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        return max([_max_diff(a[k], b[k], f"{where}.{k}") for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths"
        return max([_max_diff(x, z, f"{where}[{i}]") for i, (x, z) in enumerate(zip(a, b))] or [0.0])
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b)
    assert a == b, f"{where}: {a!r} != {b!r}"
    return 0.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per method: (uninterrupted result, resumed result, epochs the resumed process trained).

    One process trains all methods uninterrupted; alongside, one process per method is
    killed in the middle of epoch 3 and started again.
    """
    root = tmp_path_factory.mktemp("resume")
    reference = _start(",".join(METHODS), root / "reference")
    killed = {m: _start(m, root / "killed", "--hang", str(KILL_EPOCH), str(KILL_BATCH),
                        str(root / f"{m}.ready")) for m in METHODS}
    resumed = {}
    for method, proc in killed.items():
        ready = root / f"{method}.ready"
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the run never reached the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-epoch: epoch 3 has run 5 of its batches
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        history = json.loads((root / "killed" / method / "history.json").read_text())
        assert len(history) == KILL_EPOCH - 1  # the last checkpoint: the end of epoch 2
        resumed[method] = _start(method, root / "killed")  # the same script, started again
    _finish(reference)
    out = {}
    for method, proc in resumed.items():
        _finish(proc)
        final = [torch.load(root / d / method / "final.pt", weights_only=True)
                 for d in ("reference", "killed")]
        trained = json.loads((root / "killed" / method / "trained.json").read_text())
        out[method] = (*final, trained)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_resumed_run_ends_where_the_uninterrupted_run_ends(runs, method):
    reference, resumed, trained = runs[method]
    # the second process trained the epochs that remained, not max_epochs more
    assert trained == [KILL_EPOCH, KILL_EPOCH + 1]
    h_ref, h_res = json.loads(reference["history"]), json.loads(resumed["history"])
    assert len(h_ref) == len(h_res) == KILL_EPOCH + 1
    diffs = {
        "weights": _max_diff(reference["module"], resumed["module"], "module"),
        "optimizer": _max_diff(reference["optimizer"], resumed["optimizer"], "optimizer"),
        "history": _max_diff(_rows(h_ref), _rows(h_res), "history"),
        "attack": _max_diff(reference["attack"], resumed["attack"], "attack"),
        "proba": _max_diff(reference["proba"], resumed["proba"], "proba"),
    }
    print(method, diffs)
    assert max(diffs.values()) <= 1e-6, diffs
    # learning rates are the schedule's, never 0 after the resume
    lrs = [b["event_lr"] for row in h_res[KILL_EPOCH - 1:] for b in row["batches"] if "event_lr" in b]
    assert lrs and min(lrs) > 0
    if method == "dale":
        assert float(reference["nu"]) == float(resumed["nu"]) != 1.0  # the dual variable moved
        assert [r["dual_nu"] for r in h_ref] == [r["dual_nu"] for r in h_res]
    if method == "synth":
        assert resumed["attack"]["n_generator_steps_"] == reference["attack"]["n_generator_steps_"] > 0
    if method == "pgd":
        assert all("valid_robust_acc" in r for r in h_res)
        # the epsilon warm-up was under way at the kill and continued where it stopped
        eps = [b["attack_epsilon"] for b in h_res[KILL_EPOCH - 1]["batches"] if "attack_epsilon" in b]
        assert 0 < eps[0] < eps[-1] < 0.1
