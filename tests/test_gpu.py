"""The CUDA path, and the CPU smoke runs of the GPU benchmark scripts.

Tests marked ``gpu`` need a CUDA GPU and are skipped without one; ``make
gpu-check`` runs them on a GPU machine (``pytest -m gpu tests/test_gpu.py``).
They cover what the CPU suite cannot: fit/predict/robust_score on CUDA with the
default bf16 autocast and channels-last memory, the fp32 evaluation at least as
strong as under bf16 autocast, a CUDA model pickled and loaded on a CPU-only process, no
host synchronization inside the attack loop, robustfit's Sinkhorn solvers and
GeneratorSynth's shared step on the GPU, and a Dask worker pinned to the GPU. The unmarked tests at the end run ``benchmarks/bench_gpu.py --smoke`` and
``benchmarks/bench_amp.py`` on the CPU, so the scripts ``make gpu-check`` runs
are known to work before a GPU is ever lent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from robustfit import AdversarialClassifier
from robustfit._utils import random_streams_kept
from robustfit.attacks import FGSM, PGD, GeneratorSynth, Langevin
from robustfit.attacks._base import eval_mode
from robustfit.losses import sinkhorn_cost, sinkhorn_distance
from robustfit.models import DigitsCNN
from robustfit.recipes import CollapseGuard

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
HAS_CUDA = torch.cuda.is_available()
EPS = 0.1


def gpu_test(fn):
    """Mark a test ``gpu`` (``make gpu-check`` selects these) and skip it without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")(fn))


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def split(digits):
    X, y = digits
    return (X[:-600], y[:-600]), (X[-600:], y[-600:])


@pytest.fixture(scope="module")
def cuda_clf(split):
    """PGD-trained on the GPU with every default: device="auto", amp="auto"."""
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    (X, y), _ = split
    clf = AdversarialClassifier(attack=PGD(epsilon=EPS, steps=5), max_epochs=15, random_state=0)
    return clf.fit(X, y)


# ----------------------------------------------------------------------- on a GPU
@gpu_test
def test_cuda_fit_predict_robust_score(cuda_clf, split):
    _, (X, y) = split
    assert cuda_clf.device == "cuda" and cuda_clf.get_params()["device"] == "auto"
    assert next(cuda_clf.module_.parameters()).is_cuda
    pred = cuda_clf.predict(X)
    assert isinstance(pred, np.ndarray) and set(pred) <= set(cuda_clf.classes_)
    clean = cuda_clf.score(X, y)
    assert clean > 0.8
    robust = cuda_clf.robust_score(X[:300], y[:300])  # the default AutoAttack-style ensemble
    assert 0 < robust <= cuda_clf.score(X[:300], y[:300])
    standard = AdversarialClassifier(max_epochs=15, random_state=0).fit(*split[0])
    assert robust > standard.robust_score(X[:300], y[:300], attack=cuda_clf.default_evaluation_attack(),
                                          check=False) + 0.1


