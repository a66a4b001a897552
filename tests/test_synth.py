"""GeneratorSynth (Robustness-via-Synthesis) and the Sinkhorn OT term."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone

from robustfit import AdversarialClassifier
from robustfit._ot import _logsumexp, _sinkhorn_divergence
from robustfit.attacks import PGD, GeneratorSynth, perturbation_norm
from robustfit.attacks._base import project, project_differentiable
from robustfit.losses import sinkhorn_cost, sinkhorn_distance
from robustfit.models import MLP, DigitsCNN, MnistCNN, penultimate_layer


@pytest.fixture(scope="module")
def digits_t(digits_small):
    Xtr, ytr, Xte, yte = digits_small
    return torch.as_tensor(Xtr), torch.as_tensor(ytr).long(), torch.as_tensor(Xte), torch.as_tensor(yte).long()


@pytest.mark.parametrize("norm,eps,conditional", [
    ("linf", 0.1, False), ("l2", 0.5, False), ("linf", 0.2, True), ("l2", 1.0, True),
])
def test_perturbations_inside_ball_and_box(std_module, digits_t, norm, eps, conditional):
    X, y = digits_t[0][:200], digits_t[1][:200]
    attack = GeneratorSynth(epsilon=eps, norm=norm, conditional=conditional)
    attack.fit_generator(std_module, X, y, epochs=2, batch_size=64, random_state=0)
    for x_adv in (attack(std_module, X, y), attack.train_perturb(std_module, X, y)):
        assert x_adv.shape == X.shape
        assert float(perturbation_norm(x_adv, X, norm).max()) <= eps * (1 + 1e-5) + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert float(perturbation_norm(x_adv, X, norm).mean()) > 0.2 * eps  # not trivially zero


def test_tabular_default_generator_and_unbounded_inputs():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    X, y = 3 * torch.randn(64, 5), torch.randint(0, 3, (64,))
    attack = GeneratorSynth(epsilon=0.5, bounds=None, conditional=True).fit_generator(net, X, y, epochs=1)
    assert attack.generator_.__class__.__name__ == "_VectorGenerator"
    assert float((attack(net, X, y) - X).abs().max()) <= 0.5 + 1e-6


def test_generator_steps_raise_the_loss_of_a_fixed_classifier(std_module, digits_t):
    X, y = digits_t[0], digits_t[1]
    attack = GeneratorSynth(epsilon=0.2, random_start=False, generator_ce_weight=1.0, generator_lr=1e-2)
    before = {k: v.clone() for k, v in std_module.state_dict().items()}
    torch.manual_seed(0)

    def loss():
        with torch.no_grad():
            return float(F.cross_entropy(std_module(attack(std_module, X, y)), y))

    attack.fit_generator(std_module, X[:64], y[:64], epochs=1, batch_size=64, random_state=0)
    start = loss()
    attack.fit_generator(std_module, X, y, epochs=5, batch_size=100, random_state=1)
    assert loss() > start + 0.1
    for k, v in std_module.state_dict().items():  # the classifier is untouched
        assert torch.equal(v, before[k])


def test_ot_generator_objective_rises(std_module, digits_t):
    """The authors' generator objective (OT only) increases over its steps."""
    X, y = digits_t[0], digits_t[1]
    attack = GeneratorSynth(epsilon=0.2, generator_lr=1e-2)
    attack.fit_generator(std_module, X[:64], y[:64], epochs=1, batch_size=64, random_state=0)
    torch.manual_seed(0)
    first = [float(attack._generator_step(std_module, X[:200], y[:200])) for _ in range(3)]
    attack.fit_generator(std_module, X, y, epochs=5, batch_size=100, random_state=1)
    last = [float(attack._generator_step(std_module, X[:200], y[:200])) for _ in range(3)]
    assert sum(last) > 1.2 * sum(first)


def test_sinkhorn_zero_for_identical_positive_for_different():
    torch.manual_seed(0)
    a = 3 * torch.randn(128, 10)
    assert abs(float(sinkhorn_distance(a, a))) < 1e-5
    assert abs(float(sinkhorn_distance(a, a.clone(), blur=1.0))) < 1e-5
    zeros = torch.zeros(4, 3)  # every point the same: a zero diameter starts the annealing at the blur
    assert float(sinkhorn_distance(zeros, zeros)) == 0.0
    assert float(sinkhorn_distance(zeros[:1], zeros[:3] + 1.0, blur=0.01)) == pytest.approx(1.5, rel=1e-3)
    d = float(sinkhorn_distance(a, a + 0.5 * torch.randn_like(a)))
    assert d > 0.05
    assert float(sinkhorn_distance(a, a + 2.0)) > d  # a shift costs |shift|^2 / 2 per point
    assert float(sinkhorn_distance(a, a + 2.0, blur=0.01)) == pytest.approx(20.0, rel=0.05)
    b = a.clone().requires_grad_(True)
    sinkhorn_distance(a + 1.0, b).backward()
    assert b.grad is not None and float(b.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="blur"):
        sinkhorn_distance(a, a, blur=0)
    with pytest.raises(ValueError, match="feature sizes"):
        sinkhorn_distance(a, a[:, :5])


