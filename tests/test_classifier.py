"""AdversarialClassifier: the estimator contract, training, validation, persistence."""

from __future__ import annotations

import copy
import io
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from skorch.exceptions import DeviceWarning

from robustfit import AdversarialClassifier
from robustfit.attacks import FGSM, PGD, AutoAttack, GeneratorSynth
from robustfit.classifier import resolve_device
from robustfit.models import MLP, SmallCNN

FAST = dict(max_epochs=2, lr=3e-3, random_state=0, train_split=None)


def _layers(module, kind):
    return [m for m in module.modules() if isinstance(m, kind)]


def _weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tabular():
    """A 3-class tabular problem with standardized features (outside [0, 1])."""
    rng = np.random.RandomState(0)
    centers = rng.randn(3, 10) * 3
    y = rng.randint(0, 3, 400)
    X = (centers[y] + rng.randn(400, 10)).astype(np.float32)
    X = (X - X.mean(0)) / X.std(0)
    return X[:300], y[:300], X[300:], y[300:]


# ------------------------------------------------------------------- basics
def test_fit_predict_score_on_digits(pgd_clf, digits_small):
    _, _, Xte, yte = digits_small
    assert isinstance(pgd_clf.module_, torch.nn.Module)
    assert isinstance(pgd_clf.module_, SmallCNN)  # module=None builds a CNN for images
    np.testing.assert_array_equal(pgd_clf.classes_, np.arange(10))
    assert pgd_clf.input_shape_ == (1, 8, 8) and pgd_clf.n_features_in_ == 64
    assert isinstance(pgd_clf.attack_, PGD) and pgd_clf.attack_ is not pgd_clf.attack

    proba = pgd_clf.predict_proba(Xte)
    assert proba.shape == (len(Xte), 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    pred = pgd_clf.predict(Xte)
    assert pred.shape == (len(Xte),)
    np.testing.assert_array_equal(pred, pgd_clf.classes_[proba.argmax(1)])
    score = pgd_clf.score(Xte, yte)
    assert score == pytest.approx(np.mean(pred == yte))
    assert score > 0.7
    # torch tensors are accepted as well
    np.testing.assert_array_equal(pgd_clf.predict(torch.as_tensor(Xte)), pred)


def test_fit_returns_self(digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(max_epochs=1, random_state=0)
    assert clf.fit(Xtr[:200], ytr[:200]) is clf


def test_tabular_with_unbounded_attack(tabular):
    Xtr, ytr, Xte, yte = tabular
    clf = AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=3, bounds=None), max_epochs=10, lr=3e-3,
        random_state=0,
    ).fit(Xtr, ytr)
    assert isinstance(clf.module_, MLP)
    assert clf.predict(Xte).shape == (len(Xte),)
    assert clf.score(Xte, yte) > 0.8
    r = clf.robust_score(Xte, yte, attack=PGD(epsilon=0.1, steps=5, bounds=None))
    assert 0.0 <= r <= clf.score(Xte, yte)


def test_tabular_data_outside_default_box_rejected(tabular):
    Xtr, ytr, _, _ = tabular
    with pytest.raises(ValueError, match=r"outside the declared input box bounds=\(0, 1\)"):
        AdversarialClassifier(attack=PGD(epsilon=0.1), **FAST).fit(Xtr, ytr)
    # standard training has no box, so the same data is fine
    AdversarialClassifier(max_epochs=1, random_state=0).fit(Xtr, ytr)


