"""Conditional Wasserstein distance, average robustness, the transfer bound of
Sehwag et al. (2022), ARC, and their scorers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.datasets import load_digits_images
from robustfit.metrics import (
    TransferBound,
    arc_score,
    average_robustness,
    conditional_wasserstein_distance,
    make_arc_scorer,
    make_wasserstein_scorer,
    robustness_transfer_bound,
)

# ----------------------------------------------------------------- cwd


@pytest.mark.parametrize("metric, expected", [("l2", 5.0), ("linf", 4.0), ("l1", 7.0)])
def test_cwd_of_a_translation_is_the_shift_norm(metric, expected):
    # W_1(P, P + s) = ||s|| in any norm: the translation is an optimal coupling
    rng = np.random.RandomState(0)
    X = rng.rand(30, 2)
    y = np.arange(30) % 3
    res = conditional_wasserstein_distance(X, y, X + [3.0, 4.0], y, metric=metric, method="exact")
    assert res.distance == pytest.approx(expected)
    assert all(v == pytest.approx(expected) for v in res.per_class.values())


def test_cwd_weights_classes_by_the_first_set():
    X1 = np.array([[0.0], [0.0], [0.0], [10.0]])
    y1 = np.array([0, 0, 0, 1])
    # the second set has other class counts: only the first set's weights count
    X2 = np.array([[1.0], [13.0], [13.0], [13.0]])
    y2 = np.array([0, 1, 1, 1])
    res = conditional_wasserstein_distance(X1, y1, X2, y2, metric="l2", method="exact")
    assert res.class_weights == {0: 0.75, 1: 0.25}
    assert res.per_class == {0: pytest.approx(1.0), 1: pytest.approx(3.0)}
    assert res.distance == pytest.approx(0.75 * 1 + 0.25 * 3)
    assert res.n_samples == {0: (3, 1), 1: (1, 3)}
    # classes only in the second set are ignored; classes missing there are an error
    extra = conditional_wasserstein_distance(X1, y1, np.vstack([X2, [[99.0]]]), np.r_[y2, 7])
    assert extra.distance == pytest.approx(res.distance)
    with pytest.raises(ValueError, match=r"classes \[1\] of y1 have no samples"):
        conditional_wasserstein_distance(X1, y1, X2[:1], y2[:1])


def test_cwd_is_zero_for_identical_sets_in_any_order(digits):
    X, y = digits
    perm = np.random.RandomState(1).permutation(500)
    for metric in ("l2", "linf"):
        res = conditional_wasserstein_distance(X[:500], y[:500], X[:500][perm], y[:500][perm], metric=metric)
        assert res.distance == pytest.approx(0.0, abs=1e-9)


def test_cwd_approximations_against_exact(digits):
    X, y = digits
    A, ya, B, yb = X[:400], y[:400], X[400:800], y[400:800]
    exact = conditional_wasserstein_distance(A, ya, B, yb, method="exact").distance
    sink = conditional_wasserstein_distance(A, ya, B, yb, method="sinkhorn").distance
    sliced = conditional_wasserstein_distance(A, ya, B, yb, method="sliced", random_state=0).distance
    # the entropic plan is feasible: an upper bound, close at reg=0.01
    assert exact <= sink <= 1.05 * exact
    # sliced W_1 never exceeds W_1 (projections are 1-Lipschitz), and is far below in 64 dimensions
    assert 0 < sliced < 0.5 * exact
    with pytest.raises(ValueError, match="metric='linf'"):
        conditional_wasserstein_distance(A, ya, B, yb, metric="linf", method="sliced")
    auto = conditional_wasserstein_distance(A, ya, B, yb, exact_max_pairs=1)
    assert set(auto.per_class_method.values()) == {"sinkhorn"}


def test_cwd_bootstrap_interval_and_subsampling(digits):
    X, y = digits
    res = conditional_wasserstein_distance(
        X[:300], y[:300], X[300:600], y[300:600], n_bootstrap=30, random_state=0
    )
    low, high = res.ci
    assert low < res.distance < high
    assert res.bootstrap.shape == (30,)
    pct = conditional_wasserstein_distance(
        X[:300], y[:300], X[300:600], y[300:600], n_bootstrap=30, random_state=0, ci_method="percentile"
    )
    # duplicates in resamples make empirical W larger: percentile replicates sit above
    assert pct.ci[0] > res.ci[0]
    sub = conditional_wasserstein_distance(X[:600], y[:600], X[600:], y[600:], max_samples_per_class=10,
                                           random_state=0)
    assert all(n1 <= 10 and n2 <= 10 for n1, n2 in sub.n_samples.values())


@pytest.mark.parametrize("kwargs, match", [
    ({"metric": "l3"}, "metric must be"), ({"method": "fast"}, "method must be"),
    ({"n_bootstrap": -1}, "n_bootstrap"), ({"max_samples_per_class": 0}, "max_samples_per_class"),
])
def test_cwd_rejects_bad_arguments(kwargs, match):
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match=match):
        conditional_wasserstein_distance(X, [0, 0, 1, 1], X, [0, 0, 1, 1], **kwargs)


# ----------------------------------------------------- average robustness


def _linear_net(w, b):
    """Two logits (f, -f) with f = w.x + b: the boundary is the hyperplane f = 0."""
    net = torch.nn.Linear(len(w), 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor(np.stack([w, -w]), dtype=torch.float32))
        net.bias.copy_(torch.tensor([b, -b], dtype=torch.float32))
    return net


@pytest.mark.parametrize("norm, dual", [("l2", 2), ("linf", 1)])
def test_average_robustness_matches_the_linear_boundary_distance(norm, dual):
    rng = np.random.RandomState(0)
    w, b = rng.randn(10), 0.3
    X = rng.randn(200, 10).astype(np.float32)
    f = X @ w + b
    y = (f < 0).astype(np.int64)          # correct labels
    y[:20] = 1 - y[:20]                    # 20 misclassified points
    net = _linear_net(w, b)
    res = average_robustness(net, X, y, norm=norm, bounds=None)
    analytic = np.abs(f) / np.linalg.norm(w, ord=dual)
    analytic[:20] = 0.0
    assert res.found.all()
    assert np.all(res.distances[:20] == 0) and res.misclassified == pytest.approx(0.1)
    # upper bounds of the distance, within 2% of it
    assert np.all(res.distances >= analytic * (1 - 1e-4))
    np.testing.assert_allclose(res.distances, analytic, rtol=0.02, atol=1e-4)
    assert res.mean == pytest.approx(analytic.mean(), rel=0.02)
    assert res.ci[0] < res.mean < res.ci[1]
    # random restarts instead of targeted runs find the same distances
    alt = average_robustness(net, X[:50], y[:50], norm=norm, bounds=None, restarts=2, n_targets=0)
    np.testing.assert_allclose(alt.distances, analytic[:50], rtol=0.02, atol=1e-4)


def _pinned_net():
    """A small ReLU network with weights from a seeded numpy generator (the same on every platform)."""
    rng = np.random.RandomState(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.tensor(rng.randn(*p.shape) * 0.5, dtype=torch.float32))
    return net


# Computed with the search as it stood in robustfit/metrics/_transfer.py before it
# became robustfit.attacks.MinimumNorm (commit f72b279); the attack must reproduce them.
PINNED = {
    "linf": [0.0, 0.0, 0.05183690786361694, 0.08857381343841553, 0.028546638786792755, 0.13041621446609497,
             0.05183690786361694, 0.1953125, 0.10196316242218018, 0.15798968076705933, 0.022656261920928955,
             0.07489168643951416],
    "l2": [0.0, 0.0, 0.2735108435153961, 0.514025866985321, 0.14755873382091522, 0.6787678599357605,
           0.2743949890136719, 1.064632773399353, 0.5223609805107117, 0.805318295955658, 0.12615394592285156,
           0.40495535731315613],
}


@pytest.mark.parametrize("norm, kwargs", [("linf", {}), ("l2", {"restarts": 2, "n_targets": 1})])
def test_average_robustness_reproduces_the_pinned_distances(norm, kwargs):
    X = load_digits_images()[0][:12]
    net = _pinned_net()
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0])  # the net's predictions, the first two flipped
    with torch.no_grad():
        np.testing.assert_array_equal(net(torch.as_tensor(X)).argmax(1).numpy()[2:], y[2:])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        res = average_robustness(net, X, y, norm, steps=10, search_steps=8, batch_size=5, **kwargs)
    np.testing.assert_allclose(res.distances, PINNED[norm], rtol=1e-5, atol=1e-7)
    assert res.mean == pytest.approx(np.mean(PINNED[norm]), rel=1e-5)


class _HalfConstant(torch.nn.Module):
    """Class 0 wherever ``x[0] > 0.5`` and everywhere for the samples whose
    ``x[1] > 0.5`` (no adversarial point exists for them in the box)."""

    def forward(self, x):
        lock = (x[:, 1:2] > 0.5).float()
        z0 = (x[:, :1] - 0.5) + 10.0 * lock
        return torch.cat([z0, -z0], dim=1)


@pytest.mark.parametrize("norm, limit", [("linf", 1.0), ("l2", 2 ** 0.5)])
def test_average_robustness_keeps_unfound_points_at_the_upper_limit(norm, limit):
    """A sample without an adversarial point counts at the search's limit (the
    box's diameter), with a warning: the mean stays over every sample, with the
    class weights given, not over the found ones renormalized."""
    X = np.array([[0.9, 0.0], [0.7, 0.0], [0.9, 0.9], [0.8, 0.9]], dtype=np.float32)
    y = np.array([0, 0, 0, 0])
    with pytest.warns(RuntimeWarning, match=r"2 of 4 samples; they count at the search's upper limit"):
        res = average_robustness(_HalfConstant(), X, y, norm=norm, n_targets=0)
    assert res.upper_limit == pytest.approx(limit)
    np.testing.assert_array_equal(res.found, [True, True, False, False])
    np.testing.assert_allclose(res.distances[:2], [0.4, 0.2], rtol=0.02)
    assert np.all(res.distances[2:] == res.upper_limit)
    assert res.mean == pytest.approx((0.4 + 0.2 + 2 * limit) / 4, rel=0.02)
    # the weights are the ones given, on every sample (no renormalization over found ones)
    w = np.array([1.0, 1.0, 2.0, 0.0])
    with pytest.warns(RuntimeWarning):
        weighted = average_robustness(_HalfConstant(), X, y, norm=norm, n_targets=0,
                                      sample_weight=w)
    assert weighted.mean == pytest.approx((0.4 + 0.2 + 2 * limit) / 4, rel=0.02)
    # without bounds the limit is the largest budget the doubling reaches
    with pytest.warns(RuntimeWarning):
        free = average_robustness(_HalfConstant(), X, y, norm=norm, bounds=None, n_targets=0,
                                  eps_init=0.5, search_steps=4)
    assert free.upper_limit == 0.5 * 2 ** 3 and np.all(free.distances[2:] == 4.0)


# ------------------------------------------------------------ the theorem


@pytest.fixture(scope="module")
def pgd_digits(digits):
    X, y = digits
    clf = AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=5), max_epochs=10, lr=1e-2, random_state=0, train_split=None
    ).fit(X[:800], y[:800])
    return clf, X[800:1100], y[800:1100], X[1100:1400], y[1100:1400], X[:800], y[:800]


def digits_train(pgd_digits):
    return pgd_digits[5], pgd_digits[6]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_transfer_bound_holds_for_a_pgd_trained_model(pgd_digits, norm):
    clf, X, y, X_other, y_other = pgd_digits[:5]
    noisy = np.clip(X + np.random.RandomState(0).normal(0, 0.1, X.shape), 0, 1).astype(np.float32)
    proxies = [(noisy, y), (X_other, y_other)]
    try:
        from robustfit.proxy import GaussianMixtureProxy
    except ImportError:  # pragma: no cover - the proxy module comes with its own issue
        GaussianMixtureProxy = None
    if GaussianMixtureProxy is not None:
        gmm = GaussianMixtureProxy(mixture_components=2, pca_components=16, random_state=0)
        proxies.append(gmm.fit(*digits_train(pgd_digits)).sample(300, random_state=0))
    for Xp, yp in proxies:
        res = robustness_transfer_bound(clf, X, y, Xp, yp, norm=norm, n_bootstrap=10, random_state=0,
                                        search_steps=8, steps=10)
        assert res.rob_real.mean > 0 and res.rob_proxy.mean > 0
        assert res.holds_within_ci
        assert res.gap <= res.cwd.distance
        assert res.slack == pytest.approx(res.cwd.distance - res.gap)


def test_transfer_bound_estimator(pgd_digits):
    clf, X, y, X_other, y_other = pgd_digits[:5]
    tb = TransferBound(estimator=clf, norm="linf", robustness_params={"search_steps": 6, "steps": 10})
    with pytest.raises(NotFittedError):
        tb.distance((X, y))
    tb.fit(X[:150], y[:150])
    assert tb.distance((X[:150], y[:150])).distance == pytest.approx(0.0, abs=1e-9)
    res = tb.bound((X_other[:150], y_other[:150]))
    assert res.holds and res.rob_real is tb.rob_real_
    assert tb.score(X_other, y_other) == pytest.approx(-tb.distance((X_other, y_other)).distance)
    with pytest.raises(ValueError, match="norm must be"):
        TransferBound(norm="l3").fit(X, y)


# ------------------------------------------------------------------- ARC


def test_arc_orders_close_and_far_proxies(digits):
    X, _ = digits
    kw = {"epsilons": [0.0, 0.05, 0.1], "max_epochs": 4, "random_state": 0, "module_params": {"width": 8}}
    same = arc_score(X[:300], X[300:600], **kw)
    far = arc_score(X[:300], 1.0 - X[300:600], **kw)
    assert same.n_train + same.n_test == 600
    assert same.clean_accuracy[0] < 0.7          # two halves of the same data: about chance
    assert far.accuracy.min() > 0.9              # inverted digits: separable even under attack
    assert same.score < 0.65 < 0.9 < far.score
    with pytest.raises(ValueError, match="epsilons"):
        arc_score(X[:20], X[20:40], epsilons=[-0.1])


# ----------------------------------------------------------- grid search


class NoisyCopies(BaseEstimator):
    """A minimal ProxyDistribution: training samples plus Gaussian noise."""

    def __init__(self, noise=0.1):
        self.noise = noise

    def fit(self, X, y):
        self.X_, self.y_ = np.asarray(X), np.asarray(y)
        return self

    def sample(self, n, random_state=None):
        rng = np.random.RandomState(random_state)
        idx = rng.randint(len(self.X_), size=n)
        X = self.X_[idx] + rng.normal(0, self.noise, self.X_[idx].shape)
        return np.clip(X, 0, 1).astype(np.float32), self.y_[idx]


def test_scorers_select_the_closer_proxy_in_grid_search(digits):
    X, y = digits
    X, y = X[:400], y[:400]
    grid = {"noise": [0.5, 0.05]}
    gs = GridSearchCV(NoisyCopies(), grid, scoring=make_wasserstein_scorer("l2"), cv=2).fit(X, y)
    assert gs.best_params_ == {"noise": 0.05}
    assert np.all(gs.cv_results_["mean_test_score"] < 0)
    arc = make_arc_scorer(epsilons=[0.0, 0.05], max_epochs=3, module_params={"width": 8})
    gs = GridSearchCV(NoisyCopies(), grid, scoring=arc, cv=2).fit(X, y)
    assert gs.best_params_ == {"noise": 0.05}
    with pytest.raises(ValueError, match="metric"):
        make_wasserstein_scorer("cosine")


def test_misclassified_fraction_is_weighted_as_the_mean_is():
    """On a class-reweighted side of the bound, the misclassified fraction describes the same
    population as the mean distance (it was the unweighted fraction)."""
    from robustfit.metrics._transfer import _summarize

    r = _summarize(np.array([0.0, 1.0, 2.0]), np.array([2.0, 1.0, 1.0]), "linf", 0.95, 3.0)
    assert r.misclassified == pytest.approx(0.5) and r.mean == pytest.approx(0.75)


def test_sinkhorn_cost_is_an_upper_bound_even_when_stopped_early():
    """The entropic plan is rounded onto the transport polytope before its cost is taken, so
    the "upper bound of the exact value" holds when Sinkhorn stops before converging (its
    plan then matches one marginal only: its raw cost fell below the exact one here)."""
    ot = pytest.importorskip("ot")
    from robustfit.metrics._wasserstein import _ot_value, _round_to_feasible

    rng = np.random.RandomState(0)
    n, m = rng.randint(3, 30), rng.randint(3, 30)
    x, z = rng.rand(n, 3) * rng.rand(), rng.rand(m, 3) * rng.rand() * 3
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m) * 0.3)
    M = ot.dist(x, z, metric="euclidean")
    exact = _ot_value(a, b, M, "exact", None, 100000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT: "Sinkhorn did not converge"
        assert ot.sinkhorn2(a, b, M / M.max(), 0.01, numItermax=1) * M.max() < 0.5 * exact
        for iterations in (1, 2, 5, 1000):
            assert _ot_value(a, b, M, "sinkhorn", 0.01, iterations) >= exact
            plan = _round_to_feasible(ot.sinkhorn(a, b, M / M.max(), 0.01, numItermax=iterations),
                                      a, b)
            np.testing.assert_allclose(plan.sum(axis=1), a, atol=1e-15)
            np.testing.assert_allclose(plan.sum(axis=0), b, atol=1e-15)
            assert plan.min() >= 0
