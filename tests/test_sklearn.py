"""scikit-learn integration: clone, grid search, pipelines, scorers, robust_accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.metrics import RobustScorer, make_robust_scorer, robust_accuracy

SCORER_ATTACK = PGD(epsilon=0.2, steps=5)


def to_images(X):
    """Flat (n, 64) digits to (n, 1, 8, 8) images (module level: picklable)."""
    return np.asarray(X, dtype=np.float32).reshape(-1, 1, 8, 8)


def _small_clf(**kw):
    params = dict(attack=PGD(epsilon=0.1, steps=2), max_epochs=12, lr=1e-2, batch_size=32,
                  random_state=0, train_split=None)
    params.update(kw)
    return AdversarialClassifier(**params)


@pytest.fixture(scope="module")
def data(digits):
    X, y = digits
    return X[:400], y[:400], X[1500:1700], y[1500:1700]


def test_clone_is_unfitted_copy_with_equal_params(pgd_clf):
    c = clone(pgd_clf)
    assert not hasattr(c, "module_") or not c.initialized_
    p0, p1 = pgd_clf.get_params(deep=False), c.get_params(deep=False)
    assert p0.keys() == p1.keys()
    assert c.attack is not pgd_clf.attack
    assert c.attack.get_params() == pgd_clf.attack.get_params()
    assert p1["device"] == p0["device"] == "auto"
    for k in ("lr", "max_epochs", "random_state", "lr_schedule", "amp", "attack_warmup"):
        assert p1[k] == p0[k]


def _public_callbacks():
    from skorch.callbacks import Callback

    import robustfit.callbacks as cbs
    import robustfit.recipes as recipes

    return [k for mod in (cbs, recipes) for name, k in vars(mod).items()
            if not name.startswith("_") and isinstance(k, type) and issubclass(k, Callback)
            and k.__module__ == mod.__name__]


@pytest.mark.parametrize("kind", _public_callbacks(), ids=lambda k: k.__name__)
def test_every_public_callback_clones_with_its_parameters(kind, tmp_path):
    """skorch reads a callback's parameters from its attributes; a subclass that fixes
    some of its parent's (ResumableCheckpoint's monitor, LRSchedule's policy) must still
    clone, alone and inside a classifier (GridSearchCV clones it for every fit)."""
    args = {"RobustValidation": (PGD(epsilon=0.1, steps=2),), "ResumableCheckpoint": (str(tmp_path),)}
    cb = kind(*args.get(kind.__name__, ()))
    twin = clone(cb)
    assert type(twin) is kind and twin.get_params(deep=False).keys() == cb.get_params(deep=False).keys()
    clf = clone(AdversarialClassifier(callbacks=[("mine", cb)]))
    assert type(clf.callbacks[0][1]) is kind


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_over_attack_epsilon(data, n_jobs):
    Xtr, ytr, _, _ = data
    grid = GridSearchCV(
        _small_clf(), {"attack__epsilon": [0.0, 0.2]}, cv=2, n_jobs=n_jobs,
        scoring=make_robust_scorer(SCORER_ATTACK), error_score="raise",
    ).fit(Xtr, ytr)
    res = grid.cv_results_
    assert [p["attack__epsilon"] for p in res["params"]] == [0.0, 0.2]
    scores = res["mean_test_score"]
    assert np.all((0.0 <= scores) & (scores <= 1.0))
    # adversarial training at 0.2 is more robust than standard training
    assert scores[1] > scores[0] + 0.1
    assert grid.best_params_ == {"attack__epsilon": 0.2}
    assert grid.best_estimator_.attack_.epsilon == 0.2
    # the estimator given to the search is left untouched
    assert grid.estimator.attack.epsilon == 0.1


def test_grid_search_over_pipeline(data):
    Xtr, ytr, _, _ = data
    pipe = Pipeline([
        ("reshape", FunctionTransformer(to_images)),
        ("clf", _small_clf()),
    ])
    grid = GridSearchCV(
        pipe, {"clf__attack__epsilon": [0.0, 0.2]}, cv=2,
        scoring=make_robust_scorer(SCORER_ATTACK), error_score="raise",
    ).fit(Xtr.reshape(len(Xtr), -1), ytr)
    scores = grid.cv_results_["mean_test_score"]
    assert scores[1] > scores[0] + 0.1
    best = grid.best_estimator_
    assert best.named_steps["clf"].attack_.epsilon == grid.best_params_["clf__attack__epsilon"]
    assert best.predict(Xtr[:5].reshape(5, -1)).shape == (5,)


def test_cross_validate_with_robust_scorer(data):
    Xtr, ytr, _, _ = data
    res = cross_validate(
        _small_clf(), Xtr, ytr, cv=2,
        scoring={"acc": "accuracy", "robust": make_robust_scorer(SCORER_ATTACK)},
        error_score="raise",
    )
    acc, rob = res["test_acc"], res["test_robust"]
    assert len(acc) == len(rob) == 2
    # a point counts as robust only if it is also classified correctly
    assert np.all(rob <= acc)
    assert np.all(acc > 0.5) and np.all(rob > 0.0)


def test_scorer_with_default_attack(pgd_clf, data):
    _, _, Xte, yte = data
    scorer = make_robust_scorer()
    assert isinstance(scorer, RobustScorer) and scorer.attack is None
    torch.manual_seed(0)
    a = scorer(pgd_clf, Xte[:50], yte[:50])
    torch.manual_seed(0)
    b = pgd_clf.robust_score(Xte[:50], yte[:50])
    assert a == b
    assert "PGD" in repr(make_robust_scorer(SCORER_ATTACK))
    with pytest.raises(ValueError, match="sample_weight"):
        scorer(pgd_clf, Xte[:5], yte[:5], sample_weight=np.ones(5))


# --------------------------------------------------------- robust_accuracy
def _bn_module():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )


def test_robust_accuracy_on_plain_module(std_module, data):
    _, _, Xte, yte = data
    X, y = torch.as_tensor(Xte), torch.as_tensor(yte)
    attack = PGD(epsilon=0.05, steps=3)
    torch.manual_seed(0)
    got = robust_accuracy(std_module, Xte, yte, attack=attack, batch_size=len(Xte))
    # the same computation by hand
    torch.manual_seed(0)
    x_adv = attack(std_module, X, y)
    with torch.no_grad():
        ok = (std_module(X).argmax(1) == y) & (std_module(x_adv).argmax(1) == y)
    assert got == pytest.approx(ok.float().mean().item())
    with torch.no_grad():
        clean = (std_module(X).argmax(1) == y).float().mean().item()
    assert got < clean  # the attack breaks some points
    # epsilon 0 gives the clean accuracy; batching does not change the result
    assert robust_accuracy(std_module, X, y, attack=PGD(epsilon=0.0), batch_size=7) == \
        pytest.approx(clean)


def test_robust_accuracy_restores_module_state(data):
    _, _, Xte, yte = data
    net = _bn_module().train()
    net(torch.as_tensor(Xte[:64]))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    robust_accuracy(net, Xte[:32], yte[:32], attack=PGD(epsilon=0.1, steps=2))
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_robust_accuracy_on_pipeline(data):
    Xtr, ytr, Xte, yte = data
    pipe = Pipeline([("reshape", FunctionTransformer(to_images)), ("clf", _small_clf())])
    pipe.fit(Xtr.reshape(len(Xtr), -1), ytr)
    torch.manual_seed(0)
    via_pipe = robust_accuracy(pipe, Xte.reshape(len(Xte), -1), yte, attack=SCORER_ATTACK)
    torch.manual_seed(0)
    direct = robust_accuracy(pipe.named_steps["clf"], Xte, yte, attack=SCORER_ATTACK)
    assert via_pipe == direct
    assert 0.0 < via_pipe < pipe.score(Xte.reshape(len(Xte), -1), yte)


def test_robust_accuracy_errors(std_module, std_clf, data):
    _, _, Xte, yte = data
    with pytest.raises(ValueError, match="attack is None"):
        robust_accuracy(std_module, Xte, yte)
    with pytest.raises(ValueError, match="no training attack"):
        robust_accuracy(std_clf, Xte, yte)
    with pytest.raises(TypeError, match="LogisticRegression"):
        from sklearn.linear_model import LogisticRegression
        robust_accuracy(LogisticRegression(), Xte, yte, attack=SCORER_ATTACK)
    with pytest.raises(TypeError, match="attack must be"):
        robust_accuracy(std_module, Xte, yte, attack=42)
    with pytest.raises(ValueError, match="unknown attack name"):
        robust_accuracy(std_module, Xte, yte, attack="deepfool", epsilon=0.1)
    with pytest.raises(ValueError, match="needs a threat model"):
        robust_accuracy(std_module, Xte, yte, attack="pgd")
    with pytest.raises(ValueError, match="epsilon"):
        robust_accuracy(std_module, Xte, yte, attack=PGD(epsilon=-1))
    with pytest.raises(ValueError, match="outside the declared input box"):
        robust_accuracy(std_module, Xte + 1, yte, attack=SCORER_ATTACK)