def test_partial_fit_continues_training(digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(attack=FGSM(epsilon=0.1), **FAST).fit(Xtr, ytr)
    assert len(clf.history) == 2
    before = copy.deepcopy(clf.module_.state_dict())
    module = clf.module_
    clf.partial_fit(Xtr, ytr)
    assert len(clf.history) == 4
    assert clf.module_ is module  # not re-initialized
    assert not all(torch.equal(before[k], v) for k, v in clf.module_.state_dict().items())
    # fit, unlike partial_fit, starts over
    clf.fit(Xtr, ytr)
    assert len(clf.history) == 2


def test_partial_fit_first_call_with_classes(digits_small):
    Xtr, ytr, _, _ = digits_small
    mask = ytr < 5
    clf = AdversarialClassifier(**FAST)
    clf.partial_fit(Xtr[mask], ytr[mask], classes=np.arange(10))
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    assert clf.predict_proba(Xtr[:3]).shape == (3, 10)
    clf.partial_fit(Xtr[~mask], ytr[~mask])
    assert len(clf.history) == 4
    with pytest.raises(ValueError, match=r"not among classes_: \[11\]"):
        clf.partial_fit(Xtr[:2], np.array([1, 11]))


def test_string_labels(digits_small):
    Xtr, ytr, Xte, yte = digits_small
    names = np.array(["zero", "one", "two", "three", "four", "five", "six",
                      "seven", "eight", "nine"])
    clf = AdversarialClassifier(attack=FGSM(epsilon=0.1), max_epochs=8, lr=1e-2,
                                random_state=0).fit(Xtr, names[ytr])
    np.testing.assert_array_equal(clf.classes_, np.sort(names))
    pred = clf.predict(Xte)
    assert pred.dtype.kind == "U" and set(pred) <= set(names)
    assert clf.score(Xte, names[yte]) > 0.6
    r = clf.robust_score(Xte, names[yte], attack=PGD(epsilon=0.1, steps=3))
    assert 0.0 <= r <= clf.score(Xte, names[yte])
    with pytest.raises(ValueError, match="unseen"):
        clf.robust_score(Xte[:2], np.array(["zero", "ten"]), attack=PGD(epsilon=0.1))


# ------------------------------------------------------------------ seeding
def test_random_state_repeatable_and_global_rng_untouched(digits_small):
    Xtr, ytr, _, _ = digits_small
    kw = dict(attack=PGD(epsilon=0.1, steps=2), max_epochs=2, batch_size=64)
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = AdversarialClassifier(random_state=0, **kw).fit(Xtr[:300], ytr[:300])
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    b = AdversarialClassifier(random_state=0, **kw).fit(Xtr[:300], ytr[:300])
    c = AdversarialClassifier(random_state=1, **kw).fit(Xtr[:300], ytr[:300])
    assert _weights_equal(a.module_, b.module_)
    assert not _weights_equal(a.module_, c.module_)
    np.testing.assert_array_equal(a.history[:, "train_loss"], b.history[:, "train_loss"])


def test_random_state_as_randomstate_and_tensor_input(digits_small):
    Xtr, ytr, _, _ = digits_small
    X, y = torch.as_tensor(Xtr[:200]), torch.as_tensor(ytr[:200])
    kw = {k: v for k, v in FAST.items() if k != "random_state"}
    a = AdversarialClassifier(random_state=np.random.RandomState(5), **kw).fit(X, y)
    b = AdversarialClassifier(random_state=np.random.RandomState(5), **kw)
    b.fit(Xtr[:200], ytr[:200])
    assert _weights_equal(a.module_, b.module_)
    np.testing.assert_array_equal(a.classes_, np.arange(10))


def test_attack_zero_epsilon_equals_standard_training(digits_small):
    Xtr, ytr, _, _ = digits_small
    std = AdversarialClassifier(attack=None, **FAST).fit(Xtr[:300], ytr[:300])
    assert std.attack_ is None
    zero = AdversarialClassifier(attack=PGD(epsilon=0.0), **FAST).fit(Xtr[:300], ytr[:300])
    assert _weights_equal(std.module_, zero.module_)
    adv = AdversarialClassifier(attack=PGD(epsilon=0.2, steps=2), **FAST).fit(Xtr[:300], ytr[:300])
    assert not _weights_equal(std.module_, adv.module_)


def test_set_attack_none_switches_to_standard_training(digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=1), **FAST).fit(Xtr[:200], ytr[:200])
    assert clf.attack_ is not None
    clf.set_params(attack=None).fit(Xtr[:200], ytr[:200])
    assert clf.attack_ is None


