"""Property-based tests (Hypothesis) of the attacks, and a fuzz test of the public entry points.

Attacks: for any input shape, epsilon, norm, number of steps and input box,
the result has the input's shape, is finite, lies inside the epsilon-ball and
inside the box, and repeats exactly under ``robustfit._utils.random_source``.

Entry points: random dtypes, shapes, NaN/inf, label kinds and parameter
values; each call either succeeds with a valid result or raises
``ValueError``/``TypeError`` with a message, never anything else.

Example counts are small and deadlines off, so the module runs in well under
a minute on two cores.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustfit import AdversarialClassifier
from robustfit._utils import random_source, torch_seeded
from robustfit.attacks import APGD, FGSM, PGD, AutoAttack, GeneratorSynth, Langevin, Square
from robustfit.metrics import TransferBound, conditional_wasserstein_distance, robust_accuracy
from robustfit.proxy import ArrayProxy, GaussianMixtureProxy

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

#: Per attack: parameters that keep one call cheap.
CHEAP = {
    PGD: {}, FGSM: {}, Langevin: {}, APGD: {"restarts": 1},
    Square: {"n_queries": 4}, AutoAttack: {"version": "custom", "attacks": ("apgd-ce", "apgd-t"), "n_target_classes": 1},
    GeneratorSynth: {"latent_dim": 4},
}


def _net(shape, n_classes=3):
    with torch_seeded(0):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), n_classes))


@st.composite
def attack_cases(draw):
    cls = draw(st.sampled_from(sorted(CHEAP, key=lambda c: c.__name__)))
    n = draw(st.integers(1, 4))
    images = [(1, 4, 4), (2, 3, 5)]
    shape = draw(st.sampled_from(images if cls is Square else [(3,), (7,), *images]))  # Square: images
    norm = draw(st.sampled_from(["linf", "l2"]))
    epsilon = draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0, 3.0]))
    bounds = draw(st.sampled_from([None, (0.0, 1.0), (-1.0, 2.0)]))
    steps = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    return cls, n, shape, norm, epsilon, bounds, steps, seed


@settings(max_examples=60, **SETTINGS)
@given(attack_cases())
def test_attack_stays_in_ball_and_box_and_repeats(case):
    cls, n, shape, norm, epsilon, bounds, steps, seed = case
    rng = np.random.RandomState(seed)
    lo, hi = bounds if bounds is not None else (-2.0, 3.0)
    x = torch.tensor(rng.uniform(lo, hi, size=(n, *shape)), dtype=torch.float32)
    y = torch.tensor(rng.randint(0, 3, size=n))
    params = {"epsilon": epsilon, "norm": norm, "bounds": bounds, **CHEAP[cls]}
    attack = cls()
    known = attack.get_params()
    if "steps" in known:
        params["steps"] = steps
    attack.set_params(**{k: v for k, v in params.items() if k in known})
    net = _net(shape)
    # GeneratorSynth draws its generator's weights from torch's global generator
    with torch_seeded(seed), random_source(seed):
        a = attack(net, x, y)
    with torch_seeded(seed), random_source(seed):
        b = type(attack)(**attack.get_params())(net, x, y)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.isfinite(a).all()
    d = (a - x).reshape(n, -1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= epsilon * (1 + 1e-5) + 1e-6
    if bounds is not None:
        assert float(a.min()) >= bounds[0] - 1e-6 and float(a.max()) <= bounds[1] + 1e-6
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------ fuzzing
# Each case breaks at most one thing (or nothing): the input's dtype, its
# shape, its values (NaN/inf/out of range), the labels or one parameter; the
# rest is drawn from valid choices, so about half the cases reach the
# computation and the other half probe one error path each.
FAULTS = [None, None, None, None, "dtype", "shape", "values", "labels", "param"]
DTYPES_OK = ["float32", "float64", "float16", "int64", "uint8", "bool", "object"]
DTYPES_ANY = DTYPES_OK + ["complex64", "str", "datetime64[s]"]
LABELS_OK = ["int", "int2", "float_int", "str", "col"]
LABELS_ANY = LABELS_OK + ["float", "mixed", "nan", "none", "2d", "short", "one", "empty"]


@st.composite
def arrays(draw, fault=None):
    """X of a random dtype and shape, possibly with NaN/inf."""
    n = draw(st.sampled_from([0, 1, 2, 24] if fault == "shape" else [3, 8, 24]))
    shapes = [(n, 4), (n, 1, 4, 4), (n, 3)]
    if fault == "shape":
        shapes += [(n,), (n, 0), (n, 4, 4), (n, 1, 2, 2, 2), (n, 1, 0, 4)]
    shape = draw(st.sampled_from(shapes))
    dtype = draw(st.sampled_from(DTYPES_ANY if fault == "dtype" else DTYPES_OK))
    X = np.random.RandomState(draw(st.integers(0, 1000))).rand(*shape)
    if fault == "values" and X.size:
        X.flat[draw(st.integers(0, X.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 5.0, -3.0]))
    if dtype == "object":
        return X.astype(object)
    if dtype == "str":
        return X.astype(str)
    with np.errstate(all="ignore"):
        return X.astype(dtype)


@st.composite
def labels(draw, n, fault=None):
    kind = draw(st.sampled_from(LABELS_ANY if fault == "labels" else LABELS_OK))
    rng = np.random.RandomState(draw(st.integers(0, 1000)))
    base = np.arange(n) % 2
    return {
        "int": lambda: np.r_[0, 1, rng.randint(0, 3, max(n - 2, 0))][:n],
        "int2": lambda: base,
        "float_int": lambda: base.astype(float),
        "str": lambda: np.array(["a", "b"])[base],
        "col": lambda: base[:, None],
        "float": lambda: rng.rand(n),
        "mixed": lambda: np.array([1, "a"] * n, dtype=object)[:n],
        "nan": lambda: np.where(np.arange(n) == 0, np.nan, base),
        "none": lambda: None,
        "2d": lambda: np.stack([base, base], 1),
        "short": lambda: base[:-1],
        "one": lambda: np.zeros(n, dtype=int),
        "empty": lambda: base[:0],
    }[kind]()


def _call(fn, *args, **kwargs):
    """Run ``fn``: its result, or None after a ValueError/TypeError with a message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None


