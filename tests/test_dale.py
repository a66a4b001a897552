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
from robustfit.losses import TRADES, PrimalDual, kl_divergence

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