def test_callable_attack_is_used_in_training(digits_small):
    Xtr, ytr, _, _ = digits_small
    calls = []

    def noise(module, X, y):
        calls.append(module.training)
        return (X + 0.05 * torch.randn_like(X)).clamp(0, 1)

    AdversarialClassifier(attack=noise, max_epochs=1, batch_size=100, random_state=0,
                          train_split=None).fit(Xtr[:300], ytr[:300])
    assert len(calls) == 3


# ------------------------------------------------------------- robustness
def test_pgd_training_beats_standard_training_under_pgd(digits):
    X, y = digits
    Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:1500], y[1200:1500]
    kw = dict(max_epochs=15, lr=1e-2, random_state=0, train_split=None)
    std = AdversarialClassifier(**kw).fit(Xtr, ytr)
    rob = AdversarialClassifier(attack=PGD(epsilon=0.2, steps=3), **kw).fit(Xtr, ytr)
    evaluation = PGD(epsilon=0.2, steps=10)
    torch.manual_seed(0)
    r_std = std.robust_score(Xte, yte, attack=evaluation)
    torch.manual_seed(0)
    r_rob = rob.robust_score(Xte, yte, attack=evaluation)
    assert std.score(Xte, yte) > 0.9 and rob.score(Xte, yte) > 0.7
    assert r_rob > r_std + 0.2, (r_std, r_rob)


def test_default_evaluation_attack_is_stronger(pgd_clf, digits_small):
    _, _, Xte, yte = digits_small
    train = pgd_clf.attack
    ev = pgd_clf.default_evaluation_attack()
    assert isinstance(ev, AutoAttack)
    assert (ev.epsilon, ev.norm, ev.bounds) == (train.epsilon, train.norm, train.bounds)
    assert ev.steps >= 100 and ev.attack_names == ("apgd-ce", "apgd-t") and ev.version == "fast"
    # a strong evaluation attack finds at least (nearly) as much as the training one
    X, y = Xte[:100], yte[:100]
    torch.manual_seed(0)
    strong = pgd_clf.robust_score(X, y, check=False)
    torch.manual_seed(0)
    weak = pgd_clf.robust_score(X, y, attack=train, check=False)
    assert strong <= weak + 0.02
    assert strong <= pgd_clf.score(X, y)


def test_robust_score_needs_a_threat_model(std_clf, digits_small):
    _, _, Xte, yte = digits_small
    with pytest.raises(ValueError, match=r"no training attack \(attack=None\)"):
        std_clf.robust_score(Xte, yte)
    # with an explicit attack it works
    assert 0.0 <= std_clf.robust_score(Xte[:50], yte[:50], attack=FGSM(epsilon=0.1)) <= 1.0


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("method", ["predict", "predict_proba", "robust_score", "score"])
def test_not_fitted(method, digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1))
    args = (Xtr[:5], ytr[:5]) if method in ("robust_score", "score") else (Xtr[:5],)
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(clf, method)(*args)


def _bad_inputs(X, y):
    nan = X.copy()
    nan[3, 0, 2, 2] = np.nan
    inf = X.copy()
    inf[0, 0, 0, 0] = np.inf
    return {
        "nan": (nan, y, r"NaN or infinite"),
        "inf": (inf, y, r"NaN or infinite"),
        "3d": (X[:, 0], y, r"got 3 with shape \(40, 8, 8\).*channel axis"),
        "1d": (X[:, 0, 0, 0], y, r"got 1 with shape \(40,\)"),
        "length": (X, y[:-1], r"different lengths: 40 and 39"),
        "one-class": (X, np.zeros_like(y), r"1 class\(es\), \[0\].*at least 2"),
        "2d-y": (X, np.stack([y, y], 1), r"y must be 1-dimensional"),
        "box": (X * 2 - 0.5, y, r"values in \[-0\.5, 1\.5\], outside .* bounds=\(0, 1\)"),
        "empty": (X[:0], y[:0], r"0 samples"),
    }


