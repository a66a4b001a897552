"""A run killed with SIGKILL in the middle of an epoch and started again the documented way
(skorch's Checkpoint + LoadInitState) ends where the uninterrupted run ends.

Real subprocesses (tests/resume_run.py) on digits: for PGD (with proxy samples and a robust
validation score), DALE (Langevin + PrimalDual: the dual variable), GeneratorSynth (a
generator and its optimizer) and EMA (the raw weights beside the average), an uninterrupted
run and a run killed in epoch 3 of 4 start
together; the killed run is then started again and finishes. Weights, optimizer state,
history, the attack's and the objective's state must agree with the uninterrupted run.

The same under ``torchrun --nproc_per_node=2`` (gloo), with ResumableCheckpoint: one rank is killed in the middle
of epoch 3, torchrun's agent (``--max-restarts=1``) restarts both ranks, and they resume
from rank 0's checkpoint; each rank must end where the uninterrupted 2-rank run ends.
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

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available")

SCRIPT = Path(__file__).with_name("resume_run.py")
METHODS = ("pgd", "dale", "synth", "ema")
KILL_EPOCH, KILL_BATCH = 3, 5
IGNORED = {"dur"}  # wall-clock time differs from run to run


_STARTED = []


def _start(method, dirname, *extra, torchrun=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(SCRIPT.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    launcher = [sys.executable]
    if torchrun:  # restarted workers join through a fresh store (pytorch/pytorch#135712)
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        launcher += ["-m", "torch.distributed.run", *torchrun]
    proc = subprocess.Popen([*launcher, str(SCRIPT), method, str(dirname), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _STARTED.append(proc)
    return proc


@pytest.fixture(scope="module", autouse=True)
def _no_process_left():
    """A failed run leaves no worker behind (hanging workers would slow every later test)."""
    yield
    for proc in _STARTED:
        if proc.poll() is None:
            proc.terminate()  # torchrun's agent stops its workers on SIGTERM
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    _STARTED.clear()


def _wait_for(paths, proc):
    """Wait until every file in ``paths`` exists (the run reached the kill point)."""
    deadline = time.monotonic() + 240
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.05)


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
        _wait_for([root / f"{method}.ready"], proc)
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
    _check_resumed(method, *runs[method])


def _check_resumed(method, reference, resumed, trained):
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


TORCHRUN = ("--standalone", "--nproc_per_node=2")
# dropout: each rank draws its own masks from torch's global generator, which must resume per rank
DDP_METHODS = (*METHODS, "dropout")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Per method and rank: (uninterrupted result, resumed result, epochs trained after the restart).

    With robustfit's ResumableCheckpoint (the one-process runs use skorch's Checkpoint and
    LoadInitState). One 2-rank torchrun trains all methods uninterrupted; alongside, one 2-rank torchrun
    per method with ``--max-restarts=1``: both ranks wait in the middle of epoch 3, rank 1
    is killed, the agent stops rank 0 and starts both again, and they resume.
    """
    root = tmp_path_factory.mktemp("resume_ddp")
    reference = _start(",".join(DDP_METHODS), root / "reference", "--resumable", torchrun=TORCHRUN)
    killed = {m: _start(m, root / "killed", "--hang", str(KILL_EPOCH), str(KILL_BATCH),
                        str(root / f"{m}.ready"), "--resumable",
                        torchrun=(*TORCHRUN, "--max-restarts=1"))
              for m in DDP_METHODS}
    for method, proc in killed.items():
        ready = [root / f"{method}.ready.rank{r}" for r in (0, 1)]
        _wait_for(ready, proc)
        os.kill(int(ready[1].read_text()), signal.SIGKILL)
    out = {}
    for method, proc in killed.items():
        _finish(proc)
        for r in (0, 1):
            final = [torch.load(root / d / method / f"final{r}.pt", weights_only=True)
                     for d in ("reference", "killed")]
            trained = json.loads((root / "killed" / method / f"trained{r}.json").read_text())
            out[method, r] = (*final, trained)
    _finish(reference)
    return out


@needs_gloo
@pytest.mark.parametrize("method", DDP_METHODS)
def test_a_data_parallel_run_restarted_by_torchrun_resumes_exactly(ddp_runs, method):
    for rank in (0, 1):
        _check_resumed(method, *ddp_runs[method, rank])
    # and the ranks agree with each other
    first, second = ddp_runs[method, 0][1], ddp_runs[method, 1][1]
    assert _max_diff(first["module"], second["module"]) == 0.0
    assert _max_diff(_rows(json.loads(first["history"])), _rows(json.loads(second["history"]))) == 0.0