def _geomloss_divergence(a, b, **kw):
    from geomloss import SamplesLoss  # the reference implementation (robustfit[test])

    return SamplesLoss("sinkhorn", backend="tensorized", **kw)(a, b)


@pytest.mark.parametrize("n,m,d,spread,shift,blur,p,scaling,debias", [
    (64, 64, 10, 5.0, 0.3, 0.1, 2, 0.3, True),    # logits-like clouds, GeneratorSynth's settings
    (64, 64, 10, 5.0, 3.0, 0.1, 2, 0.5, True),    # far apart: many annealing steps
    (40, 70, 7, 1.0, 1.0, 0.5, 2, 0.5, True),     # unequal sizes (padding)
    (40, 70, 7, 1.0, 1.0, 0.5, 1, 0.5, True),     # p = 1
    (30, 30, 3, 2.0, 1.0, 0.05, 2, 0.9, False),   # not debiased
    (25, 15, 3, 0.01, 0.01, 0.1, 2, 0.5, True),   # diameter below the blur: no annealing
])
def test_sinkhorn_distance_is_geomlosss_algorithm(n, m, d, spread, shift, blur, p, scaling, debias):
    """robustfit's solver runs geomloss's algorithm (annealed symmetric Sinkhorn, last
    extrapolation, envelope gradients): in float64 the values and gradients agree to
    1e-9, in float32 to float32's rounding."""
    gen = torch.Generator().manual_seed(n + m)
    a0 = spread * torch.randn(n, d, generator=gen, dtype=torch.float64)
    b0 = spread * torch.randn(m, d, generator=gen, dtype=torch.float64) + shift
    kw = dict(blur=blur, p=p, scaling=scaling, debias=debias)

    def value_and_grads(fn, dtype):
        a, b = a0.to(dtype).requires_grad_(), b0.to(dtype).requires_grad_()
        value = fn(a, b)
        return (value.detach().double(), *(g.double() for g in torch.autograd.grad(value, [a, b])))

    ref = value_and_grads(lambda a, b: _geomloss_divergence(a, b, **kw), torch.float64)
    # the solver itself in float64 (sinkhorn_distance computes in float32)
    ours64 = value_and_grads(lambda a, b: _sinkhorn_divergence(a, b, blur, p, scaling, debias), torch.float64)
    for r, o in zip(ref, ours64):
        assert torch.allclose(o, r, rtol=1e-9, atol=1e-9 * float(r.abs().max())), float((o - r).abs().max())
    ours32 = value_and_grads(lambda a, b: sinkhorn_distance(a, b, **kw), torch.float32)
    assert float(ours32[0]) == pytest.approx(float(ref[0]), rel=1e-4, abs=1e-5)
    for r, o in zip(ref[1:], ours32[1:]):
        assert float((o - r).abs().max()) <= 1e-2 * float(r.abs().max()) + 1e-6


