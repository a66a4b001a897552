"""Langevin perturbations and primal-dual training (DALE, Robey et al. 2021),
TRADES, and the KL-maximizing PGD."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD, Langevin
from robustfit.attacks.langevin import _log1m_potential
from robustfit.losses import TRADES, PrimalDual, dale_recipe, kl_divergence

FAST = dict(lr=1e-2, random_state=0, train_split=None)


def _weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def batch(digits_small):
    Xtr, ytr, _, _ = digits_small
    return torch.as_tensor(Xtr[:64]), torch.as_tensor(ytr[:64]).long()


class _Constant(torch.nn.Module):
    """Logits that do not depend on the input: every input gradient is zero."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 10) + 0 * x.flatten(1).sum(1, keepdim=True)


# ------------------------------------------------------------- the sampler
@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
@pytest.mark.parametrize("potential", ["ce", "log1m"])
def test_langevin_samples_stay_in_ball_and_box(std_module, batch, norm, eps, noise, potential):
    x, y = batch
    # a high temperature: the noise alone would leave the ball without the projection
    att = Langevin(epsilon=eps, norm=norm, steps=5, temperature=1.0, noise=noise,
                   potential=potential)
    x_adv = att(std_module, x, y)
    d = (x_adv - x).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(dist.max()) <= eps + 1e-5
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(dist.mean()) > 0.3 * eps  # it moved


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
@pytest.mark.parametrize("random_start", [True, False])
def test_langevin_at_zero_temperature_is_exactly_pgd(std_module, batch, norm, eps, random_start):
    x, y = batch
    kw = dict(epsilon=eps, norm=norm, steps=4, random_start=random_start)
    torch.manual_seed(3)
    pgd = PGD(**kw)(std_module, x, y)
    for noise in ("gaussian", "laplace"):
        torch.manual_seed(3)
        lmc = Langevin(temperature=0.0, noise=noise, **kw)(std_module, x, y)
        assert torch.equal(lmc, pgd)
    torch.manual_seed(3)
    hot = Langevin(temperature=1e-2, **kw)(std_module, x, y)
    assert not torch.equal(hot, pgd)  # the comparison can fail