@pytest.mark.parametrize("case", ["nan", "inf", "3d", "1d", "length", "one-class", "2d-y",
                                  "box", "empty"])
def test_fit_rejects_bad_data(digits_small, case):
    Xtr, ytr, _, _ = digits_small
    X, y, pattern = _bad_inputs(Xtr[:40], ytr[:40])[case]
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1), max_epochs=1)
    with pytest.raises(ValueError, match=pattern):
        clf.fit(X, y)
    assert not hasattr(clf, "module_") or clf.module_ is None or not clf.initialized_


@pytest.mark.parametrize("params,pattern", [
    ({"attack": PGD(epsilon=-0.1)}, r"epsilon.*-0\.1"),
    ({"attack": PGD(norm="l1")}, r"norm.*'l1'"),
    ({"attack": FGSM(norm="L2")}, r"norm.*'L2'"),
    ({"attack": PGD(steps=0)}, r"steps.*got 0"),
    ({"attack": PGD(bounds=(1, 0))}, r"bounds.*\(1, 0\)"),
    ({"valid_attack": PGD(epsilon=-1)}, r"epsilon.*-1"),
    ({"attack": "pgd"}, r"attack must be None, an instance of Attack or a callable, got 'pgd'"),
    ({"lr_schedule": "step"}, r"lr_schedule.*'step'"),
    ({"amp": "fp16"}, r"amp.*'fp16'"),
    ({"attack_warmup": -1}, r"attack_warmup.*-1"),
    ({"cuda_graphs": "yes"}, r"cuda_graphs.*'yes'"),
    ({"fold_batchnorm": "on"}, r"fold_batchnorm.*'on'"),
    ({"cuda_graphs": True, "device": "cpu"}, r"cuda_graphs needs a CUDA device \(device='cpu'\)"),
])
def test_fit_rejects_bad_parameters(digits_small, params, pattern):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(max_epochs=1, **params)  # __init__ never validates
    with pytest.raises(ValueError, match=pattern):
        clf.fit(Xtr[:40], ytr[:40])


def test_predict_rejects_bad_data(pgd_clf, digits_small):
    _, _, Xte, _ = digits_small
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\).*fitted on \(1, 8, 8\)"):
        pgd_clf.predict(Xte[:, :, :4, :4])
    with pytest.raises(ValueError, match="NaN"):
        pgd_clf.predict(np.full_like(Xte[:2], np.nan))
    with pytest.raises(ValueError, match="channel axis"):
        pgd_clf.predict_proba(Xte[:, 0])
    with pytest.raises(ValueError, match="outside the declared input box"):
        pgd_clf.robust_score(Xte[:5] + 2, np.zeros(5, int), attack=PGD(epsilon=0.1))


