"""Attacks: threat-model constraints, strength, side effects, validation."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from torch import nn

from robustfit.attacks import FGSM, PGD, Attack, Langevin

TOL = 1e-5


def _linf(x_adv, x):
    return (x_adv - x).reshape(len(x), -1).abs().amax(dim=1)


def _l2(x_adv, x):
    return torch.linalg.vector_norm((x_adv - x).reshape(len(x), -1), dim=1)


def _make_attack(kind, norm, epsilon, steps, random_start, bounds):
    if kind == "pgd":
        return PGD(epsilon=epsilon, norm=norm, steps=steps,
                   random_start=random_start, bounds=bounds)
    return FGSM(epsilon=epsilon, norm=norm, random_start=random_start, bounds=bounds)


def _ce(module, x, y):
    with torch.no_grad():
        return F.cross_entropy(module(x), y, reduction="none")


def _wrong(module, x, y):
    with torch.no_grad():
        return module(x).argmax(1) != y


@pytest.fixture(scope="module")
def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)
    )


def test_trained_fixture_is_accurate(std_module, digits_batch):
    X, y = digits_batch
    assert float(_wrong(std_module, X, y).float().mean()) < 0.15


@pytest.fixture(scope="module")
def digits_batch(digits_small):
    _, _, Xte, yte = digits_small
    return torch.as_tensor(Xte), torch.as_tensor(yte)


# ----------------------------------------------------------------- constraints
BOXES = {
    "unit": (0.0, 1.0),
    "custom": (-1.0, 2.0),
}


def _box_data(X, box):
    """Rescale [0, 1] digits onto the whole box, so both faces are active."""
    lo, hi = box
    return X * (hi - lo) + lo


@pytest.mark.parametrize("kind,steps", [("pgd", 1), ("pgd", 4), ("fgsm", 1)])
@pytest.mark.parametrize("norm,epsilon", [
    ("linf", 0.03), ("linf", 0.3), ("linf", 1.5),
    ("l2", 0.1), ("l2", 1.0), ("l2", 5.0),
])
@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("box", ["unit", "custom"])
def test_iterate_inside_ball_and_box(
    tiny_cnn, digits_batch, kind, steps, norm, epsilon, random_start, box
):
    bounds = BOXES[box]
    X, y = digits_batch
    X = _box_data(X[:64], bounds)
    y = y[:64]
    torch.manual_seed(1)
    x_adv = _make_attack(kind, norm, epsilon, steps, random_start, bounds)(tiny_cnn, X, y)
    assert x_adv.shape == X.shape
    assert x_adv.dtype == torch.float32
    assert not x_adv.requires_grad
    dist = _linf(x_adv, X) if norm == "linf" else _l2(x_adv, X)
    assert float(dist.max()) <= epsilon * (1 + TOL) + TOL
    assert float(x_adv.min()) >= bounds[0] - TOL
    assert float(x_adv.max()) <= bounds[1] + TOL
    # the attack actually moved the points (it is not the identity)
    assert float(dist.max()) > 0.1 * epsilon


@pytest.mark.parametrize("kind", ["pgd", "fgsm"])
@pytest.mark.parametrize("norm,epsilon", [("linf", 0.5), ("l2", 3.0)])
def test_bounds_none_leaves_values_unclipped(tiny_cnn, digits_batch, kind, norm, epsilon):
    X, y = digits_batch
    X, y = X[:64], y[:64]  # many pixels sit at 0 and 1 exactly
    torch.manual_seed(0)
    free = _make_attack(kind, norm, epsilon, 5, True, None)(tiny_cnn, X, y)
    torch.manual_seed(0)
    boxed = _make_attack(kind, norm, epsilon, 5, True, (0.0, 1.0))(tiny_cnn, X, y)
    dist = _linf(free, X) if norm == "linf" else _l2(free, X)
    assert float(dist.max()) <= epsilon * (1 + TOL) + TOL
    # without a box, adversarial values leave [0, 1]; with one, they do not
    assert float(free.min()) < -0.05 or float(free.max()) > 1.05
    assert float(boxed.min()) >= -TOL and float(boxed.max()) <= 1 + TOL


def test_bounds_none_on_tabular_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    X = torch.randn(50, 5) * 10  # far outside [0, 1]
    y = torch.randint(0, 3, (50,))
    x_adv = PGD(epsilon=0.5, steps=5, bounds=None)(net, X, y)
    assert float(_linf(x_adv, X).max()) <= 0.5 + TOL
    # the default box refuses such data, naming the box
    with pytest.raises(ValueError, match="bounds"):
        PGD(epsilon=0.5, steps=5)(net, X, y)


def test_data_outside_custom_box_is_rejected(tiny_cnn, digits_batch):
    X, y = digits_batch
    with pytest.raises(ValueError, match=r"outside the declared input box"):
        PGD(epsilon=0.1, bounds=(0.2, 0.8))(tiny_cnn, X[:8], y[:8])


@pytest.mark.parametrize("attack", [PGD(epsilon=0.0), FGSM(epsilon=0.0)])
def test_zero_epsilon_is_identity(tiny_cnn, digits_batch, attack):
    X, y = digits_batch
    assert torch.equal(attack(tiny_cnn, X[:16], y[:16]), X[:16])


# -------------------------------------------------------------------- strength
@pytest.mark.parametrize("attack", [
    PGD(epsilon=0.15, norm="linf", steps=5),
    PGD(epsilon=1.0, norm="l2", steps=5),
    FGSM(epsilon=0.15, norm="linf"),
    FGSM(epsilon=1.0, norm="l2"),
], ids=["pgd-linf", "pgd-l2", "fgsm-linf", "fgsm-l2"])
def test_loss_rises_under_attack(std_module, digits_batch, attack):
    X, y = digits_batch
    torch.manual_seed(0)
    x_adv = attack(std_module, X, y)
    clean, adv = _ce(std_module, X, y), _ce(std_module, x_adv, y)
    assert float(adv.mean()) > 2 * float(clean.mean())
    assert float(_wrong(std_module, x_adv, y).float().mean()) > \
        float(_wrong(std_module, X, y).float().mean()) + 0.2


@pytest.mark.parametrize("norm,epsilon", [("linf", 0.08), ("l2", 0.6)])
def test_more_steps_not_weaker(std_module, digits_batch, norm, epsilon):
    X, y = digits_batch
    torch.manual_seed(0)
    one = PGD(epsilon=epsilon, norm=norm, steps=1)(std_module, X, y)
    torch.manual_seed(0)
    many = PGD(epsilon=epsilon, norm=norm, steps=10)(std_module, X, y)
    assert float(_ce(std_module, many, y).mean()) >= float(_ce(std_module, one, y).mean())


def test_restarts_never_lose_misclassified_points(std_module, digits_batch):
    X, y = digits_batch
    kw = dict(epsilon=0.05, steps=3)
    torch.manual_seed(0)
    single = PGD(restarts=1, **kw)(std_module, X, y)
    torch.manual_seed(0)
    multi = PGD(restarts=4, **kw)(std_module, X, y)
    wrong1, wrong4 = _wrong(std_module, single, y), _wrong(std_module, multi, y)
    # the setting must leave points for the later restarts to work on
    assert 0 < int(wrong1.sum()) < len(y)
    # the first restart is the single run; later ones only add broken points
    assert bool((wrong4 | ~wrong1).all()), "a point broken by restarts=1 is not broken by restarts=4"
    assert int(wrong4.sum()) >= int(wrong1.sum())
    # on points neither breaks, restarts keep the higher-loss example
    both_ok = ~wrong1 & ~wrong4
    loss1, loss4 = _ce(std_module, single, y), _ce(std_module, multi, y)
    assert bool((loss4[both_ok] >= loss1[both_ok] - 1e-4).all())
    assert float(_linf(multi, X).max()) <= kw["epsilon"] + TOL
    assert 0 - TOL <= float(multi.min()) and float(multi.max()) <= 1 + TOL


# ------------------------------------------------ regression: clamp-in-forward
class _Recorder(nn.Module):
    """Linear logits ``[0, w . x]`` that records every input it sees."""

    def __init__(self, n, sign=1.0):
        super().__init__()
        self.w = nn.Parameter(torch.full((n,), sign))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        flat = x.reshape(len(x), -1)
        return torch.stack([torch.zeros(len(x)), flat @ self.w], dim=1)


def _forward_clamp_pgd(module, x, y, epsilon, steps, step_size):
    """The broken attack of GUIDE.md "Pitfalls": clamps only in the forward pass."""
    d = (torch.rand_like(x) * 2 - 1) * epsilon
    for _ in range(steps):
        d.requires_grad_(True)
        loss = F.cross_entropy(module((x + d).clamp(0, 1)), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, d)
        d = (d + step_size * g.sign()).clamp(-epsilon, epsilon).detach()
    return (x + d).clamp(0, 1)


def test_pgd_projects_iterate_so_gradient_reaches_pixels_at_zero():
    # Black pixels (value 0) and a model whose loss rises with every pixel: the
    # optimal l_inf perturbation sets every pixel to epsilon. A random start
    # puts about half of the deltas below zero. Clamping only in the forward
    # pass gives those pixels zero gradient forever; projecting the iterate
    # onto the box keeps them at 0 with a live gradient, so they move up.
    eps, steps = 0.3, 5
    x = torch.zeros(32, 1, 8, 8)
    y = torch.zeros(32, dtype=torch.long)  # true class 0; class 1 logit = w . x

    ours_net = _Recorder(64)
    torch.manual_seed(0)
    ours = PGD(epsilon=eps, steps=steps, step_size=0.1)(ours_net, x, y)
    # every forward pass inside the attack saw an input inside the box: the
    # iterate itself is projected, not only what the network sees
    assert len(ours_net.seen) == steps
    for seen in ours_net.seen:
        assert float(seen.min()) >= 0.0 and float(seen.max()) <= 1.0
    assert float(ours.min()) >= 0.0
    # the gradient reached every black pixel: all of them moved to epsilon
    assert torch.allclose(ours, torch.full_like(ours, eps))

    broken_net = _Recorder(64)
    torch.manual_seed(0)
    broken = _forward_clamp_pgd(broken_net, x, y, eps, steps, 0.1)
    stuck = (broken == 0).float().mean()
    assert float(stuck) > 0.3, "the broken reference should stall on black pixels"
    loss_ours = float(_ce(ours_net, ours, y).mean())
    loss_broken = float(_ce(broken_net, broken, y).mean())
    assert loss_ours > loss_broken + 1.0


@pytest.mark.parametrize("attack", [PGD(epsilon=0.3, steps=3), FGSM(epsilon=0.3)])
def test_pixels_at_box_face_stay_inside_when_gradient_points_out(attack):
    # loss falls with every pixel, so ascent pushes black pixels below 0
    net = _Recorder(64, sign=-1.0)
    x = torch.zeros(8, 1, 8, 8)
    y = torch.zeros(8, dtype=torch.long)  # loss rises with -w . x = -sum(x)
    x_adv = attack(net, x, y)
    assert torch.equal(x_adv, x)
    # the same pixels with room below move down to the ball's face
    x_mid = torch.full((8, 1, 8, 8), 0.5)
    x_adv = clone(attack).set_params(random_start=False)(net, x_mid, y)
    assert torch.allclose(x_adv, torch.full_like(x_mid, 0.2))


# ----------------------------------------------------------------- side effects
def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(4 * 64, 10),
    )


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("attack", [
    PGD(epsilon=0.1, steps=3), PGD(epsilon=0.1, steps=2, restarts=3),
    FGSM(epsilon=0.1), PGD(epsilon=1.0, norm="l2", steps=2),
], ids=["pgd", "pgd-restarts", "fgsm", "pgd-l2"])
@pytest.mark.parametrize("start_mode", ["train", "eval", "mixed"])
def test_attack_leaves_module_untouched(digits_batch, attack, start_mode):
    X, y = digits_batch
    X, y = X[:32], y[:32]
    net = _bn_net()
    net.train()
    net(X)  # give BatchNorm non-trivial running statistics
    if start_mode == "eval":
        net.eval()
    elif start_mode == "mixed":
        net[1].eval()  # a frozen BatchNorm inside a model in train mode
    modes = [m.training for m in net.modules()]
    before = _snapshot(net)
    # some parameters carry a gradient from an earlier backward, others none
    net[0].weight.grad = torch.full_like(net[0].weight, 0.5)
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()}

    seen_modes = []
    hook = net.register_forward_pre_hook(
        lambda m, inp: seen_modes.append([s.training for s in m.modules()])
    )
    try:
        attack(net, X, y)
    finally:
        hook.remove()

    assert seen_modes and all(not any(m) for m in seen_modes), "attack must run in eval mode"
    after = net.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"attack changed {k}"
    for n, p in net.named_parameters():
        if grads[n] is None:
            assert p.grad is None, f"attack created .grad of {n}"
        else:
            assert torch.equal(p.grad, grads[n]), f"attack changed .grad of {n}"
    assert [m.training for m in net.modules()] == modes, "attack did not restore module modes"


def test_attack_restores_mode_after_error(digits_batch):
    X, _ = digits_batch
    net = _bn_net().train()
    with pytest.raises(IndexError):
        PGD(epsilon=0.1, steps=1)(net, X[:4], torch.tensor([0, 1, 2, 99]))
    assert net.training and all(m.training for m in net.modules())


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("cls", [PGD, FGSM])
@pytest.mark.parametrize("params,pattern", [
    ({"epsilon": -0.1}, r"epsilon.*-0\.1"),
    ({"epsilon": float("nan")}, r"epsilon.*nan"),
    ({"epsilon": "big"}, r"epsilon.*'big'"),
    ({"norm": "l3"}, r"norm.*'l3'"),
    ({"norm": "Linf"}, r"norm.*'Linf'"),
    ({"bounds": (1.0, 0.0)}, r"bounds.*\(1\.0, 0\.0\)"),
    ({"bounds": (0.5, 0.5)}, r"bounds.*low < high"),
    ({"bounds": (0.0,)}, r"bounds.*pair.*\(0\.0,\)"),
    ({"bounds": "ab"}, r"bounds.*'ab'"),
    ({"step_size": -1.0}, r"step_size.*-1\.0"),
])
def test_invalid_parameters_raise_at_call(tiny_cnn, digits_batch, cls, params, pattern):
    X, y = digits_batch
    attack = cls(**params)  # __init__ stores, never validates (sklearn convention)
    for k, v in params.items():
        assert getattr(attack, k) is v
    with pytest.raises(ValueError, match=pattern):
        attack(tiny_cnn, X[:4], y[:4])


@pytest.mark.parametrize("params,pattern", [
    ({"steps": 0}, r"steps.*>= 1.*got 0"),
    ({"steps": 2.5}, r"steps.*2\.5"),
    ({"restarts": 0}, r"restarts.*got 0"),
])
def test_invalid_pgd_counts(tiny_cnn, digits_batch, params, pattern):
    X, y = digits_batch
    with pytest.raises(ValueError, match=pattern):
        PGD(**params)(tiny_cnn, X[:4], y[:4])


def test_length_mismatch_raises(tiny_cnn, digits_batch):
    X, y = digits_batch
    with pytest.raises(ValueError, match=r"different lengths: 10 and 9"):
        PGD()(tiny_cnn, X[:10], y[:9])


def test_numpy_input_accepted(tiny_cnn, digits_small):
    _, _, Xte, yte = digits_small
    X64 = Xte[:20].astype(np.float64)
    y32 = yte[:20].astype(np.int32)
    for attack in (PGD(epsilon=0.1, steps=2), FGSM(epsilon=0.1)):
        x_adv = attack(tiny_cnn, X64, y32)
        assert isinstance(x_adv, torch.Tensor)
        assert x_adv.dtype == torch.float32 and tuple(x_adv.shape) == X64.shape
        assert float(_linf(x_adv, torch.as_tensor(X64, dtype=torch.float32)).max()) <= 0.1 + TOL


# ------------------------------------------------------------------ parameters
def test_get_set_params_and_clone():
    pgd = PGD(epsilon=0.2, norm="l2", steps=7, restarts=2, bounds=None)
    assert pgd.get_params() == {
        "epsilon": 0.2, "norm": "l2", "steps": 7, "step_size": None,
        "random_start": True, "restarts": 2, "bounds": None, "loss": "ce",
    }
    assert pgd.set_params(epsilon=0.4, steps=3) is pgd
    assert (pgd.epsilon, pgd.steps) == (0.4, 3)
    other = clone(pgd)
    assert other is not pgd and other.get_params() == pgd.get_params()
    other.set_params(epsilon=0.1)
    assert pgd.epsilon == 0.4
    assert "epsilon=0.4" in repr(pgd)
    with pytest.raises(ValueError):
        pgd.set_params(epsilonn=0.1)

    fgsm = FGSM(epsilon=0.1, norm="l2")
    assert fgsm.get_params() == {
        "epsilon": 0.1, "step_size": None, "random_start": True, "norm": "l2",
        "bounds": (0.0, 1.0),
    }
    assert clone(fgsm).get_params() == fgsm.get_params()
    assert isinstance(pgd, Attack) and isinstance(fgsm, Attack)


def test_default_step_sizes():
    assert PGD(epsilon=0.3, steps=10).step_size_ == pytest.approx(0.075)
    assert PGD(epsilon=0.3, steps=10, step_size=0.01).step_size_ == 0.01
    assert FGSM(epsilon=0.2).step_size_ == pytest.approx(0.25)
    assert FGSM(epsilon=0.2, random_start=False).step_size_ == pytest.approx(0.2)


def test_seeded_attacks_repeat(tiny_cnn, digits_batch):
    X, y = digits_batch
    torch.manual_seed(3)
    a = PGD(epsilon=0.1, steps=2)(tiny_cnn, X[:16], y[:16])
    torch.manual_seed(3)
    b = PGD(epsilon=0.1, steps=2)(tiny_cnn, X[:16], y[:16])
    assert torch.equal(a, b)


# ------------------------------------------------- CUDA graphs: the recording policy
def test_cuda_graph_policy_records_on_the_second_call_and_falls_back_once(monkeypatch):
    """The policy of attacks._graph, run on the CPU with a stand-in for the CUDA
    graph: the first call of a setting runs eagerly, the second records, later ones
    replay; settings are told apart by batch shape and step parameters; at most
    MAX_GRAPHS are kept; a failed recording warns once and runs eagerly after."""
    from robustfit.attacks import _graph

    made = []

    class Recorded(_graph._Graph):
        """The real class with the CUDA parts replaced: recording keeps the
        loop, replaying runs it on the static tensors (epsilon and the step
        size as 0-dim tensors, as in a graph)."""

        def __init__(self, module, *args):
            if getattr(module, "broken", False):
                raise RuntimeError("operation not permitted when stream is capturing")
            self.calls = 0
            super().__init__(module, *args)
            made.append(self)

        def _record(self, run):
            self.run = run

        def _replay(self):
            self.calls += 1
            with torch.enable_grad():
                self.out = self.run(self.delta)

    monkeypatch.setattr(_graph, "_Graph", Recorded)
    monkeypatch.setattr(_graph, "_recordable", lambda x: True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    X, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    attack = PGD(epsilon=0.1, steps=3, random_start=False)
    eager = attack.perturb(net, X, y)
    with _graph.cuda_graphs(True):
        outs = [attack.perturb(net, X, y) for _ in range(3)]
    assert len(made) == 1 and made[0].calls == 2
    assert all(torch.equal(o, eager) for o in outs)
    # the epsilon warm-up: a new epsilon and step size every call replay one graph,
    # with the eager loop's examples (l_inf and l_2)
    for norm in ("linf", "l2"):
        attack.set_params(norm=norm)
        for eps in (0.05, 0.07, 0.2, 0.3):
            attack.set_params(epsilon=eps, step_size=eps / 2)
            with _graph.cuda_graphs(True):
                graphed = attack.perturb(net, X, y)
            assert torch.equal(graphed, attack.perturb(net, X, y)), (norm, eps)
    assert len(made) == 2 and made[0].calls == 2 + 4 and made[1].calls == 3
    attack.set_params(norm="linf", epsilon=0.1, step_size=None)
    _graph.clear_graphs(net)
    made.clear()
    with _graph.cuda_graphs(True):  # a new shape, new steps: new settings
        attack.perturb(net, X[:4], y[:4]), attack.perturb(net, X[:4], y[:4])
        attack.set_params(steps=2)
        for _ in range(2):
            attack.perturb(net, X, y)
        assert len(made) == 2 and len(_graph._GRAPHS[net]) == 2
        for n in (1, 2, 3, 5):  # settings seen once are remembered apart: the graphs stay
            attack.perturb(net, X[:n], y[:n])
        assert len(_graph._GRAPHS[net]) == 2 and len(_graph._SEEN[net]) == 4
        for n in (1, 2):  # seen twice: recorded; the least recently used graph goes
            attack.perturb(net, X[:n], y[:n])
    assert len(made) == 4 and len(_graph._GRAPHS[net]) == _graph.MAX_GRAPHS
    with _graph.cuda_graphs(False):
        attack.perturb(net, X, y)
    assert len(made) == 4  # off: no call reaches the policy
    net.broken = True
    _graph.clear_graphs(net)
    with _graph.cuda_graphs(True):
        attack.perturb(net, X, y)
        with pytest.warns(RuntimeWarning, match="could not record"):
            second = attack.perturb(net, X, y)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            third = attack.perturb(net, X, y)
    reference = attack.perturb(net, X, y)
    assert torch.equal(second, reference) and torch.equal(third, reference)
    _graph.clear_graphs()


def test_cuda_graphs_run_only_the_noiseless_cross_entropy_loop(monkeypatch):
    """Langevin's noisy steps and TRADES' KL attack never reach the recording."""
    from robustfit.attacks import _graph

    seen = []
    monkeypatch.setattr(_graph, "run_graphed", lambda *a, **k: seen.append(a) or None)
    from robustfit.attacks import _steps
    monkeypatch.setattr(_steps, "run_graphed", _graph.run_graphed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    X, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    with _graph.cuda_graphs(True):
        Langevin(epsilon=0.1, steps=2)(net, X, y)
        PGD(epsilon=0.1, steps=2, loss="kl")(net, X, y)
        assert not seen
        PGD(epsilon=0.1, steps=2)(net, X, y)
        FGSM(epsilon=0.1)(net, X, y)
        # restarts attack data-dependent subsets: only the first run may be graphed
        PGD(epsilon=0.1, steps=2, restarts=4)(torch.nn.Sequential(torch.nn.Flatten(),
                                                                  torch.nn.Linear(16, 3)), X, y)
    assert len(seen) == 3


# ------------------------------------------ batch norm: the input's gradient only
@pytest.mark.parametrize("kind", ["1d", "2d", "2d-channels-last", "2d-no-affine", "3d"])
def test_input_grads_only_batchnorm_gives_torch_values_and_input_gradients(kind):
    from robustfit.attacks._base import input_grads_only

    torch.manual_seed(0)
    shapes = {"1d": (6, 5), "2d": (4, 5, 3, 3), "3d": (3, 5, 2, 3, 2)}
    dim = kind[:2]
    layer = {"1d": nn.BatchNorm1d, "2d": nn.BatchNorm2d, "3d": nn.BatchNorm3d}[dim](
        5, affine=kind != "2d-no-affine").double()
    with torch.no_grad():  # running statistics and weights away from 0 and 1
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
        if layer.weight is not None:
            layer.weight.uniform_(-2, 2)
            layer.bias.uniform_(-1, 1)
    layer.eval()
    x = torch.randn(shapes[dim], dtype=torch.float64)
    if kind == "2d-channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    results = []
    for fast in (False, True):
        xi = x.clone().requires_grad_(True)
        with input_grads_only(layer) if fast else contextlib.nullcontext():
            out = layer(xi)
            (grad,) = torch.autograd.grad(out, xi, g)
        results.append((out, grad))
    (out0, grad0), (out1, grad1) = results
    torch.testing.assert_close(out1, out0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad1, grad0, rtol=1e-12, atol=1e-12)
    if kind == "2d-channels-last":
        assert grad1.is_contiguous(memory_format=torch.channels_last)
    assert "forward" not in vars(layer)  # the switch is gone after the block


def test_input_grads_only_leaves_training_layers_and_custom_forwards_alone():
    from robustfit.attacks._base import input_grads_only

    class Custom(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    net = nn.Sequential(nn.BatchNorm2d(3), Custom(3), nn.BatchNorm2d(3))
    net[0].eval(), net[1].eval()  # net[2] stays in train mode
    with input_grads_only(net):
        assert "forward" in vars(net[0])
        assert "forward" not in vars(net[1]) and "forward" not in vars(net[2])
    assert all("forward" not in vars(m) for m in net)


def test_pgd_on_a_batchnorm_network_is_unchanged_by_the_input_gradient_layers():
    """PGD's examples on a network with batch norm equal those of torch's own
    batch-norm backward (float64, same random start)."""
    from robustfit._utils import random_source
    from robustfit.attacks import _base

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 16, 3)).double()
    net[1].running_mean.uniform_(-0.5, 0.5)
    X, y = torch.rand(16, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    attack = PGD(epsilon=0.2, steps=5)
    with random_source(0):
        fast = attack(net, X, y)
    with random_source(0), pytest.MonkeyPatch.context() as mp:
        mp.setattr(_base, "input_grads_only", contextlib.nullcontext)
        native = attack(net, X, y)
    torch.testing.assert_close(fast, native, rtol=0, atol=1e-12)
    assert net.training and all("forward" not in vars(m) for m in net)


# ------------------------------------------------ batch norm folded into convolutions
class _ConvBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, affine=False)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.bn3 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        y = self.conv3(x)
        x = self.bn3(y) + y  # conv3's output has two users: not folded
        return self.head(x.flatten(1))


def _randomize_batchnorm(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)


def test_folded_batchnorm_gives_the_networks_values_and_input_gradients():
    from robustfit.attacks._base import eval_mode
    from robustfit.attacks._fold import _FoldedConvBN, folded

    torch.manual_seed(0)
    net = _ConvBNNet().double()
    _randomize_batchnorm(net)
    fast = folded(net)
    assert fast is not net and sum(isinstance(m, _FoldedConvBN) for m in fast.modules()) == 2
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    outs = []
    for m in (net, fast):
        with eval_mode(m):
            out = m(x)
            (grad,) = torch.autograd.grad(out.square().sum(), x)
        outs.append((out, grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-12, atol=1e-12)
    # parameters are shared, and the folded weights follow updates of the originals
    with torch.no_grad():
        net.conv1.weight.mul_(1.5)
        net.bn1.running_var.mul_(2)
    assert folded(net) is fast
    with eval_mode(net):
        torch.testing.assert_close(fast(x), net(x), rtol=1e-12, atol=1e-12)
    assert net.training  # tracing and attacking left the module's mode alone


def test_folding_leaves_untraceable_hooked_and_plain_modules_alone():
    from robustfit.attacks._fold import folded

    class Branchy(_ConvBNNet):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: symbolic tracing fails
                x = x * 2
            return super().forward(x)

    branchy = Branchy()
    assert folded(branchy) is branchy
    hooked = _ConvBNNet()
    hooked.conv1.register_forward_hook(lambda m, i, o: None)
    assert folded(hooked) is hooked
    late = _ConvBNNet()
    assert folded(late) is not late
    handle = late.bn1.register_forward_hook(lambda m, i, o: None)  # a hook added later
    assert folded(late) is late
    handle.remove()
    assert folded(late) is not late
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert folded(plain) is plain
    net = _ConvBNNet()
    first = folded(net)
    net.conv1.weight = nn.Parameter(net.conv1.weight.detach().clone())  # new storage: traced again
    assert folded(net) is not first


def test_pgd_on_the_folded_network_matches_pgd_on_the_network():
    from robustfit._utils import random_source
    from robustfit.attacks._fold import folded

    torch.manual_seed(0)
    net = _ConvBNNet().double()
    _randomize_batchnorm(net)
    X, y = torch.rand(16, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    attack = PGD(epsilon=0.2, steps=5)
    runs = []
    for m in (net, folded(net)):
        with random_source(0):
            runs.append(attack(m, X, y))
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-12)


def test_a_trace_that_disagrees_with_the_module_on_the_batch_is_not_used(monkeypatch):
    from robustfit.attacks import _fold

    net = _ConvBNNet()
    wrong = _ConvBNNet()  # other weights: what a trace that baked the wrong branch computes
    monkeypatch.setattr(_fold, "_trace", lambda module: wrong)
    assert _fold.folded(net, example=torch.rand(8, 1, 4, 4)) is net
    _fold.release_folded(net)
    monkeypatch.setattr(_fold, "_trace", lambda module: module)
    assert _fold.folded(net, example=torch.rand(8, 1, 4, 4)) is net  # agrees: used
    assert _fold.release_folded(net) is net and _fold.release_folded(net) is None


def test_graph_key_changes_with_forward_hooks():
    from robustfit.attacks._graph import hook_state

    net = _ConvBNNet()
    before = hook_state(net)
    handle = net.conv2.register_forward_pre_hook(lambda m, i: None)
    assert hook_state(net) != before
    handle.remove()
    assert hook_state(net) == before
