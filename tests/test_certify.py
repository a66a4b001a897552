"""Randomized smoothing: the statistics, the certificates' soundness, abstention,
the training attacks (GaussianNoise, SmoothAdv) and scikit-learn citizenship."""

from __future__ import annotations

import pickle

import matplotlib
import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from skorch import NeuralNetClassifier
from torch import nn

from robustfit import AdversarialClassifier
from robustfit._validation import InvalidParameterError
from robustfit.attacks import PGD, GaussianNoise, SmoothAdv, gaussian_copies, smoothed_nll
from robustfit.certify import (
    CertifiedAccuracyCurve,
    SmoothedClassifier,
    certified_accuracy_curve,
    certified_radius,
    lower_confidence_bound,
    make_certified_scorer,
    plot_certified_accuracy,
)
from robustfit.certify import _two_sided_pvalue as two_sided_pvalue
from robustfit.proxy import GaussianMixtureProxy

matplotlib.use("Agg")

SIGMA = 0.5


def _noise_clf(**kw):
    params = dict(max_epochs=15, lr=1e-2, train_split=None)
    params.update(kw)
    return AdversarialClassifier(**params)


@pytest.fixture(scope="module")
def smoothed(digits):
    """A base CNN trained under Gaussian noise (sigma 0.5) on 600 digits, smoothed."""
    X, y = digits
    return SmoothedClassifier(_noise_clf(), sigma=SIGMA, n0=100, n=2000,
                              random_state=0).fit(X[:600], y[:600])


@pytest.fixture(scope="module")
def test_points(digits):
    X, y = digits
    return X[1500:1530], y[1500:1530]


class Constant(nn.Module):
    """Logits that favour class ``c`` whatever the input."""

    def __init__(self, n_classes=3, c=1):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_classes))
        with torch.no_grad():
            self.bias[c] = 1.0

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1)