# ---------------------------------------------------------------- history
def test_history_records_per_epoch(digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(
        attack=FGSM(epsilon=0.1), valid_attack=PGD(epsilon=0.1, steps=2),
        max_epochs=3, random_state=0,
    ).fit(Xtr[:300], ytr[:300])
    assert len(clf.history) == 3
    for key in ("train_loss", "valid_loss", "valid_acc", "valid_robust_acc"):
        values = clf.history[:, key]
        assert len(values) == 3 and all(np.isfinite(values)), key
    acc, racc = clf.history[:, "valid_acc"], clf.history[:, "valid_robust_acc"]
    assert all(0.0 <= r <= a + 1e-9 for r, a in zip(racc, acc))
    assert clf.history[0, "valid_robust_acc_best"] is True
    # without valid_attack there is no robust column
    plain = AdversarialClassifier(max_epochs=2, random_state=0).fit(Xtr[:300], ytr[:300])
    assert "valid_robust_acc" not in plain.history[-1]
    assert len(plain.history[:, "valid_acc"]) == 2


def test_valid_acc_with_labels_that_are_not_indices(digits_small):
    # labels {3, 7} are encoded as {0, 1}; valid_acc must compare like with like
    Xtr, ytr, _, _ = digits_small
    mask = (ytr == 3) | (ytr == 7)
    clf = AdversarialClassifier(max_epochs=5, lr=3e-3, random_state=0)
    clf.fit(Xtr[mask], ytr[mask])
    assert clf.history[-1, "valid_acc"] > 0.8
    names = np.where(ytr[mask] == 3, "three", "seven")
    clf.fit(Xtr[mask], names)
    assert clf.history[-1, "valid_acc"] > 0.8


def test_verbose_progress(digits_small, capsys):
    Xtr, ytr, _, _ = digits_small
    bar = io.StringIO()
    clf = AdversarialClassifier(
        attack=FGSM(epsilon=0.1), max_epochs=2, verbose=1, random_state=0, batch_size=64,
        proxy_data=(Xtr[200:300], ytr[200:300]), proxy_ratio=0.5,
        callbacks__progress__file=bar, callbacks__progress__disable=False,
    ).fit(Xtr[:200], ytr[:200])
    assert "progress" in dict(clf.callbacks_)
    out = capsys.readouterr()
    assert "train_loss" in out.out  # skorch's per-epoch table
    text = bar.getvalue()
    # 180 real training samples, 32 real per mixed batch of 64: 6 batches, not 3
    assert "epoch 1/2" in text and "epoch 2/2" in text and "/6" in text, text[-500:]
    # the table is never interrupted by the bar: every row is a line of its own
    rows = [line for line in out.out.splitlines() if line.strip()]
    assert rows[0].split()[0] == "epoch" and len(rows) == 4, out.out


def test_no_progress_bar_in_a_log_file(digits_small, capsys):
    Xtr, ytr, _, _ = digits_small
    AdversarialClassifier(max_epochs=1, verbose=1, random_state=0).fit(Xtr[:100], ytr[:100])
    err = capsys.readouterr().err
    assert "epoch 1/1" not in err  # stderr is not a terminal here: the table alone reports


# ----------------------------------------------------------------- device
def test_device_auto(monkeypatch):
    clf = AdversarialClassifier(device="auto")
    assert clf.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert clf.get_params()["device"] == "auto"
    assert clone(clf).get_params()["device"] == "auto"
    assert AdversarialClassifier(device="cpu").device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert clf.device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert clf.device == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"


def test_device_auto_fits_on_cpu(pgd_clf):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert pgd_clf.get_params()["device"] == "auto"
    assert next(pgd_clf.module_.parameters()).device.type == "cpu"


# ----------------------------------------------------------- persistence
@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_persistence_round_trip(pgd_clf, digits_small, how):
    _, _, Xte, yte = digits_small
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(pgd_clf))
    else:
        buf = io.BytesIO()
        joblib.dump(pgd_clf, buf)
        buf.seek(0)
        loaded = joblib.load(buf)
    np.testing.assert_array_equal(loaded.predict(Xte), pgd_clf.predict(Xte))
    np.testing.assert_allclose(loaded.predict_proba(Xte), pgd_clf.predict_proba(Xte))
    assert loaded.get_params()["device"] == "auto"
    assert loaded.attack_.get_params() == pgd_clf.attack_.get_params()
    np.testing.assert_array_equal(loaded.classes_, pgd_clf.classes_)
    torch.manual_seed(0)
    a = loaded.robust_score(Xte[:50], yte[:50], attack=PGD(epsilon=0.1, steps=2))
    torch.manual_seed(0)
    b = pgd_clf.robust_score(Xte[:50], yte[:50], attack=PGD(epsilon=0.1, steps=2))
    assert a == b