def test_langevin_noise_scales(batch):
    """With a zero gradient only the noise moves the iterate: Gaussian noise has
    standard deviation sqrt(2 * step * T); Laplace noise inside the sign gives
    +-step with probability 1/2 each."""
    x, y = batch
    x = x.repeat(8, 1, 1, 1)
    y = y.repeat(8)
    module = _Constant()
    T, step = 0.02, 0.05
    gauss = Langevin(epsilon=10.0, steps=1, step_size=step, temperature=T, noise="gaussian",
                     random_start=False, bounds=None)
    torch.manual_seed(0)
    d = gauss(module, x, y) - x
    assert gauss.noise_scale_ == pytest.approx(math.sqrt(2 * step * T))
    assert float(d.std()) == pytest.approx(math.sqrt(2 * step * T), rel=0.02)
    assert abs(float(d.mean())) < 2e-3
    lap = Langevin(epsilon=10.0, steps=1, step_size=step, temperature=T, noise="laplace",
                   random_start=False, bounds=None)
    torch.manual_seed(0)
    d = lap(module, x, y) - x
    torch.testing.assert_close(d.abs(), torch.full_like(d, step))
    assert float((d > 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_log1m_potential_is_stable_and_correct():
    logits = torch.tensor([[2.0, 0.5, -1.0], [40.0, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    got = _log1m_potential(logits, y)
    p = torch.softmax(logits.double(), 1)
    # log(1 - p_y) computed in float64 for the first row, by its expansion for the second
    want = math.log(1 - float(p[0, 0])) + math.log(2.0) - 40.0
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert torch.isfinite(got)


def test_langevin_ascends_the_potential(std_module, batch):
    x, y = batch
    for potential in ("ce", "log1m"):
        x_adv = Langevin(epsilon=0.2, steps=5, temperature=1e-6, potential=potential)(
            std_module, x, y)
        with torch.no_grad():
            assert F.cross_entropy(std_module(x_adv), y) > F.cross_entropy(std_module(x), y) + 1


def test_pgd_kl_loss_maximizes_the_kl(std_module, batch):
    x, y = batch
    with torch.no_grad():
        clean = std_module(x)
    torch.manual_seed(0)
    kl_adv = PGD(epsilon=0.2, steps=5, loss="kl")(std_module, x, y)
    noise = (x + (torch.rand_like(x) * 2 - 1) * 0.2).clamp(0, 1)
    with torch.no_grad():
        kl_attack = kl_divergence(clean, std_module(kl_adv))
        kl_noise = kl_divergence(clean, std_module(noise))
    assert float((kl_adv - x).abs().max()) <= 0.2 + 1e-6
    assert kl_attack > 10 * kl_noise


@pytest.mark.parametrize("make,pattern", [
    (lambda: Langevin(temperature=-1.0), r"temperature must be .*got -1.0"),
    (lambda: Langevin(temperature=float("nan")), r"temperature must be"),
    (lambda: Langevin(noise="cauchy"), r"noise must be one of .*'cauchy'"),
    (lambda: Langevin(potential="dlr"), r"potential must be one of .*'dlr'"),
    (lambda: Langevin(steps=0), r"steps must be an integer >= 1, got 0"),
    (lambda: Langevin(norm="l1"), r"norm must be one of .*'l1'"),
    (lambda: Langevin(step_size=-0.1), r"step_size must be .*-0.1"),
    (lambda: PGD(loss="hinge"), r"loss must be one of .*'hinge'"),
])
def test_attack_parameter_errors(std_module, batch, make, pattern):
    x, y = batch
    with pytest.raises(ValueError, match=pattern):
        make()(std_module, x, y)


@pytest.mark.parametrize("objective,pattern", [
    (PrimalDual(margin=-0.1), r"margin must be .*got -0.1"),
    (PrimalDual(dual_lr="fast"), r"dual_lr must be .*'fast'"),
    (PrimalDual(robust_loss="mse"), r"robust_loss must be one of .*'mse'"),
    (PrimalDual(update="step"), r"update must be one of .*'step'"),
    (PrimalDual(nu_init=-1), r"nu_init must be .*got -1"),
    (TRADES(beta=-1.0), r"beta must be .*got -1.0"),
    ("trades", r"objective must be None or an instance of Objective"),
])
def test_objective_parameter_errors(digits_small, objective, pattern):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(attack=Langevin(epsilon=0.1, steps=1), objective=objective,
                                max_epochs=1)
    with pytest.raises(ValueError, match=pattern):
        clf.fit(Xtr[:50], ytr[:50])


# ------------------------------------------------------------ the dual step
class _Net:
    """The one method of the classifier an objective calls."""

    @staticmethod
    def get_loss(logits, y, training=True):
        return F.cross_entropy(logits, y)


def _logits_with_loss(loss, n=4, k=3):
    """Logits whose cross-entropy with class 0 is exactly ``loss``."""
    # p_0 = exp(-loss); the other classes share the rest equally
    p0 = math.exp(-loss)
    rest = (1 - p0) / (k - 1)
    row = torch.log(torch.tensor([p0] + [rest] * (k - 1)))
    return row.expand(n, k).clone(), torch.zeros(n, dtype=torch.long)


def test_dual_variable_rises_above_margin_and_falls_to_zero_below():
    obj = PrimalDual(margin=0.5, dual_lr=0.1)
    obj.validate_params()
    obj.reset()
    high, y = _logits_with_loss(1.5)
    nus = []
    for _ in range(5):
        obj.loss(_Net, high, y, high)
        nus.append(obj.nu_)
    np.testing.assert_allclose(nus, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-5)  # + 0.1 * (1.5 - 0.5)
    values = obj.on_epoch_end()
    assert values["dual_nu"] == pytest.approx(0.5) and values["clean_loss"] == pytest.approx(1.5)
    low, y = _logits_with_loss(0.1)
    nus = []
    for _ in range(20):
        obj.loss(_Net, low, y, low)
        nus.append(obj.nu_)
    assert nus[0] == pytest.approx(0.5 - 0.04, rel=1e-5)  # + 0.1 * (0.1 - 0.5)
    assert all(a >= b for a, b in zip(nus, nus[1:]))
    assert nus[-1] == 0.0  # projected onto nu >= 0, not negative


def test_dual_loss_is_robust_plus_nu_times_clean():
    obj = PrimalDual(margin=0.0, dual_lr=0.0, nu_init=2.5)
    obj.reset()
    clean, y = _logits_with_loss(0.3)
    adv, _ = _logits_with_loss(1.2)
    assert float(obj.loss(_Net, adv, y, clean)) == pytest.approx(1.2 + 2.5 * 0.3, rel=1e-5)
    obj = PrimalDual(margin=0.0, dual_lr=0.0, nu_init=0.5, robust_loss="kl")
    obj.reset()
    want = float(kl_divergence(clean, adv)) + 0.5 * 0.3
    assert float(obj.loss(_Net, adv, y, clean)) == pytest.approx(want, rel=1e-5)


def test_dual_update_per_epoch():
    obj = PrimalDual(margin=0.5, dual_lr=0.1, update="epoch")
    obj.reset()
    for loss in (1.0, 2.0):
        logits, y = _logits_with_loss(loss)
        obj.loss(_Net, logits, y, logits)
        assert obj.nu_ == 0.0  # unchanged within the epoch
    values = obj.on_epoch_end()
    assert values["dual_nu"] == pytest.approx(0.1 * (1.5 - 0.5), rel=1e-5)


def test_trades_equals_its_formula():
    clean, y = _logits_with_loss(0.3)
    adv, _ = _logits_with_loss(1.2)
    want = 0.3 + 6.0 * float(kl_divergence(clean, adv))
    assert float(TRADES(beta=6.0).loss(_Net, adv, y, clean)) == pytest.approx(want, rel=1e-5)
    assert TRADES(beta=0).needs_adv is False and TRADES(beta=1).needs_adv is True


# ------------------------------------------------------------ in training
def test_trades_beta_zero_is_clean_training(digits_small):
    Xtr, ytr, _, _ = digits_small
    kw = dict(max_epochs=2, **FAST)
    clean = AdversarialClassifier(**kw).fit(Xtr, ytr)
    trades0 = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), objective=TRADES(beta=0.0),
                                    **kw).fit(Xtr, ytr)
    assert _weights_equal(clean.module_, trades0.module_)
    trades1 = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), objective=TRADES(beta=1.0),
                                    **kw).fit(Xtr, ytr)
    assert not _weights_equal(clean.module_, trades1.module_)


def test_primal_dual_with_zero_nu_and_temperature_is_pgd_training(digits_small):
    """nu fixed at 0 and T = 0 is PGD training: the same robust loss, gradient
    and updates (the extra clean forward pass changes nothing in a network
    without BatchNorm or dropout)."""
    Xtr, ytr, _, _ = digits_small
    kw = dict(max_epochs=2, **FAST)
    pgd = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), **kw).fit(Xtr, ytr)
    dale = AdversarialClassifier(attack=Langevin(epsilon=0.1, steps=2, temperature=0.0),
                                 objective=PrimalDual(margin=100.0, dual_lr=1.0),
                                 **kw).fit(Xtr, ytr)
    for a, b in zip(pgd.module_.parameters(), dale.module_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert list(dale.history[:, "dual_nu"]) == [0.0, 0.0]


@pytest.fixture(scope="module")
def dale_clf(digits):
    X, y = digits
    return AdversarialClassifier(
        attack=Langevin(epsilon=0.2, steps=3, temperature=1e-3),
        objective=PrimalDual(margin=0.3, dual_lr=0.05), max_epochs=15, **FAST,
    ).fit(X[:1200], y[:1200])


def test_dale_beats_standard_training_under_pgd(dale_clf, digits):
    X, y = digits
    Xte, yte = X[1200:1500], y[1200:1500]
    std = AdversarialClassifier(max_epochs=15, **FAST).fit(X[:1200], y[:1200])
    evaluation = PGD(epsilon=0.2, steps=10)
    torch.manual_seed(0)
    r_std = std.robust_score(Xte, yte, attack=evaluation, check=False)
    torch.manual_seed(0)
    r_dale = dale_clf.robust_score(Xte, yte, attack=evaluation, check=False)
    assert dale_clf.score(Xte, yte) > 0.8
    assert r_dale > r_std + 0.2, (r_std, r_dale)


def test_dale_history_records_nu_and_clean_loss(dale_clf):
    nu = dale_clf.history[:, "dual_nu"]
    loss = dale_clf.history[:, "clean_loss"]
    assert len(nu) == len(loss) == 15
    assert max(nu) > 0  # the clean loss started above the margin
    assert dale_clf.objective_.nu_ == pytest.approx(nu[-1])


def test_pickle_keeps_nu_and_clone_resets_it(dale_clf, digits):
    X, y = digits
    nu = dale_clf.objective_.nu_
    restored = pickle.loads(pickle.dumps(dale_clf))
    assert restored.objective_.nu_ == nu
    np.testing.assert_array_equal(restored.predict(X[:50]), dale_clf.predict(X[:50]))
    fresh = clone(dale_clf)
    assert not hasattr(fresh, "objective_")
    assert clone(dale_clf.objective).nu_ == 0.0
    assert dale_clf.objective.__dict__.get("nu_t_") is None  # the user's object is untouched


def test_partial_fit_keeps_nu_and_fit_resets_it(digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(attack=Langevin(epsilon=0.1, steps=1),
                                objective=PrimalDual(margin=0.0, dual_lr=0.1),
                                max_epochs=1, **FAST)
    clf.fit(Xtr, ytr)
    nu1 = clf.objective_.nu_
    assert nu1 > 0
    clf.partial_fit(Xtr, ytr)
    assert clf.objective_.nu_ > nu1  # margin 0: the clean loss is always above it
    clf.fit(Xtr, ytr)
    assert clf.objective_.nu_ == pytest.approx(nu1)  # started again from nu_init


def test_objective_beta_in_grid_search(digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=1, loss="kl"),
                                objective=TRADES(beta=6.0), max_epochs=1, **FAST)
    assert clf.get_params()["objective__beta"] == 6.0
    search = GridSearchCV(clf, {"objective__beta": [0.0, 2.0]}, cv=2, error_score="raise")
    search.fit(Xtr[:300], ytr[:300])
    assert sorted(search.cv_results_["param_objective__beta"]) == [0.0, 2.0]
    best = search.best_estimator_
    assert best.objective_.beta == search.best_params_["objective__beta"]
    assert clf.objective.beta == 6.0  # the template is not mutated


# ------------------------------------------------- the authors' recipe (advbench)
def test_noise_coef_is_the_noise_magnitude(batch):
    """With a zero gradient only the noise moves a Gaussian step: its standard
    deviation is ``noise_coef`` itself, whatever the temperature, and
    ``temperature_`` reports the equivalent ``noise_coef**2 / (2 step)``."""
    x, y = batch
    x, y = x.repeat(8, 1, 1, 1), y.repeat(8)
    att = Langevin(epsilon=10.0, steps=1, step_size=0.1, noise_coef=0.03, temperature=5.0,
                   random_start=False, bounds=None)
    torch.manual_seed(0)
    d = att(_Constant(), x, y) - x
    assert att.noise_scale_ == 0.03
    assert float(d.std()) == pytest.approx(0.03, rel=0.02)
    assert att.temperature_ == pytest.approx(0.03 ** 2 / 0.2)
    # the temperature form with that temperature draws the same noise
    same = Langevin(epsilon=10.0, steps=1, step_size=0.1, temperature=att.temperature_,
                    random_start=False, bounds=None)
    assert same.noise_scale_ == pytest.approx(0.03)
    assert Langevin(temperature=2e-3).temperature_ == 2e-3


@pytest.mark.parametrize("scale", [1e-3, 0.02])
def test_normal_start_is_near_zero(batch, scale):
    """``random_start="normal"`` starts at ``x + scale * N(0, I)`` (projected);
    with no step the output is that start: its spread is ``scale``, far inside
    the ball, where the uniform start spreads over the whole ball."""
    x, y = batch
    x = torch.full_like(x, 0.5)  # away from the box, so the projection does not cut
    eps = 0.3
    kw = dict(epsilon=eps, steps=1, step_size=0.0, noise_coef=0.0)
    torch.manual_seed(0)
    d = Langevin(random_start="normal", start_scale=scale, **kw)(_Constant(), x, y) - x
    assert float(d.std()) == pytest.approx(scale, rel=0.05)
    assert float(d.abs().max()) < 6 * scale
    torch.manual_seed(0)
    u = Langevin(random_start="uniform", **kw)(_Constant(), x, y) - x
    assert float(u.std()) == pytest.approx(eps / math.sqrt(3), rel=0.05)
    torch.manual_seed(0)
    assert torch.equal(Langevin(random_start=True, **kw)(_Constant(), x, y), u + x)
    assert torch.equal(Langevin(random_start=False, **kw)(_Constant(), x, y), x)


def test_kl_potential_ascends_the_kl_from_the_clean_prediction(std_module, batch):
    """``potential="kl"`` moves along the gradient of KL(p(x) || p(x + delta)):
    one small step raises the KL, and the same step on the negated direction
    lowers nothing below zero; it matches PGD(loss="kl") exactly without noise."""
    x, y = batch
    with torch.no_grad():
        clean = std_module(x)
    torch.manual_seed(0)
    start = Langevin(epsilon=0.2, steps=1, step_size=0.0, noise_coef=0.0, potential="kl",
                     random_start="normal", start_scale=1e-3)(std_module, x, y)
    torch.manual_seed(0)
    one = Langevin(epsilon=0.2, steps=1, step_size=0.01, noise_coef=0.0, potential="kl",
                   random_start="normal", start_scale=1e-3)(std_module, x, y)
    direction = torch.sign(one - start)
    with torch.no_grad():
        kl0 = kl_divergence(clean, std_module(start))
        kl_up = kl_divergence(clean, std_module(one))
        kl_down = kl_divergence(clean, std_module((start - 0.01 * direction).clamp(0, 1)))
    assert kl_up > kl0 and kl_up > kl_down
    lang = Langevin(epsilon=0.2, steps=5, step_size=0.05, noise_coef=0.0, potential="kl",
                    random_start=False)(std_module, x, y)
    pgd = PGD(epsilon=0.2, steps=5, step_size=0.05, loss="kl", random_start=False)(std_module, x, y)
    torch.testing.assert_close(lang, pgd)


@pytest.mark.parametrize("method", ["dale", "dale-laplace", "kl-dale", "pgd", "trades"])
def test_dale_recipe_is_the_authors(method):
    p = dale_recipe(method, batch_size=128)
    assert p["optimizer"] is torch.optim.SGD and p["lr"] == 0.01
    assert p["optimizer__momentum"] == 0.9 and p["optimizer__weight_decay"] == 3.5e-3
    assert p["batch_size"] == 128 and p["max_epochs"] == 50 and p["attack_warmup"] == 0
    assert p["lr_schedule"] == "constant" and "callbacks" not in p and p["train_split"] is None
    att, obj = p["attack"], p["objective"]
    assert (att.epsilon, att.steps, att.step_size) == (0.3, 7, 0.1)
    if method == "pgd":
        assert isinstance(att, PGD) and att.random_start is False
        return
    assert (att.random_start, att.start_scale) == ("normal", 1e-3)
    if method in ("dale", "kl-dale"):
        assert isinstance(obj, PrimalDual)
        assert (obj.nu_init, obj.dual_lr, obj.margin, obj.update) == (1.0, 1e-3, 0.1, "batch")
    want = {"dale": ("log1m", "gaussian", 1e-3), "dale-laplace": ("log1m", "laplace", 0.128),
            "kl-dale": ("kl", None, 0.0), "trades": ("kl", None, 0.0)}[method]
    assert att.potential == want[0] and att.noise_scale_ == pytest.approx(want[2])
    if want[1]:
        assert att.noise == want[1]
    if method == "kl-dale":
        assert obj.robust_loss == "kl"
    if method == "dale":
        assert obj.robust_loss == "ce"
    if method == "trades":
        assert isinstance(obj, TRADES) and obj.beta == 1.0


def test_dale_recipe_step_schedule_and_training(digits_small):
    """``schedule="step"`` divides the learning rate by 10 at 50%, 70%, 80% of
    the epochs; the recipe unpacks into a classifier that trains."""
    p = dale_recipe("kl-dale", epsilon=0.1, epochs=10, steps=2, batch_size=64, schedule="step")
    (name, sched), = p["callbacks"]
    assert name == "step_lr" and sched.kwargs["milestones"] == [5, 7, 8]
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(**{**p, "max_epochs": 10}, random_state=0).fit(Xtr, ytr)
    lrs = [g["lr"] for g in clf.optimizer_.param_groups]
    assert lrs == [pytest.approx(1e-5)]
    assert clf.objective_.nu_ != 1.0  # the dual variable moved


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(method="mart"), r"method must be one of .*'mart'"),
    (dict(epochs=0), r"epochs must be an integer >= 1, got 0"),
    (dict(epsilon=-0.3), r"epsilon must be .*-0.3"),
    (dict(schedule="cosine"), r"schedule must be one of .*'cosine'"),
    (dict(batch_size=1.5), r"batch_size must be"),
])
def test_dale_recipe_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        dale_recipe(**kwargs)


@pytest.mark.parametrize("make,pattern", [
    (lambda: Langevin(noise_coef=-1e-3), r"noise_coef must be .*-0.001"),
    (lambda: Langevin(random_start="gaussian"), r"random_start must be .*'gaussian'"),
    (lambda: Langevin(start_scale=-1.0), r"start_scale must be .*-1.0"),
    (lambda: Langevin(potential="kl2"), r"potential must be one of .*'kl2'"),
])
def test_langevin_recipe_parameter_errors(std_module, batch, make, pattern):
    x, y = batch
    with pytest.raises(ValueError, match=pattern):
        make()(std_module, x, y)