PARAM_VALUES = st.sampled_from([0, -1, 1, 2, 0.5, np.nan, np.inf, "auto", None, True, "x", (1, 2)])


@st.composite
def cases(draw):
    fault = draw(st.sampled_from(FAULTS))
    X = draw(arrays(fault))
    return fault, X, draw(labels(len(X), fault))


@settings(max_examples=80, **SETTINGS)
@given(case=cases(), data=st.data())
def test_fuzz_classifier_fit_predict(case, data):
    fault, X, y = case
    kwargs = dict(max_epochs=1, batch_size=8, random_state=0, device="cpu",
                  attack=PGD(epsilon=0.1, steps=1, bounds=None))
    if fault == "param":
        param = data.draw(st.sampled_from(
            ["batch_size", "max_epochs", "lr", "proxy_ratio", "attack_warmup", "random_state",
             "lr_schedule", "amp", "train_split", "proxy_samples"]))
        kwargs[param] = data.draw(PARAM_VALUES)
    clf = AdversarialClassifier(**kwargs)
    fitted = _call(clf.fit, X, y)
    if fitted is None:
        return
    assert fitted is clf
    proba = _call(clf.predict_proba, X)
    if proba is not None:
        assert proba.shape == (len(X), len(clf.classes_))
        assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(1), 1, atol=1e-4)
        pred = clf.predict(X)
        assert set(np.unique(pred)) <= set(clf.classes_)


@settings(max_examples=60, **SETTINGS)
@given(case=cases(), data=st.data())
def test_fuzz_attack_and_robust_accuracy(case, data):
    fault, X, y = case
    bad = fault == "param"
    epsilon = data.draw(st.sampled_from([0.0, -1.0, np.nan, np.inf, "a", None] if bad else [0.1, 0.0]))
    batch_size = data.draw(st.sampled_from([0, -5, 2.5, "8"] if bad else [1, 4, 256]))
    shape = X.shape[1:] if X.ndim > 1 and all(s > 0 for s in X.shape[1:]) else (4,)
    net = _net(shape)
    attack = PGD(epsilon=epsilon, steps=1, bounds=None)
    out = _call(attack, net, X, y)
    if out is not None:
        assert out.shape == np.asarray(X).shape and torch.isfinite(out).all()
    acc = _call(robust_accuracy, net, X, y, attack=attack, batch_size=batch_size)
    if acc is not None:
        assert 0.0 <= acc <= 1.0


@settings(max_examples=50, **SETTINGS)
@given(case=cases(), data=st.data())
def test_fuzz_proxies_distance_and_bound(case, data):
    fault, X, y = case
    k = data.draw(st.sampled_from([0, -1, 0.5, True, "2"] if fault == "param" else [1, 2, None]))
    res = _call(conditional_wasserstein_distance, X, y, X, y, max_samples_per_class=k)
    if res is not None:
        assert np.isfinite(res.distance) and res.distance >= 0
    gmm = GaussianMixtureProxy(mixture_components=1, pca_components=k, random_state=0)
    if _call(gmm.fit, X, y) is not None:
        Xs, ys = gmm.sample(4, random_state=0)
        assert Xs.shape[1:] == np.asarray(X).shape[1:] and np.isfinite(Xs).all()
    proxy = _call(ArrayProxy(X, y, n_samples=k).fit, X, y)
    if proxy is not None:
        assert len(proxy.sample(3, random_state=0)[0]) == 3
    tb = TransferBound(norm=data.draw(st.sampled_from(["l2", "linf"])), n_samples=k)
    if _call(tb.fit, X, y) is not None:
        res = _call(tb.distance, (X, y))
        if res is not None:
            assert np.isfinite(res.distance)


def test_fuzz_strategies_reach_the_valid_path():
    """The fuzzers are not all-rejecting: a plain valid case goes through each entry point."""
    X = np.random.RandomState(0).rand(24, 4).astype(np.float32)
    y = np.arange(24) % 2
    clf = _call(AdversarialClassifier(max_epochs=1, batch_size=8, random_state=0, device="cpu").fit, X, y)
    assert clf is not None
    assert _call(robust_accuracy, _net((4,)), X, y, attack=PGD(0.1, steps=1, bounds=None)) is not None
    assert _call(conditional_wasserstein_distance, X, y, X, y) is not None
    assert _call(GaussianMixtureProxy(mixture_components=1, pca_components=2).fit, X, y) is not None


@pytest.mark.parametrize("cls", sorted(CHEAP, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_attack_on_empty_batch_or_nan_is_refused_clearly(cls):
    net = _net((4,))
    attack = cls(epsilon=0.1, bounds=None)
    X = torch.rand(3, 4)
    X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attack(net, X, torch.zeros(3, dtype=torch.long))