def test_cuda_pickle_loads_on_cpu_with_warning(pgd_clf, digits_small):
    if torch.cuda.is_available():
        pytest.skip("simulates a CUDA-trained model on a machine without CUDA")
    _, _, Xte, _ = digits_small
    clf = pickle.loads(pickle.dumps(pgd_clf))  # a private copy
    clf.__dict__["device"] = "cuda"  # as if fitted on a GPU machine
    blob = pickle.dumps(clf)
    with pytest.warns(DeviceWarning, match="(?i)cuda"):
        loaded = pickle.loads(blob)
    assert torch.device(loaded.device).type == "cpu"
    np.testing.assert_array_equal(loaded.predict(Xte), pgd_clf.predict(Xte))


# ------------------------------------------------------------------ modules
def test_module_class_gets_n_classes_and_in_channels(digits_small):
    Xtr, ytr, _, _ = digits_small
    mask = ytr < 3  # 3 classes, not SmallCNN's default 10
    X2 = np.concatenate([Xtr[mask], 1 - Xtr[mask]], axis=1)  # 2 channels
    clf = AdversarialClassifier(module=SmallCNN, module__input_size=8, **FAST)
    clf.fit(X2, ytr[mask])
    assert _layers(clf.module_, torch.nn.Linear)[-1].out_features == 3
    assert _layers(clf.module_, torch.nn.Conv2d)[0].in_channels == 2
    assert clf.predict_proba(X2[:4]).shape == (4, 3)
    # explicit module__ values win over the inferred ones
    clf = AdversarialClassifier(module=SmallCNN, module__input_size=8, module__n_classes=5,
                                **FAST).fit(X2, ytr[mask])
    assert _layers(clf.module_, torch.nn.Linear)[-1].out_features == 5


def test_module_class_gets_n_features(tabular):
    Xtr, ytr, _, _ = tabular
    clf = AdversarialClassifier(module=MLP, module__hidden=(16,), **FAST).fit(Xtr, ytr)
    linear = _layers(clf.module_, torch.nn.Linear)
    assert [(m.in_features, m.out_features) for m in linear] == [(10, 16), (16, 3)]


def test_module_instance(digits_small):
    Xtr, ytr, _, _ = digits_small
    net = SmallCNN(n_classes=10, input_size=8, width=8)
    clf = AdversarialClassifier(module=net, **FAST).fit(Xtr[:200], ytr[:200])
    assert clf.module_ is net
    assert clf.predict(Xtr[:5]).shape == (5,)


def test_module_none_honours_module_params(digits_small, tabular):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(module=None, module__width=8, **FAST).fit(Xtr[:200], ytr[:200])
    assert isinstance(clf.module_, SmallCNN)
    assert _layers(clf.module_, torch.nn.Conv2d)[0].out_channels == 8
    Xt, yt, _, _ = tabular
    clf = AdversarialClassifier(module=None, module__hidden=(7,), **FAST).fit(Xt, yt)
    assert isinstance(clf.module_, MLP)
    assert [m.out_features for m in _layers(clf.module_, torch.nn.Linear)] == [7, 3]


# ------------------------------------------------------------------ params
def test_attack_params_are_grid_searchable(digits_small):
    clf = AdversarialClassifier(attack=PGD(epsilon=0.3, steps=3))
    params = clf.get_params()
    assert params["attack__epsilon"] == 0.3 and params["attack__steps"] == 3
    other = clone(clf).set_params(attack__epsilon=0.05, attack__norm="l2")
    assert (other.attack.epsilon, other.attack.norm) == (0.05, "l2")
    assert (clf.attack.epsilon, clf.attack.norm) == (0.3, "linf")
    assert other.attack is not clf.attack
    with pytest.raises(ValueError, match=r"cannot set attack__epsilon: attack is None"):
        AdversarialClassifier().set_params(attack__epsilon=0.1)
    with pytest.raises(ValueError, match="epsilonn"):
        clf.set_params(attack__epsilonn=0.1)