def test_sinkhorn_distance_in_autocast_and_with_trailing_dimensions():
    torch.manual_seed(0)
    a, b = torch.randn(32, 2, 5), torch.randn(32, 2, 5) + 1
    flat = sinkhorn_distance(a.flatten(1), b.flatten(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sinkhorn_distance(a, b)
    assert value.dtype == torch.float32 and float(value) == pytest.approx(float(flat), rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logsumexp_equals_torchs(scale, dtype):
    """The Sinkhorn solvers' log-sum-exp (exponents clamped far below the maximum, a
    saved softmax for the backward pass) is as accurate as torch.logsumexp in value and
    gradient (against a float64 computation, or for float64 inputs torch's own), also when
    most terms underflow (large spreads)."""
    gen = torch.Generator().manual_seed(0)
    x = (scale * torch.randn(4, 50, 60, generator=gen)).to(dtype)
    weights = torch.randn(4, 50, generator=gen).to(dtype)

    def value_and_grad(fn, t):
        t = t.clone().requires_grad_()
        out = fn(t)
        return out.detach(), torch.autograd.grad((out * weights.to(t.dtype)).sum(), t)[0]

    truth = value_and_grad(lambda t: torch.logsumexp(t, dim=2), x.double())
    torchs = value_and_grad(lambda t: torch.logsumexp(t, dim=2), x)
    ours = value_and_grad(lambda t: _logsumexp(t, dim=2), x)
    assert ours[0].dtype == dtype
    for o, t, r in zip(ours, torchs, truth):
        err, torch_err = float((o.double() - r).abs().max()), float((t.double() - r).abs().max())
        assert err <= 2 * torch_err + 1e-12 * float(r.abs().max()), (err, torch_err)
    assert _logsumexp(x.half(), dim=2).dtype == torch.float32  # half precision: computed in float32


@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_project_differentiable_is_project_with_its_gradient(bounds):
    """The generator's projection: project's values, and its gradient (1 where neither
    clamp acts, else 0) without autograd through two clamps."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    weights = torch.randn(16, 1, 8, 8, generator=gen)
    for scale in (0.05, 0.5):
        delta0 = scale * torch.randn(16, 1, 8, 8, generator=gen)
        outs = []
        for fn in (project, project_differentiable):
            delta = delta0.clone().requires_grad_()
            out = fn(x, delta, 0.1, "linf", bounds)
            (grad,) = torch.autograd.grad((out * weights).sum(), delta)
            outs.append((out.detach(), grad))
        assert torch.equal(outs[0][0], outs[1][0])
        assert torch.equal(outs[0][1], outs[1][1])
        assert 0 < float((outs[1][1] == 0).float().mean()) < 1  # some entries clamped, some not
    l2 = project_differentiable(x, delta0.requires_grad_(), 1.0, "l2", bounds)  # l2: autograd's
    assert torch.equal(l2, project(x, delta0, 1.0, "l2", bounds))


def test_pickle_keeps_generator_and_clone_is_fresh(std_module, digits_t):
    X, y = digits_t[0][:128], digits_t[1][:128]
    attack = GeneratorSynth(epsilon=0.1).fit_generator(std_module, X, y, epochs=1, random_state=0)
    restored = pickle.loads(pickle.dumps(attack))
    for p, q in zip(attack.generator_.parameters(), restored.generator_.parameters()):
        assert torch.equal(p, q)
    assert restored.n_generator_steps_ == attack.n_generator_steps_
    assert len(restored.generator_optimizer_.state) > 0
    torch.manual_seed(3)
    a = attack(std_module, X, y)
    torch.manual_seed(3)
    assert torch.equal(a, restored(std_module, X, y))
    fresh = clone(attack)
    assert not hasattr(fresh, "generator_") and fresh.get_params() == attack.get_params()


def test_classifier_pickles_its_generator(digits_t):
    Xtr, ytr = digits_t[0][:300].numpy(), digits_t[1][:300].numpy()
    clf = AdversarialClassifier(
        attack=GeneratorSynth(epsilon=0.1, feature_layer="classifier.2"),
        max_epochs=2, lr=1e-2, random_state=0, train_split=None,
    ).fit(Xtr, ytr)
    gen = clf.attack_.generator_
    assert clf.attack_.n_generator_steps_ > 0 and not hasattr(clf.attack, "generator_")
    assert not clf.module_._forward_hooks and not any(m._forward_hooks for m in clf.module_.modules())
    restored = pickle.loads(pickle.dumps(clf))
    for p, q in zip(gen.parameters(), restored.attack_.generator_.parameters()):
        assert torch.equal(p, q)
    assert not hasattr(clone(clf).attack, "generator_")


def test_feature_layer_uses_the_hooked_representation(std_module, digits_t):
    X, y = digits_t[0][:64], digits_t[1][:64]
    attack = GeneratorSynth(epsilon=0.2, feature_layer="classifier.2")
    x_adv = attack.train_perturb(std_module, X, y)
    with torch.no_grad():
        logits = std_module(x_adv)  # the classifier's pass: the hook records the features
        term = attack.regularizer(std_module, X, x_adv, y, logits)
        feats = std_module.classifier[:3](std_module.features(torch.cat([X, x_adv])))
    assert torch.allclose(term, sinkhorn_distance(feats[:64], feats[64:], blur=0.1, scaling=0.3), atol=1e-5)
    assert not any(m._forward_hooks for m in std_module.modules())
    # during the epsilon warm-up the batch is the clean one: nothing to add
    assert GeneratorSynth(epsilon=0.2).regularizer(std_module, X, X, y, logits) is None


def test_label_smoothing_term_matches_torch(digits_t):
    torch.manual_seed(0)
    logits, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    attack = GeneratorSynth(ot_weight=0.0, label_smoothing=0.3)
    total = F.cross_entropy(logits, y) + attack.regularizer(None, None, None, y, logits)
    assert torch.allclose(total, F.cross_entropy(logits, y, label_smoothing=0.3), atol=1e-6)


def test_digits_model_trained_with_synth_beats_standard_under_pgd(digits_small, std_clf):
    Xtr, ytr, Xte, yte = digits_small
    clf = AdversarialClassifier(
        attack=GeneratorSynth(epsilon=0.1), max_epochs=10, lr=1e-2, random_state=0, train_split=None,
    ).fit(Xtr, ytr)
    pgd = PGD(epsilon=0.1, steps=20)
    robust = clf.robust_score(Xte, yte, attack=pgd, check=False)
    standard = std_clf.robust_score(Xte, yte, attack=pgd, check=False)
    assert clf.score(Xte, yte) > 0.85
    assert robust > standard + 0.1


@pytest.mark.parametrize("params,match", [
    ({"epsilon": -0.1}, "epsilon"),
    ({"norm": "l1"}, "norm"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"generator_lr": 0}, "generator_lr"),
    ({"ot_weight": -1}, "ot_weight"),
    ({"ot_blur": 0.0}, "ot_blur"),
    ({"ot_scaling": 1.0}, "ot_scaling"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"feature_layer": 3}, "feature_layer"),
    ({"conditional": "yes"}, "conditional"),
    ({"generator": "big"}, "generator"),
    ({"ot_method": "emd"}, "ot_method"),
    ({"ot_reg": 0.0}, "ot_reg"),
    ({"ot_iterations": 0}, "ot_iterations"),
    ({"generator_optimizer": "rmsprop"}, "generator_optimizer"),
    ({"generator_step_mode": "training"}, "generator_step_mode"),
    ({"squash": "sigmoid"}, "squash"),
    ({"generator_width": 0}, "generator_width"),
])
def test_bad_parameters_raise(std_module, digits_t, params, match):
    X, y = digits_t[0][:8], digits_t[1][:8]
    with pytest.raises(ValueError, match=match):
        GeneratorSynth(**params)(std_module, X, y)


def test_unknown_feature_layer_and_bad_generator(std_module, digits_t):
    X, y = digits_t[0][:16], digits_t[1][:16]
    with pytest.raises(ValueError, match="feature_layer='nope' is not a submodule"):
        GeneratorSynth(feature_layer="nope").fit_generator(std_module, X, y)
    bad = torch.nn.Sequential(torch.nn.Linear(64, 10))  # wrong output shape
    with pytest.raises(ValueError, match="shape"):
        GeneratorSynth(generator=bad).fit_generator(std_module, X, y)


def test_user_generator_is_copied_not_trained(std_module, digits_t):
    X, y = digits_t[0][:64], digits_t[1][:64]
    gen = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Unflatten(1, (1, 8, 8)))
    before = [p.clone() for p in gen.parameters()]
    attack = GeneratorSynth(epsilon=0.1, generator=gen).fit_generator(std_module, X, y, epochs=2)
    assert all(torch.equal(p, q) for p, q in zip(gen.parameters(), before))
    assert not all(torch.equal(p, q) for p, q in zip(attack.generator_.parameters(), before))


def test_train_perturb_reuses_the_generator_steps_batch(std_module, digits_t):
    """One generator forward pass per training batch: the classifier gets the
    batch the generator step was computed on (a fresh one on skipped steps)."""
    X, y = digits_t[0][:64], digits_t[1][:64]
    attack = GeneratorSynth(epsilon=0.2, generator_every=2)
    attack.fit_generator(std_module, X, y, epochs=1, batch_size=64, random_state=0)
    calls = []
    attack.generator_.register_forward_hook(lambda m, i, o: calls.append(o.detach().clone()))
    for _ in range(2):
        before = attack.n_generator_steps_
        x_adv = attack.train_perturb(std_module, X, y)
        assert len(calls) == 1
        raw = calls.pop()
        # x_adv was built from the only generator output of this call
        if attack.n_generator_steps_ > before:
            assert not x_adv.requires_grad
        inside = (x_adv > 1e-4) & (x_adv < 1 - 1e-4)
        assert float((x_adv - X)[inside].abs().max()) <= 0.2 + 1e-6 and raw.shape == X.shape
    assert attack.n_generator_steps_ == 2  # fit_generator's step + one of the two batches


# --------------------------------------------------------------------------
# the authors' recipe, option by option (issue 16)
# --------------------------------------------------------------------------
class _FixedGenerator(torch.nn.Module):
    """Returns the same raw perturbation for every z."""

    def __init__(self, raw):
        super().__init__()
        self.raw = torch.nn.Parameter(raw)

    def forward(self, z):
        return self.raw.expand(z.shape[0], *self.raw.shape)


@pytest.mark.parametrize("squash", ["clip", "tanh"])
def test_squash_clip_is_a_clip_and_tanh_is_not(squash):
    eps = 0.1
    raw = torch.tensor([0.05, -0.05, 0.3, -2.0]).view(1, 2, 2)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    X, y = torch.full((6, 1, 2, 2), 0.5), torch.zeros(6, dtype=torch.long)
    attack = GeneratorSynth(epsilon=eps, squash=squash, random_start=False, generator=_FixedGenerator(raw))
    delta = attack(net, X, y) - X
    assert float(delta.abs().max()) <= eps + 1e-6
    expected = raw.clamp(-eps, eps) if squash == "clip" else eps * torch.tanh(raw)
    assert torch.allclose(delta, expected.expand_as(delta), atol=1e-6)
    if squash == "clip":  # inside the ball the output passes unchanged; outside it sits on the boundary
        assert torch.allclose(delta[0].flatten(), torch.tensor([0.05, -0.05, 0.1, -0.1]), atol=1e-6)
    else:
        assert float(delta[0].flatten()[0]) < 0.01  # tanh shrinks a small output 10x at this scale


def test_penultimate_layer_of_robustfit_networks():
    assert penultimate_layer(MnistCNN()) == "classifier.3"
    assert penultimate_layer(MLP(4, hidden=(8, 6))) == "net.5"
    with pytest.raises(ValueError, match="no torch.nn.Linear.*feature_layer"):
        penultimate_layer(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()))
    resnet = pytest.importorskip("torchvision") and __import__("robustfit.models", fromlist=["ResNet18"]).ResNet18()
    assert penultimate_layer(resnet) == "fc"


def test_penultimate_features_feed_the_ot_term(std_module, digits_t):
    X, y = digits_t[0][:64], digits_t[1][:64]
    attack = GeneratorSynth(epsilon=0.2, feature_layer="penultimate")
    f, logits = attack._features(std_module, X)
    assert f.shape == (64, std_module.classifier[3].in_features) and logits.shape == (64, 10)
    x_adv = attack.train_perturb(std_module, X, y)
    with torch.no_grad():
        logits = std_module(x_adv)  # the classifier's pass: the hook records the features
        term = attack.regularizer(std_module, X, x_adv, y, logits)
        feats = std_module.classifier[:3](std_module.features(torch.cat([X, x_adv])))
    assert torch.allclose(term, sinkhorn_distance(feats[:64], feats[64:], blur=0.1, scaling=0.3), atol=1e-5)
    assert not any(m._forward_hooks for m in std_module.modules())


def _kernel_sinkhorn(a, b, reg, n_iter):
    """Independent reference: Sinkhorn's scaling form, float64, u updated first."""
    a, b = a.double(), b.double()
    C = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    K = torch.exp(-C / reg)
    mu, nu = torch.full((a.shape[0],), 1 / a.shape[0], dtype=torch.float64), \
        torch.full((b.shape[0],), 1 / b.shape[0], dtype=torch.float64)
    v = torch.ones_like(nu)
    for _ in range(n_iter):
        u = mu / (K @ v)
        v = nu / (K.T @ u)
    return float((u[:, None] * K * v[None, :] * C).sum())


def test_sinkhorn_cost_equals_an_independent_computation():
    torch.manual_seed(0)
    a = torch.randn(12, 3)
    b = a[:9] + 0.4 * torch.randn(9, 3)
    for reg, n_iter in [(0.5, 100), (0.2, 7), (1.0, 1)]:
        assert float(sinkhorn_cost(a.double(), b.double(), reg=reg, n_iter=n_iter)) == pytest.approx(
            _kernel_sinkhorn(a, b, reg, n_iter), rel=1e-5)  # float32 inside
    # not debiased: identical batches cost more than zero; a shift costs |shift|^2 per point
    assert float(sinkhorn_cost(a, a, reg=0.5)) > 0.05
    assert float(sinkhorn_cost(torch.zeros(5, 2), torch.full((5, 2), 2.0))) == pytest.approx(8.0, rel=1e-5)
    # a shift by 3 in 3-d costs 27 exactly; at the authors' 0.01, 100 iterations are far from
    # converged (20.9 here), 2,000 iterations get there
    assert float(sinkhorn_cost(a, a + 3.0)) < 0.8 * 27
    assert float(sinkhorn_cost(a, a + 3.0, n_iter=2000)) == pytest.approx(27.0, rel=1e-3)
    x = b.clone().requires_grad_(True)
    sinkhorn_cost(a, x).backward()
    assert float(x.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="reg"):
        sinkhorn_cost(a, b, reg=0)
    with pytest.raises(ValueError, match="n_iter"):
        sinkhorn_cost(a, b, n_iter=0)
    with pytest.raises(ValueError, match="feature sizes"):
        sinkhorn_cost(a, b[:, :2])


def test_ot_method_sinkhorn_is_the_regularizer(std_module, digits_t):
    X, y = digits_t[0][:32], digits_t[1][:32]
    attack = GeneratorSynth(epsilon=0.2, ot_method="sinkhorn", ot_reg=0.05, ot_iterations=20)
    x_adv = attack.train_perturb(std_module, X, y)
    with torch.no_grad():
        logits = std_module(x_adv)
        term = attack.regularizer(std_module, X, x_adv, y, logits)
        expected = sinkhorn_cost(std_module(X), logits, reg=0.05, n_iter=20)
    assert torch.allclose(term, expected, rtol=1e-5)


class _BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8),
                                        torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 3)
        self.modes = []
        self.body.register_forward_pre_hook(lambda m, i: self.modes.append(m[2].training))

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_generator_step_mode_and_optimizer(mode):
    torch.manual_seed(0)
    net = _BNNet().eval()
    X, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    stats = net.body[2].running_mean.clone()
    attack = GeneratorSynth(epsilon=0.1, generator_step_mode=mode, generator_optimizer="sgd",
                            generator_lr=0.01, feature_layer="penultimate")
    attack.fit_generator(net, X, y, epochs=1, batch_size=32)
    opt = attack.generator_optimizer_
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["lr"] == 0.01
    assert len(net.modes) == 2 and all(m == (mode == "train") for m in net.modes)  # clean and synthesized pass
    assert not net.training and not net.body[2].training  # the caller's mode is restored
    # the train-mode passes update batch-norm statistics; fit_generator puts them back, so
    # attacking a fixed model leaves it as it was (test_fit_generator_leaves_...)
    assert torch.equal(stats, net.body[2].running_mean)
    assert isinstance(GeneratorSynth().fit_generator(net, X, y).generator_optimizer_, torch.optim.Adam)
    attack.set_params(generator_optimizer="adam").fit_generator(net, X, y, epochs=1, batch_size=32)
    assert isinstance(attack.generator_optimizer_, torch.optim.Adam)  # switched after fit


def test_published_preset_and_a_short_fit(digits_small):
    attack = GeneratorSynth.published(0.1)
    params = attack.get_params()
    assert params["ot_method"] == "sinkhorn" and params["ot_reg"] == 0.01 and params["ot_iterations"] == 100
    assert params["feature_layer"] == "penultimate" and params["squash"] == "clip"
    assert params["generator_optimizer"] == "sgd" and params["generator_lr"] == 0.01
    assert params["generator_step_mode"] == "train" and params["latent_dim"] == 640
    assert params["label_smoothing"] == pytest.approx(5 / 9)
    assert params["resample"] is True and GeneratorSynth().resample is False
    # 0.5 in the authors' convention: half the mass stays on the true class
    assert GeneratorSynth.published(n_classes=4).label_smoothing == pytest.approx(2 / 3)
    assert GeneratorSynth.published(0.2, ot_weight=0.5).ot_weight == 0.5
    with pytest.raises(ValueError, match="n_classes"):
        GeneratorSynth.published(n_classes=1)
    Xtr, ytr, Xte, yte = digits_small
    clf = AdversarialClassifier(attack=attack, max_epochs=2, lr=1e-2, random_state=0,
                                train_split=None, attack_warmup=0).fit(Xtr[:256], ytr[:256])
    fitted = clf.attack_
    assert fitted.n_generator_steps_ == 4 and isinstance(fitted.generator_optimizer_, torch.optim.SGD)
    assert fitted.generator_.fc.in_features == 640 and fitted.generator_.c0 == 64
    assert all(torch.isfinite(torch.tensor(clf.history[:, "train_loss"])))
    assert not any(m._forward_hooks for m in clf.module_.modules())
    X = torch.as_tensor(Xte[:50])
    x_adv = fitted(clf.module_, X, torch.as_tensor(yte[:50]).long())
    assert float((x_adv - X).abs().max()) <= 0.1 + 1e-6


def test_label_smoothing_on_the_attack_or_the_criterion(digits_small):
    """The attack's ``label_smoothing`` and the classifier's ``criterion__label_smoothing``
    train the same model (``ot_weight=0``: the smoothed cross-entropy alone)."""
    Xtr, ytr, _, _ = digits_small
    kw = dict(max_epochs=2, lr=1e-2, random_state=0, train_split=None, batch_size=100, attack_warmup=0)
    a = AdversarialClassifier(attack=GeneratorSynth(epsilon=0.1, ot_weight=0.0, label_smoothing=0.5), **kw)
    b = AdversarialClassifier(attack=GeneratorSynth(epsilon=0.1, ot_weight=0.0),
                              criterion__label_smoothing=0.5, **kw)
    la = a.fit(Xtr[:300], ytr[:300]).history[-1, "train_loss"]
    lb = b.fit(Xtr[:300], ytr[:300]).history[-1, "train_loss"]
    assert la == pytest.approx(lb, rel=1e-4)
    c = AdversarialClassifier(attack=GeneratorSynth(epsilon=0.1, ot_weight=0.0), **kw)
    assert abs(c.fit(Xtr[:300], ytr[:300]).history[-1, "train_loss"] - la) > 0.01


def test_train_mode_generator_step_shares_the_classifiers_forward_pass(digits_small):
    """generator_step_mode="train": one forward pass of the synthesized batch and one of
    the clean batch per training batch (four in "eval" mode), and on a network without
    batch-norm or dropout the same training as "eval" mode."""
    Xtr, ytr, _, _ = digits_small
    fits = {}
    for mode in ("eval", "train"):
        calls = []
        torch.manual_seed(0)
        clf = AdversarialClassifier(
            DigitsCNN(), attack=GeneratorSynth(epsilon=0.1, generator_step_mode=mode, generator_ce_weight=0.5,
                                  feature_layer="penultimate"),
            max_epochs=2, lr=1e-2, random_state=0, train_split=None, attack_warmup=0, batch_size=100,
        )
        clf.initialize()
        clf.module_.register_forward_hook(lambda m, i, o, calls=calls: calls.append(i[0].shape[0]))
        fits[mode] = clf.partial_fit(Xtr[:300], ytr[:300]), len(calls)
    (a, n_eval), (b, n_train) = fits["eval"], fits["train"]
    assert n_eval == 4 * 6 and n_train == 2 * 6  # 2 epochs of 3 batches
    assert a.attack_.n_generator_steps_ == b.attack_.n_generator_steps_ == 6
    for p, q in zip(a.attack_.generator_.parameters(), b.attack_.generator_.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    for p, q in zip(a.module_.parameters(), b.module_.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    assert not any(m._forward_hooks for m in b.module_.modules() if m is not b.module_)
    assert "_pending" not in vars(b.attack_)


def test_shared_step_backpropagates_to_the_weights_only(digits_small, monkeypatch):
    """The shared step's synthesized batch requires a gradient (for the generator);
    the classifier's backward pass goes to its weights only, so that batch gets
    no gradient (the first layer's gradient with respect to its input is skipped)."""
    Xtr, ytr, _, _ = digits_small
    attack = GeneratorSynth(epsilon=0.1, generator_step_mode="train")
    batches = []
    perturb = GeneratorSynth.train_perturb

    def record(self, module, x, y):
        x_adv = perturb(self, module, x, y)
        batches.append(x_adv)
        return x_adv

    monkeypatch.setattr(GeneratorSynth, "train_perturb", record)
    clf = AdversarialClassifier(DigitsCNN(), attack=attack, max_epochs=1, random_state=0,
                                train_split=None, attack_warmup=0, batch_size=100)
    clf.partial_fit(Xtr[:200], ytr[:200])
    assert len(batches) == 2 and all(b.requires_grad and b.grad is None for b in batches)
    assert all(p.grad is not None for p in clf.module_.parameters())
    assert clf.attack_.n_generator_steps_ == 2


def test_resample_draws_the_classifiers_batch_from_the_updated_generator(digits_small):
    """resample=True (the authors' alternation): the generator steps, then the
    classifier's batch is drawn again from the updated generator (two generator
    forward passes per batch); the default reuses the generator step's batch (one)."""
    Xtr, ytr, _, _ = digits_small
    seen = {}
    for resample in (False, True):
        attack = GeneratorSynth(epsilon=0.1, generator_step_mode="train", resample=resample)
        clf = AdversarialClassifier(DigitsCNN(), attack=attack, max_epochs=1, random_state=0,
                                    train_split=None, attack_warmup=0, batch_size=100)
        clf.initialize()
        gen_calls, clf_inputs = [], []
        clf.module_.register_forward_pre_hook(lambda m, i, out=clf_inputs: out.append(i[0].detach().clone()))
        clf.partial_fit(Xtr[:100], ytr[:100])  # builds the generator on the first batch
        clf.attack_.generator_.register_forward_hook(
            lambda m, i, o, out=gen_calls: out.append(o.detach().clone()))
        clf_inputs.clear()
        clf.partial_fit(Xtr[:100], ytr[:100])
        seen[resample] = gen_calls, clf_inputs
        assert clf.attack_.n_generator_steps_ == 2
    gens, inputs = seen[False]
    assert len(gens) == 1 and len(inputs) == 2  # shared step: the synthesized and the clean pass
    gens, inputs = seen[True]
    assert len(gens) == 2  # the step's sample, then a fresh one from the updated generator
    # the generator step's own passes (clean, synthesized), then the classifier's
    # (synthesized, clean): the classifier's synthesized batch is not the step's
    assert len(inputs) == 4
    assert not torch.allclose(inputs[1], inputs[2])


def test_fold_transposed_convolution_is_torchs():
    """The generator's last layer computes its CPU forward pass as a matrix product
    and a fold: the same values and gradients as torch.nn.ConvTranspose2d."""
    from robustfit.models import _FoldConvTranspose2d

    for c_in, c_out, k, stride, pad, out_pad, bias in [(8, 1, 4, 2, 1, 0, True), (3, 5, 3, 2, 1, 1, False),
                                                       (4, 2, 3, 1, 0, 0, True)]:
        torch.manual_seed(0)
        fold = _FoldConvTranspose2d(c_in, c_out, k, stride=stride, padding=pad, output_padding=out_pad, bias=bias)
        ref = torch.nn.ConvTranspose2d(c_in, c_out, k, stride=stride, padding=pad, output_padding=out_pad,
                                       bias=bias)
        ref.load_state_dict(fold.state_dict())
        x = torch.randn(6, c_in, 7, 5, requires_grad=True)
        out, expected = fold(x), ref(x)
        assert out.shape == expected.shape and torch.allclose(out, expected, atol=1e-5)
        g = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, [x, *fold.parameters()], g),
                        torch.autograd.grad(expected, [x, *ref.parameters()], g)):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_fold_layer_under_cpu_autocast_trains_like_torchs():
    """Under bf16 CPU autocast the fold layer hands over to torch's own kernel: GeneratorSynth
    trains with amp="bf16" on the CPU (the fold's backward got mixed dtypes and failed)."""
    from robustfit.models import _FoldConvTranspose2d

    torch.manual_seed(0)
    fold = _FoldConvTranspose2d(8, 1, 4, stride=2, padding=1)
    ref = torch.nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)
    ref.load_state_dict(fold.state_dict())
    x = torch.randn(4, 8, 14, 14, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = fold(x), ref(x)
    assert out.dtype == expected.dtype and torch.equal(out, expected)
    out.sum().backward()
    X = torch.rand(32, 1, 28, 28).numpy()
    y = (torch.arange(32) % 10).numpy()
    clf = AdversarialClassifier(MnistCNN, attack=GeneratorSynth(epsilon=0.1, generator_step_mode="train"),
                                amp="bf16", max_epochs=1, batch_size=16, train_split=None,
                                random_state=0).fit(X, y)
    assert np.isfinite(clf.history[-1, "train_loss"])


@pytest.mark.parametrize("module", ["robustfit._ot", "robustfit.attacks.synth", "robustfit.models"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_feature_layer_with_awp_records_the_training_pass(digits_small, mode, monkeypatch):
    """AWP forwards the synthesized batch (at perturbed weights, its graph then used)
    between the attack and the training pass; the penultimate features the OT term takes
    must be those of the training pass. Before, the hook recorded AWP's pass and the fit
    failed ("Trying to backward through the graph a second time"). The same fit with the
    recording turned off (the features recomputed in the regularizer) trains alike."""
    from robustfit.recipes import AWP

    X, y = digits_small[:2]

    def fit():
        return AdversarialClassifier(
            attack=GeneratorSynth(epsilon=0.1, feature_layer="penultimate", latent_dim=16,
                                  generator_step_mode=mode),
            awp=AWP(gamma=5e-3), max_epochs=1, batch_size=64, train_split=None,
            random_state=0, device="cpu").fit(X[:256], y[:256])

    recorded = fit()
    monkeypatch.setattr(GeneratorSynth, "before_training_forward", lambda self, module: None)
    recomputed = fit()
    np.testing.assert_allclose(recorded.history[:, "train_loss"],
                               recomputed.history[:, "train_loss"], rtol=1e-5)
    for a, b in zip(recorded.module_.parameters(), recomputed.module_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fit_generator_leaves_the_attacked_model_unchanged(digits_t):
    """generator_step_mode="train" (published()'s) runs the classifier in train mode, which
    moved its BatchNorm statistics (logits changed by up to 0.055 before): the module's
    parameters, buffers and mode are as they were."""
    X, y = digits_t[0][:256], digits_t[1][:256]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(256, 10)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    logits = net(X[:32]).detach()
    GeneratorSynth.published(0.1, n_classes=10, latent_dim=16).fit_generator(
        net, X, y, epochs=1, batch_size=64, random_state=0)
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(net(X[:32]).detach(), logits)