@gpu_test
def test_bf16_autocast_and_channels_last_by_default(cuda_clf, split):
    # a convolution from one channel has the same layout in both formats: the others tell
    convs = [m for m in cuda_clf.module_.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.as_tensor(split[1][0][:64], device="cuda")
    with cuda_clf._autocast(), eval_mode(cuda_clf.module_), torch.no_grad():
        assert cuda_clf.module_(x).dtype == torch.bfloat16
    assert cuda_clf.predict_proba(split[1][0][:64]).dtype == np.float32
    fp32 = AdversarialClassifier(attack=PGD(epsilon=EPS, steps=2), max_epochs=1, amp=None,
                                 random_state=0).fit(*split[0])
    assert not any(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in fp32.module_.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    with fp32._autocast(), eval_mode(fp32.module_), torch.no_grad():
        assert fp32.module_(x).dtype == torch.float32


@gpu_test
def test_evaluation_in_fp32_is_at_least_as_strong_as_under_bf16(cuda_clf, split):
    """The evaluation (robust_accuracy, robust_score) runs in fp32 whatever the classifier's
    amp: on an H200 the ensemble under bf16 autocast found fewer adversarial examples (robust
    accuracy +1.39 +- 0.35 points over 3 seeds, bench_amp.py), so an autocast evaluation
    would flatter the model. The fp32 figure must not be the higher one."""
    bench_amp = _load(BENCH / "bench_amp.py", "bench_amp")
    _, (X, y) = split
    full, low = bench_amp.compare(cuda_clf, X, y, EPS, "cuda", seed=0)
    assert 0 < full < cuda_clf.score(X, y)
    assert full <= low + 0.005, (full, low)  # fp32 at least as strong, within 3 of 600 points


@gpu_test
def test_cuda_model_pickles_and_loads_on_a_cpu_only_process(cuda_clf, split, tmp_path):
    _, (X, y) = split
    path = tmp_path / "clf.pkl"
    path.write_bytes(pickle.dumps(cuda_clf))
    np.save(tmp_path / "X.npy", X[:100])
    code = (
        "import pickle, sys, numpy as np, torch\n"
        "assert not torch.cuda.is_available()\n"
        f"clf = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        "assert clf.device == 'cpu' and clf.get_params()['device'] == 'auto'\n"
        "assert not next(clf.module_.parameters()).is_cuda\n"
        "clf.set_params(amp=None)\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, clf.predict_proba(np.load({str(tmp_path / 'X.npy')!r})))\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gpu_copy = pickle.loads(path.read_bytes()).set_params(amp=None)
    # fp32 on both, but the GPU's convolutions use TF32 (cudnn's default): 2e-4 apart measured
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), gpu_copy.predict_proba(X[:100]),
                               rtol=0, atol=2e-3)


@gpu_test
@pytest.mark.parametrize("attack", [PGD(epsilon=EPS, steps=5), FGSM(epsilon=EPS),
                                    Langevin(epsilon=EPS, steps=5)], ids=lambda a: type(a).__name__)
def test_no_host_sync_inside_the_attack(cuda_clf, split, attack):
    x = torch.as_tensor(split[1][0][:256], device="cuda")
    y = torch.as_tensor(np.searchsorted(cuda_clf.classes_, split[1][1][:256]), device="cuda")
    module = cuda_clf.module_
    with cuda_clf._autocast():
        attack.perturb(module, x, y)  # warm-up: cuDNN plans, allocator
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            x_adv = attack.perturb(module, x, y)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6


@gpu_test
def test_guard_on_the_gpu_leaves_the_training_draws_alone(split):
    # the checks put the GPU generator back too: unseeded, the fit's random starts
    # come from the global CUDA generator, so a check drawing from it would move it
    # (compared by generator state, which GPU arithmetic's non-determinism cannot touch)
    (X, y), _ = split
    kw = dict(attack=FGSM(epsilon=EPS), max_epochs=2, device="cuda")
    states = []
    for guard in (None, CollapseGuard(max_samples=64, drop=0.99)):
        torch.manual_seed(0)
        AdversarialClassifier(guard=guard, **kw).fit(X[:600], y[:600])
        states.append(torch.cuda.get_rng_state())
    assert torch.equal(states[0], states[1])
    before = torch.cuda.get_rng_state()
    with random_streams_kept("cuda"):
        torch.rand(5, device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), before)