def test_refit_picks_up_new_attack_params(digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=1), max_epochs=1,
                                random_state=0).fit(Xtr[:200], ytr[:200])
    assert clf.attack_.epsilon == 0.1
    clf.set_params(attack__epsilon=0.05).fit(Xtr[:200], ytr[:200])
    assert clf.attack_.epsilon == 0.05


def test_attack_warmup_does_not_mutate_user_attack(digits_small):
    Xtr, ytr, _, _ = digits_small
    attack = PGD(epsilon=0.2, steps=1)
    clf = AdversarialClassifier(attack=attack, attack_warmup=4, max_epochs=1,
                                random_state=0).fit(Xtr[:200], ytr[:200])
    assert attack.epsilon == 0.2
    assert 0.0 < clf.attack_.epsilon < 0.2


def test_accelerate_mixin_is_refused_with_a_reason():
    hf = pytest.importorskip("skorch.hf")
    with pytest.raises(TypeError, match="AccelerateMixin.*clean data.*torchrun"):
        type("AcceleratedNet", (hf.AccelerateMixin, AdversarialClassifier), {})


def test_bf16_autocast_logits_reach_numpy_as_float32(digits_small):
    """amp="bf16" (the default on a GPU): the module's logits come out of autocast in bfloat16;
    the validation score, predict_proba and robust_score still work, in float32 (the first
    GPU run found predict_proba failing on bfloat16 logits)."""
    Xtr, ytr, Xte, yte = digits_small
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), amp="bf16", max_epochs=2,
                                lr=1e-2, random_state=0).fit(Xtr, ytr)
    assert np.isfinite(clf.history[-1, "valid_acc"])
    proba = clf.predict_proba(Xte)
    assert proba.dtype == np.float32 and np.allclose(proba.sum(axis=1), 1, atol=1e-3)
    assert 0 <= clf.robust_score(Xte[:50], yte[:50], attack=PGD(epsilon=0.1, steps=3)) <= 1


class _BNDigitsNet(torch.nn.Module):
    """conv-bn-relu twice, for the 8x8 digits."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(), torch.nn.Flatten())
        self.head = torch.nn.Linear(8 * 64, 10)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("attack", [PGD(epsilon=0.1, steps=3), GeneratorSynth(epsilon=0.1)],
                         ids=["PGD", "GeneratorSynth"])
def test_fold_batchnorm_runs_the_training_attack_on_the_folded_network(digits_small, attack,
                                                                     monkeypatch):
    """fold_batchnorm=True: PGD runs on the traced module with conv-bn pairs folded (and
    trains as without folding, up to rounding); GeneratorSynth, which needs the network's
    weight gradients, runs on the module itself."""
    from robustfit.attacks import _fold

    calls = []
    original = _fold._FoldedConvBN.forward
    monkeypatch.setattr(_fold._FoldedConvBN, "forward",
                        lambda self, x: calls.append(1) or original(self, x))
    Xtr, ytr, _, _ = digits_small
    fits = [AdversarialClassifier(_BNDigitsNet, attack=clone(attack), fold_batchnorm=fold,
                                  max_epochs=2, lr=1e-2, train_split=None,
                                  random_state=0).fit(Xtr, ytr)
            for fold in (False, True)]
    losses = [np.array(f.history[:, "train_loss"]) for f in fits]
    if isinstance(attack, PGD):
        assert calls  # the folded convolutions ran
        np.testing.assert_allclose(losses[1], losses[0], rtol=2e-2)
    else:
        assert not calls
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    assert not any("forward" in vars(m) for m in fits[1].module_.modules())
    from robustfit.attacks._fold import _FOLDED
    assert fits[1].module_ not in _FOLDED  # released when fit ended