class Halfspace(nn.Module):
    """Class 1 where the first coordinate exceeds ``t``, else class 0: a linear
    classifier whose smoothed version has the exact robust radius |x_0 - t|."""

    def __init__(self, t=0.5):
        super().__init__()
        self.t = t
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        z = x.flatten(1)[:, 0] - self.t
        return torch.stack([-z, z], dim=1) + 0 * self.dummy


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("n", [1, 10, 100, 1000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_lower_bound_is_scipy_clopper_pearson(n, alpha):
    ks = np.unique(np.linspace(0, n, 12).astype(int))
    ours = lower_confidence_bound(ks, n, alpha)
    ref = [binomtest(int(k), n).proportion_ci(1 - 2 * alpha, method="exact").low for k in ks]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    assert isinstance(lower_confidence_bound(n, n, alpha), float)


def test_radius_formula_and_pvalue_match_scipy():
    p = np.array([0.3, 0.5, 0.6, 0.9, 0.999])
    r = certified_radius(p, sigma=0.25)
    assert np.isnan(r[0]) and r[1] == 0.0
    np.testing.assert_allclose(r[2:], 0.25 * norm.ppf(p[2:]))
    for n_a, n_b in [(0, 0), (5, 5), (10, 0), (60, 40), (520, 480), (30, 2), (3, 17)]:
        ref = binomtest(n_a, n_a + n_b, 0.5).pvalue if n_a + n_b else 1.0
        assert two_sided_pvalue(n_a, n_b) == pytest.approx(ref, rel=1e-9, abs=1e-15)


def test_statistics_reject_bad_arguments():
    with pytest.raises(InvalidParameterError, match="alpha"):
        lower_confidence_bound(3, 10, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        lower_confidence_bound(11, 10, 0.01)
    with pytest.raises(InvalidParameterError, match="sigma"):
        certified_radius(0.9, sigma=0.0)


# --------------------------------------------------------------------------- certificates
def test_constant_base_gets_the_bound_radius_everywhere():
    X = np.random.RandomState(0).rand(7, 1, 4, 4).astype(np.float32)
    n, alpha, sigma = 500, 0.01, 0.7
    smooth = SmoothedClassifier(Constant(), prefit=True, sigma=sigma, n0=20, n=n, alpha=alpha,
                                random_state=0).fit(X)
    classes, radius = smooth.certify(X)
    p_low = binomtest(n, n).proportion_ci(1 - 2 * alpha, method="exact").low
    assert (classes == 1).all()
    np.testing.assert_allclose(radius, sigma * norm.ppf(p_low), rtol=1e-9)
    assert smooth.max_radius == pytest.approx(radius[0], rel=1e-9)
    assert (smooth.predict(X) == 1).all()
    np.testing.assert_array_equal(smooth.vote_counts(X), np.tile([0, n, 0], (7, 1)))


def test_bf16_forward_passes_are_optional():
    X = np.random.RandomState(0).rand(5, 1, 4, 4).astype(np.float32)
    full = SmoothedClassifier(Constant(), prefit=True, n=300, random_state=0).fit(X)
    half = SmoothedClassifier(Constant(), prefit=True, n=300, random_state=0, amp="bf16").fit(X)
    for a, b in zip(full.certify(X), half.certify(X)):
        np.testing.assert_array_equal(a, b)


def test_radius_of_a_halfspace_is_sound_and_close_to_the_exact_one():
    # For a linear base classifier the smoothed classifier's exact robust radius
    # is the distance to the hyperplane (Cohen et al., Section 3.1).
    sigma, t = 0.5, 0.5
    x0 = np.linspace(-0.75, 1.75, 41)
    X = np.zeros((len(x0), 3), dtype=np.float32)
    X[:, 0] = x0
    smooth = SmoothedClassifier(Halfspace(t), prefit=True, sigma=sigma, n=20_000, alpha=0.001,
                                batch_size=4096, random_state=0).fit(X)
    classes, radius = smooth.certify(X)
    exact = np.abs(x0 - t)
    certified = classes != -1
    assert (radius[certified] <= exact[certified] + 1e-9).all()
    assert (classes[certified] == (x0[certified] > t)).all()
    mid = (exact > 0.1 * sigma) & (exact < 1.5 * sigma)
    assert certified[mid].all()
    # the gap is the confidence interval's: about 3 standard errors of p at n = 20,000
    assert (radius[mid] >= exact[mid] - 0.03).all(), (radius[mid], exact[mid])


def test_abstains_when_the_top_two_are_close():
    # on the hyperplane the two classes get half of the votes each
    X = np.zeros((20, 3), dtype=np.float32)
    X[:10, 0] = 0.5                      # on the boundary
    X[10:, 0] = 2.0                      # far on the class-1 side
    smooth = SmoothedClassifier(Halfspace(0.5), prefit=True, sigma=0.5, n=2000,
                                random_state=0).fit(X)
    pred = smooth.predict(X)
    classes, radius = smooth.certify(X)
    assert smooth.abstain_label_ == -1
    assert (pred[:10] == -1).all() and (pred[10:] == 1).all()
    assert (classes[:10] == -1).all() and (radius[:10] == 0).all()
    assert (classes[10:] == 1).all() and (radius[10:] > 0).all()
    proba = smooth.predict_proba(X[:10])
    assert np.allclose(proba.sum(axis=1), 1) and (np.abs(proba[:, 0] - 0.5) < 0.06).all()


def test_certify_draws_selection_and_estimation_noise_separately():
    seen = []

    class Recorder(Constant):
        def forward(self, x):
            seen.append(x.clone())
            return super().forward(x)

    X = np.zeros((3, 2), dtype=np.float32)
    smooth = SmoothedClassifier(Recorder(), prefit=True, n0=7, n=50, batch_size=16,
                                random_state=0).fit(X)
    seen.clear()
    smooth.certify(X)
    noise = torch.cat(seen)
    assert len(noise) == 3 * (7 + 50)            # n0 + n fresh draws per point
    assert len(torch.unique(noise, dim=0)) == len(noise)  # no draw is reused


def test_certified_points_are_not_flipped_by_an_attack_on_the_smoothed_classifier(
        smoothed, test_points):
    X, _ = test_points
    classes, radius = smoothed.certify(X)
    idx = np.flatnonzero(radius > 0)
    assert len(idx) >= 15
    module = smoothed.estimator_.module_
    checker = SmoothedClassifier(module, prefit=True, sigma=SIGMA, n=5000,
                                 random_state=1).fit(X)

    def flips(extra):
        count = 0
        for i in idx:
            attack = SmoothAdv(epsilon=float(radius[i]) + extra, sigma=SIGMA, steps=20,
                               noise_samples=64)
            torch.manual_seed(int(i))
            x_adv = attack(module, torch.as_tensor(X[i:i + 1]), torch.tensor([int(classes[i])]))
            assert float((x_adv - torch.as_tensor(X[i:i + 1])).norm()) <= radius[i] + extra + 1e-5
            pred = checker.predict(x_adv.numpy())[0]
            count += int(pred != classes[i] and pred != -1)
        return count

    # within the certified radius the smoothed prediction never changes ...
    assert flips(0.0) == 0
    # ... while the same attack with 0.5 more budget does flip points: it has teeth
    assert flips(0.5) >= 0.2 * len(idx)


def test_results_repeat_under_random_state(smoothed, test_points, digits):
    X, _ = test_points
    a, b = smoothed.certify(X), smoothed.certify(X)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(smoothed.vote_counts(X), smoothed.vote_counts(X))
    other = SmoothedClassifier(smoothed.estimator_, prefit=True, sigma=SIGMA, n=2000,
                               random_state=1).fit(X)
    assert not np.array_equal(other.vote_counts(X), smoothed.vote_counts(X))
    # the base's training is seeded too
    Xtr, ytr = digits[0][:200], digits[1][:200]
    fits = [SmoothedClassifier(_noise_clf(max_epochs=2), n=200, random_state=3).fit(Xtr, ytr)
            for _ in range(2)]
    w0, w1 = (next(f.estimator_.module_.parameters()) for f in fits)
    assert torch.equal(w0, w1)
    np.testing.assert_array_equal(fits[0].certify(X)[1], fits[1].certify(X)[1])


def test_scores_and_curve_agree(smoothed, test_points):
    X, y = test_points
    radii = [0.0, 0.25, 0.5, 0.75]
    acc = smoothed.certified_accuracy(X, y, radii)
    assert acc.shape == (4,) and (np.diff(acc) <= 0).all() and acc[0] > 0.6
    assert smoothed.score(X, y) == pytest.approx(acc[0])
    assert smoothed.certified_accuracy(X, y, 0.5) == pytest.approx(acc[2])
    curve = certified_accuracy_curve(smoothed, X, y, radii, label="noise")
    np.testing.assert_allclose(curve.accuracies, acc)
    assert curve.at(0.5) == pytest.approx(acc[2]) and curve.sigma == SIGMA
    _, radius = smoothed.certify(X)
    correct = smoothed.certify(X)[0] == y
    assert curve.average_radius == pytest.approx(np.mean(np.where(correct, radius, 0)))
    assert 0 <= curve.abstained < 1
    full = certified_accuracy_curve(smoothed, X, y)
    assert len(full.radii) == 101 and full.radii[-1] == pytest.approx(smoothed.max_radius)
    ax = plot_certified_accuracy({"a": curve, "b": (radii, acc / 2)})
    assert len(ax.get_lines()) == 2 and ax.get_ylabel() == "certified accuracy"
    with pytest.raises(TypeError, match="CertifiedAccuracyCurve"):
        plot_certified_accuracy([1, 2])
    with pytest.raises(ValueError, match="radii"):
        smoothed.certified_accuracy(X, y, -0.1)
    with pytest.raises(ValueError, match="not among"):
        CertifiedAccuracyCurve(np.array([0.0]), np.array([1.0])).at(0.3)


# --------------------------------------------------------------------------- scikit-learn
def test_clone_keeps_params_and_a_prefitted_base(smoothed):
    c = clone(SmoothedClassifier(_noise_clf(), sigma=0.75, n=123))
    assert c.sigma == 0.75 and c.n == 123 and not hasattr(c, "estimator_")
    pre = SmoothedClassifier(smoothed.estimator_, prefit=True, sigma=0.3)
    assert clone(pre).estimator is smoothed.estimator_
    assert clone(SmoothedClassifier(_noise_clf())).get_params()["estimator__lr"] == 1e-2


def test_grid_search_over_sigma_trains_each_base_at_its_sigma(digits):
    X, y = digits[0][:300], digits[1][:300]
    search = GridSearchCV(
        SmoothedClassifier(_noise_clf(max_epochs=4), n=300, random_state=0),
        {"sigma": [0.1, 0.5]}, scoring=make_certified_scorer(0.25), cv=2, error_score="raise",
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert ((scores >= 0) & (scores <= 1)).all()
    best = search.best_estimator_
    assert best.estimator_.attack_.sigma == best.sigma == search.best_params_["sigma"]
    assert best.estimator.attack is None     # the parameter is never changed


def test_grid_search_over_sigma_with_a_prefitted_base(smoothed, test_points):
    X, y = test_points
    base = smoothed.estimator_
    search = GridSearchCV(SmoothedClassifier(base, prefit=True, n=300, random_state=0),
                          {"sigma": [0.25, 0.5]}, scoring=make_certified_scorer(0.0), cv=2)
    search.fit(X, y)
    assert search.best_estimator_.estimator_ is base


def test_pickle_round_trip(smoothed, test_points):
    X, _ = test_points
    restored = pickle.loads(pickle.dumps(smoothed))
    for a, b in zip(smoothed.certify(X), restored.certify(X)):
        np.testing.assert_array_equal(a, b)


def test_string_labels(digits):
    X, y = digits[0][:300], digits[1][:300]
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    smooth = SmoothedClassifier(_noise_clf(max_epochs=6), sigma=0.25, n=300,
                                random_state=0).fit(X, names[y])
    assert smooth.abstain_label_ == "abstain"
    Xt, yt = digits[0][1500:1560], names[digits[1][1500:1560]]
    pred = smooth.predict(Xt)
    assert set(pred) <= set(names) | {"abstain"} and pred.dtype.kind == "U"
    classes, _ = smooth.certify(Xt)
    assert set(classes) <= set(names) | {"abstain"}
    assert 0.3 < smooth.score(Xt, yt) <= 1.0
    # an abstain label longer than every class name is kept whole
    smooth.abstain_label_ = "undecided-by-the-smoothed-classifier"
    out = smooth._labels(np.array([-1, 0]))
    assert out[0] == "undecided-by-the-smoothed-classifier" and out[1] == "eight"


def test_abstain_label_may_not_be_a_class(digits):
    X, y = digits[0][:100], digits[1][:100]
    base = _noise_clf(max_epochs=1).fit(X, y - 1)   # classes -1 .. 8
    with pytest.raises(ValueError, match="abstain_label=-1 is one of the classes"):
        SmoothedClassifier(base, prefit=True).fit(X)
    smooth = SmoothedClassifier(base, prefit=True, abstain_label=99, n=50).fit(X)
    assert smooth.abstain_label_ == 99


@pytest.mark.parametrize("param, value", [
    ("sigma", 0.0), ("sigma", -1.0), ("alpha", 0.0), ("alpha", 1.0), ("alpha", 1.5),
    ("n0", 0), ("n", 0), ("batch_size", 0), ("prefit", "yes"), ("amp", "fp8"),
])
def test_invalid_parameters_are_named(param, value, digits):
    X, y = digits[0][:50], digits[1][:50]
    smooth = SmoothedClassifier(_noise_clf(max_epochs=1), **{param: value})
    with pytest.raises(InvalidParameterError, match=f"SmoothedClassifier: {param} must be"):
        smooth.fit(X, y)


def test_clear_errors(digits, smoothed):
    X, y = digits[0][:50], digits[1][:50]
    with pytest.raises(NotFittedError, match="not fitted, but prefit=True"):
        SmoothedClassifier(_noise_clf(), prefit=True).fit(X, y)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        SmoothedClassifier(_noise_clf()).certify(X)
    with pytest.raises(InvalidParameterError, match="prefit=True"):
        SmoothedClassifier(prefit=True).fit(X, y)
    with pytest.raises(InvalidParameterError, match="not a class"):
        SmoothedClassifier(AdversarialClassifier).fit(X, y)
    with pytest.raises(ValueError, match="does not train under Gaussian noise"):
        SmoothedClassifier(_noise_clf(attack=PGD(epsilon=0.1))).fit(X, y)
    with pytest.raises(ValueError, match="cannot train a bare torch module"):
        SmoothedClassifier(Constant()).fit(X, y)
    with pytest.raises(ValueError, match="lacks"):
        SmoothedClassifier(NeuralNetClassifier(Constant)).fit(X, y)
    with pytest.raises(ValueError, match="needs labels"):
        SmoothedClassifier(_noise_clf()).fit(X)
    with pytest.raises(ValueError, match="fitted on"):
        smoothed.certify(np.zeros((2, 1, 4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="SmoothedClassifier"):
        make_certified_scorer(0.5)(smoothed.estimator_, X, y)
    with pytest.raises(InvalidParameterError, match="radius"):
        make_certified_scorer(-1.0)
    assert repr(make_certified_scorer(0.5)) == "make_certified_scorer(radius=0.5)"


def test_prefit_skorch_net_and_module(digits):
    X, y = digits[0][:200], digits[1][:200]
    net = NeuralNetClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), max_epochs=3,
                              lr=0.1, train_split=None).fit(X, y)
    smooth = SmoothedClassifier(net, prefit=True, sigma=0.1, n=100, random_state=0).fit(X)
    np.testing.assert_array_equal(smooth.classes_, np.arange(10))
    assert smooth.score(X[:50], y[:50]) > 0.3
    bare = SmoothedClassifier(net.module_, prefit=True, n=20).fit(X)
    assert bare.vote_counts(X[:3]).shape == (3, 10)


# --------------------------------------------------------------------------- training attacks
def test_gaussian_noise_is_fresh_unclipped_and_validated():
    x = torch.full((4000, 1, 2, 2), 0.5)
    y = torch.zeros(4000, dtype=torch.long)
    attack = GaussianNoise(sigma=0.3, bounds=(0.0, 1.0))
    net = nn.Identity()
    a, b = attack(net, x, y), attack(net, x, y)
    assert (a - x).std().item() == pytest.approx(0.3, rel=0.03)
    assert abs((a - x).mean().item()) < 0.01 and not torch.equal(a, b)
    assert a.min() < 0 and a.max() > 1                   # noise is not clipped to the box
    assert torch.equal(GaussianNoise(sigma=0)(net, x, y), x)
    with pytest.raises(InvalidParameterError, match="GaussianNoise: sigma must be"):
        GaussianNoise(sigma=-1)(net, x, y)
    with pytest.raises(ValueError, match="outside the declared"):
        attack(net, x + 1, y)
    assert gaussian_copies(x[:2], 0.3, 5).shape == (2, 5, 1, 2, 2)


def test_noise_training_beats_clean_training_under_noise(digits):
    X, y = digits
    Xtr, ytr, Xte, yte = X[:600], y[:600], X[1500:1800], y[1500:1800]
    rng = np.random.RandomState(0)
    noisy = Xte + 0.5 * rng.randn(*Xte.shape).astype(np.float32)
    clean = _noise_clf(random_state=0).fit(Xtr, ytr)
    noise = _noise_clf(attack=GaussianNoise(0.5), random_state=0).fit(Xtr, ytr)
    assert noise.score(noisy, yte) > clean.score(noisy, yte) + 0.1


def test_training_attacks_mix_with_proxy_data(digits):
    X, y = digits[0][:200], digits[1][:200]
    for attack in (GaussianNoise(0.25), SmoothAdv(epsilon=0.5, sigma=0.25, noise_samples=2)):
        clf = _noise_clf(max_epochs=2, attack=attack, random_state=0,
                         proxy_data=GaussianMixtureProxy(mixture_components=1, pca_components=5),
                         proxy_ratio=0.5).fit(X, y)
        assert clf.proxy_X_ is not None and len(clf.history) == 2
        assert clf.attack_.get_params() == attack.get_params()   # warm-up done: full epsilon


def test_smoothadv_stays_in_the_ball_and_raises_the_smoothed_loss(std_module, digits):
    X, y = torch.as_tensor(digits[0][1500:1540]), torch.as_tensor(digits[1][1500:1540])
    attack = SmoothAdv(epsilon=0.75, sigma=0.25, steps=5, noise_samples=8)
    torch.manual_seed(0)
    noise = gaussian_copies(X, 0.25, 8)
    with torch.no_grad():
        before = smoothed_nll(std_module((X[:, None] + noise).flatten(0, 1)), y, 8)
    x_adv = attack.attack_with_noise(std_module, X, y, noise)
    with torch.no_grad():
        after = smoothed_nll(std_module((x_adv[:, None] + noise).flatten(0, 1)), y, 8)
    assert after > before * 1.5
    assert ((x_adv - X).flatten(1).norm(dim=1) <= 0.75 + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(SmoothAdv(epsilon=0)(std_module, X, y), X)
    assert SmoothAdv().norm == "l2" and SmoothAdv(epsilon=1.0, steps=4).step_size_ == 0.5


def test_smoothadv_trains_on_the_mean_over_noise_copies(std_module, digits):
    X, y = torch.as_tensor(digits[0][:16]), torch.as_tensor(digits[1][:16])
    attack = SmoothAdv(epsilon=0.5, sigma=0.25, noise_samples=4)
    x_in = attack.train_perturb(std_module, X, y)
    x_adv, extra = attack._pending
    assert extra.shape == (16, 3, 1, 8, 8)
    assert len(pickle.loads(pickle.dumps(attack)).__dict__.get("_pending", ())) == 0
    first_noise = x_in - x_adv
    logits = std_module(x_in)
    total = nn.functional.cross_entropy(logits, y) + attack.regularizer(std_module, X, x_in, y, logits)
    copies = torch.cat([first_noise[:, None], extra], dim=1)
    expected = torch.stack([nn.functional.cross_entropy(std_module(x_adv + copies[:, j]), y)
                            for j in range(4)]).mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert attack._pending is None
    single = SmoothAdv(epsilon=0.5, sigma=0.25, noise_samples=4, multi_noise=False)
    single.train_perturb(std_module, X, y)
    assert single.regularizer(std_module, X, x_in, y, logits) is None