@gpu_test
def test_sinkhorn_solvers_and_generator_synth_on_the_gpu(split):
    """robustfit's Sinkhorn solvers give the CPU's values and gradients on the GPU, and
    GeneratorSynth's shared step trains there under the default bf16 autocast, its
    generator on the GPU."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 10, generator=gen), torch.randn(64, 10, generator=gen) + 1
    for fn in (lambda x, y: sinkhorn_distance(x, y, blur=0.1, scaling=0.3),
               lambda x, y: sinkhorn_cost(x, y, reg=0.05, n_iter=50)):
        values = []
        for device in ("cpu", "cuda"):
            x, y = a.to(device).requires_grad_(), b.to(device)
            value = fn(x, y)
            (grad,) = torch.autograd.grad(value, x)
            values.append((float(value), grad.cpu()))
        (v_cpu, g_cpu), (v_gpu, g_gpu) = values
        assert v_gpu == pytest.approx(v_cpu, rel=1e-4)
        assert torch.allclose(g_gpu, g_cpu, rtol=1e-3, atol=1e-4 * float(g_cpu.abs().max()))
    (X, y), (Xte, yte) = split
    clf = AdversarialClassifier(DigitsCNN, attack=GeneratorSynth(epsilon=EPS, generator_step_mode="train"),
                                max_epochs=5, lr=1e-2, random_state=0).fit(X, y)
    assert next(clf.attack_.generator_.parameters()).is_cuda
    assert clf.attack_.n_generator_steps_ > 0 and clf.score(Xte, yte) > 0.8


def _graph_entries(module):
    from robustfit.attacks._graph import _GRAPHS, _Graph
    return [e for e in _GRAPHS.get(module, {}).values() if isinstance(e, _Graph)]


@gpu_test
@pytest.mark.parametrize("amp", [None, "bf16"])
def test_cuda_graph_attack_equals_the_eager_attack_as_weights_change(split, amp):
    """The recorded PGD loop gives the eager loop's examples from the same random
    start, call after call, while an optimizer changes the weights in between (a
    graph that kept the recording's weights, or autocast's cached casts of them,
    would drift from the eager examples)."""
    from robustfit._utils import autocast, random_source
    from robustfit.attacks._graph import cuda_graphs

    (X, y), _ = split
    x = torch.as_tensor(X[:256], device="cuda")
    t = torch.as_tensor(y[:256], device="cuda")
    torch.manual_seed(0)
    module = DigitsCNN().cuda()
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    attack = PGD(epsilon=EPS, steps=7)
    agree = []
    for step in range(6):
        runs = []
        for graphs in (False, True):
            with random_source(step), autocast(amp, "cuda"), cuda_graphs(graphs):
                runs.append(attack.perturb(module, x, t))
        agree.append(float((runs[0] == runs[1]).float().mean()))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(runs[0]), t).backward()
        opt.step()
    assert len(_graph_entries(module)) == 1  # recorded on the second call, replayed since
    assert min(agree) > 0.999, agree


@gpu_test
def test_fit_with_cuda_graphs_matches_the_eager_fit(split, monkeypatch):
    from robustfit.attacks import _graph

    replays = []
    original = _graph._Graph._replay
    monkeypatch.setattr(_graph._Graph, "_replay", lambda self: replays.append(1) or original(self))
    (X, y), (Xte, yte) = split
    fits, counts = [], []
    for graphs in (False, True):
        clf = AdversarialClassifier(attack=PGD(epsilon=EPS, steps=5), max_epochs=4, amp=None,
                                    cuda_graphs=graphs, random_state=0, device="cuda")
        fits.append(clf.fit(X, y))
        counts.append(len(replays))
    assert counts[0] == 0 and counts[1] > 0  # replayed in the second fit only
    assert not _graph_entries(fits[1].module_)  # and released when fit ended
    losses = [np.array(f.history[:, "train_loss"]) for f in fits]
    # GPU arithmetic is not deterministic (cuDNN's atomics), and sign steps
    # amplify the last bits: close, not equal
    np.testing.assert_allclose(losses[1], losses[0], rtol=2e-2)
    assert abs(fits[1].score(Xte, yte) - fits[0].score(Xte, yte)) <= 0.02


@gpu_test
def test_a_module_that_cannot_be_recorded_runs_eagerly_after_one_warning(split):
    from robustfit.attacks._graph import cuda_graphs

    class Syncing(DigitsCNN):
        def forward(self, x):
            if float(x.amax()) > 2:  # a read-back: not allowed while recording
                x = x / 2
            return super().forward(x)

    (X, y), _ = split
    x = torch.as_tensor(X[:128], device="cuda")
    t = torch.as_tensor(y[:128], device="cuda")
    module = Syncing().cuda()
    attack = PGD(epsilon=EPS, steps=3, random_start=False)
    eager = attack.perturb(module, x, t)
    with cuda_graphs(True):
        attack.perturb(module, x, t)
        with pytest.warns(RuntimeWarning, match="CUDA graph"):
            second = attack.perturb(module, x, t)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one warning only
            third = attack.perturb(module, x, t)
    assert torch.equal(second, eager) and torch.equal(third, eager)
    assert not _graph_entries(module)


@gpu_test
def test_folded_batchnorm_attack_on_the_gpu_matches_the_network(split):
    """PGD on ResNet-18 with batch norm folded, replayed from a CUDA graph, gives the
    examples of PGD on the network itself (float32, TF32 off: rounding alone differs)."""
    from robustfit._utils import random_source
    from robustfit.attacks._fold import folded
    from robustfit.attacks._graph import cuda_graphs
    from robustfit.models import ResNet18

    torch.manual_seed(0)
    net = ResNet18(n_classes=10, in_channels=3).cuda()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
    x = torch.rand(64, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    attack = PGD(epsilon=8 / 255, steps=5)
    flags = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        runs = []
        for fold, graphs in ((False, False), (True, True), (True, True), (True, True)):
            with random_source(0), cuda_graphs(graphs):
                runs.append(attack.perturb(folded(net) if fold else net, x, y))
    finally:
        torch.backends.cudnn.allow_tf32 = flags
    assert _graph_entries(folded(net))  # recorded on the folded module, replayed after
    for run in runs[1:]:
        assert float((run == runs[0]).float().mean()) > 0.99


@gpu_test
def test_dask_worker_pinned_to_the_gpu_trains_there(split):
    distributed = pytest.importorskip("distributed")
    example = _load(ROOT / "examples" / "dask_grid_search.py", "dask_grid_search")
    (X, y), _ = split

    def fit_in_worker():
        clf = AdversarialClassifier(attack=PGD(epsilon=EPS, steps=2), max_epochs=1, random_state=0)
        clf.fit(X, y)
        return torch.cuda.device_count(), str(next(clf.module_.parameters()).device), clf

    with example.pinned_cluster() as cluster, distributed.Client(cluster) as client:
        assert set(client.run(example.visible_devices).values()) == {"0"}
        n_devices, device, clf = client.submit(fit_in_worker).result(timeout=300)
    assert (n_devices, device) == (1, "cuda:0")
    assert isinstance(clf, AdversarialClassifier) and clf.predict(X[:5]).shape == (5,)


# ------------------------------------------------------- CPU smoke runs of the scripts
def test_bench_gpu_smoke_runs_every_case(tmp_path):
    out = tmp_path / "bench_gpu.txt"
    model = "resnet18" if importlib.util.find_spec("torchvision") else "mnistcnn"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_gpu.py"), "--smoke", "--device", "cpu",
         "--model", model, "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    cases = data["cases"]
    assert data["cases"].pop("_done") is True
    assert set(cases) == {"a", "a32", "b", "e", "c", "c0", "c1", "atk", "aa", "d", "atk_d"}, text
    for key, entry in cases.items():
        assert entry["status"] == "ok" and entry["images_per_s"] > 0, (key, entry)
    assert "robust_model_images_per_s" in cases["aa"] and "first_pass_s" in cases["d"]
    assert text.count("images/s (passes:") == 11 and "summary:" in text
    assert len(data["summary"]) == 8  # the CUDA-graph attack ratio needs a GPU


def test_bench_gpu_stops_within_its_budget(tmp_path):
    out = tmp_path / "b.txt"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_gpu.py"), "--smoke", "--device", "cpu", "--model",
         "mnistcnn", "--budget", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(out.with_suffix(".json").read_text())["cases"]
    assert {v["status"] for k, v in cases.items() if k != "_done"} == {"skipped"}
    assert "not measured" in out.read_text()


def test_bench_amp_runs_on_the_cpu(tmp_path):
    out = tmp_path / "amp.txt"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_amp.py"), "--device", "cpu", "--seeds", "0",
         "--epochs", "1", "--steps", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "seed 0: clean" in text and "robust bf16" in text and "bf16 - fp32 over 1 seed" in text


def test_bench_ddp_gpu_smoke_trains_two_gloo_ranks_like_one_process(tmp_path):
    """bench_ddp_gpu.py (run by make gpu-check) on the CPU: one process at the rank batch,
    one at the global batch, and 2 gloo ranks under torchrun. The run and its report are
    checked (ResNet-18's batch norm normalizes per rank, so its losses differ from the one
    process's; tests/test_distributed.py checks the exact equality on a network without)."""
    out = tmp_path / "bench_ddp_gpu.txt"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_ddp_gpu.py"), "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data) == {"single 8", "single 16", "k=2"}
    assert data["k=2"]["world_size"] == 2 and data["k=2"]["backend"] == "gloo"
    assert data["single 16"]["world_size"] == 1 and data["single 16"]["n"] == data["k=2"]["n"]
    assert "weak-scaling efficiency" in out.read_text()
