"""Training recipes: EMA, AWP, MART, best-robust checkpoints, the collapse guard,
label smoothing. Digits-sized, a few epochs each."""

from __future__ import annotations

import copy
import pickle
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback
from torch import nn

from robustfit import AdversarialClassifier
from robustfit.attacks import APGD, FGSM, PGD, Langevin
from robustfit.callbacks import RobustValidation, restore_weights, snapshot_weights
from robustfit.losses import MART, TRADES, AdversarialCE, PrimalDual
from robustfit.metrics import make_robust_scorer
from robustfit.recipes import AWP, EMA, CollapseGuard


def bn_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 10))


@pytest.fixture(scope="module")
def data(digits):
    X, y = digits
    return X[:300].copy(), y[:300].copy()


def _params(module):
    return [t.detach().clone() for t in list(module.parameters()) + list(module.buffers())]


class RecordRaw(Callback):
    """The raw weights after every training step (EMA is first, so they are raw here)."""

    def initialize(self):
        self.steps_ = []
        return self

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.steps_.append(_params(net.module_))


class RecordEpochs(Callback):
    """A snapshot of the weights after every epoch (after the default callbacks)."""

    def initialize(self):
        self.weights_ = []
        return self

    def on_epoch_end(self, net, **kwargs):
        self.weights_.append(snapshot_weights(net))


# ------------------------------------------------------------------------ EMA
def test_ema_matches_a_hand_computed_average_and_predict_uses_it(data):
    X, y = data
    rec = RecordRaw()
    clf = AdversarialClassifier(
        bn_net, attack=PGD(epsilon=0.1, steps=2), ema=EMA(decay=0.8, warmup=0), max_epochs=2,
        train_split=None, random_state=0, callbacks=[("rec", rec)],
    ).fit(X, y)
    # the average, by hand: the first step's weights, then lerp with 1 - decay
    avg = [t.double() for t in rec.steps_[0]]
    for step in rec.steps_[1:]:
        avg = [a * 0.8 + t.double() * 0.2 if t.is_floating_point() else t.double()
               for a, t in zip(avg, step)]
    held = _params(clf.module_)
    for a, h in zip(avg, held):  # parameters and BatchNorm buffers alike
        torch.testing.assert_close(h.double(), a, rtol=1e-5, atol=1e-6)
    raw = rec.steps_[-1]
    assert any(not torch.allclose(h, r) for h, r in zip(held, raw) if h.is_floating_point())
    ema = dict(clf.callbacks_)["ema"]
    assert ema.holds_average_
    for r, kept in zip(raw, ema.average_):  # the raw weights are kept aside
        assert torch.equal(r, kept)
    # predict and robust_score run the averaged module; the raw one predicts otherwise
    module = clf.module_.eval()
    with torch.no_grad():
        proba_avg = F.softmax(module(torch.as_tensor(X)), dim=1).numpy()
    np.testing.assert_allclose(clf.predict_proba(X), proba_avg, rtol=1e-5, atol=1e-6)
    with ema.raw_weights(clf):
        proba_raw = clf.predict_proba(X)
    assert not np.allclose(proba_raw, proba_avg, atol=1e-4)
    np.testing.assert_allclose(clf.predict_proba(X), proba_avg, rtol=1e-5, atol=1e-6)
    # pickling keeps the average in the module and the raw weights aside
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(back.predict_proba(X), proba_avg, rtol=1e-5, atol=1e-6)
    back.partial_fit(X, y)  # trains on from the raw weights
    assert dict(back.callbacks_)["ema"].holds_average_


def test_ema_leaves_the_training_trajectory_alone(data):
    X, y = data
    kw = dict(attack=PGD(epsilon=0.1, steps=2), max_epochs=2, random_state=0)
    plain = AdversarialClassifier(**kw).fit(X, y)
    avg = AdversarialClassifier(ema=EMA(decay=0.9, warmup=0), **kw).fit(X, y)
    assert plain.history[:, "train_loss"] == avg.history[:, "train_loss"]
    same = AdversarialClassifier(ema=EMA(decay=0.0), **kw).fit(X, y)  # decay 0: the raw weights
    np.testing.assert_array_equal(same.predict_proba(X), plain.predict_proba(X))


def test_ema_warmup_copies_the_weights(data):
    X, y = data
    clf = AdversarialClassifier(attack=None, ema=EMA(decay=0.99, warmup=5), max_epochs=2,
                                random_state=0).fit(X, y)
    ema = dict(clf.callbacks_)["ema"]
    assert ema.updates_ == 0  # still in the warm-up: the average is the weights
    for a, r in zip(_params(clf.module_), ema.average_):
        assert torch.equal(a, r)


# ------------------------------------------------------------------------ AWP
def _step_setup(data, awp, objective=None):
    X, y = data
    clf = AdversarialClassifier(
        bn_net, attack=PGD(epsilon=0.1, steps=2, random_start=False), objective=objective,
        awp=awp, max_epochs=1, train_split=None, random_state=0, lr_schedule=None,
    ).fit(X[:64], y[:64])
    return clf, torch.as_tensor(X[:32]), torch.as_tensor(clf.classes_.searchsorted(y[:32]))


@pytest.mark.parametrize("objective", [None, TRADES(beta=6.0)], ids=["pgd-at", "trades"])
def test_awp_restores_weights_exactly_and_changes_the_gradient(data, objective):
    clf, Xb, yb = _step_setup(data, AWP(gamma=0.05), objective)
    ref = copy.deepcopy(clf).set_params(awp=AWP(gamma=0.0))
    ref._prepare_fit(Xb.numpy(), clf.classes_[yb.numpy()], reset=False)
    before = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    for net in (clf, ref):
        net.optimizer_.zero_grad()
        net.train_step_single((Xb, yb))
    after = clf.module_.state_dict()
    for k, v in before.items():
        if "num_batches" in k:  # BatchNorm saw the batch once, as without AWP
            assert torch.equal(after[k], ref.module_.state_dict()[k])
        elif "running" not in k:  # every parameter is back, bit for bit
            assert torch.equal(after[k], v), k
    g_awp = [p.grad for p in clf.module_.parameters()]
    g_ref = [p.grad for p in ref.module_.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(g_awp, g_ref))


def test_awp_perturbation_is_layerwise_gamma_times_the_weight_norm(data):
    clf, Xb, yb = _step_setup(data, AWP(gamma=0.02))
    X_adv = clf.attack_.perturb(clf.module_, Xb, yb)
    before = [p.detach().clone() for p in clf.module_.parameters()]
    clf.awp_.perturb(clf, Xb, X_adv, yb)
    for p, b in zip(clf.module_.parameters(), before):
        if p.dim() > 1:
            ratio = float((p.detach() - b).norm() / b.norm())
            assert ratio == pytest.approx(0.02, rel=1e-4)
        else:  # biases and BatchNorm's affine parameters stay
            assert torch.equal(p, b)
    clf.awp_.restore(clf)
    assert all(torch.equal(p, b) for p, b in zip(clf.module_.parameters(), before))


def test_awp_changes_the_update_and_respects_warmup(data):
    X, y = data
    kw = dict(attack=PGD(epsilon=0.1, steps=2), max_epochs=2, random_state=0)
    plain = AdversarialClassifier(**kw).fit(X, y)
    awp = AdversarialClassifier(awp=AWP(gamma=0.05), **kw).fit(X, y)
    late = AdversarialClassifier(awp=AWP(gamma=0.05, warmup=1), **kw).fit(X, y)
    off = AdversarialClassifier(awp=AWP(gamma=0.0), **kw).fit(X, y)
    loss = lambda c: c.history[:, "train_loss"]  # noqa: E731
    assert loss(off) == loss(plain)
    assert loss(awp)[0] != loss(plain)[0]
    assert loss(late)[0] == loss(plain)[0] and loss(late)[1] != loss(plain)[1]


def test_awp_leaves_the_dual_variable_alone(data):
    X, y = data
    kw = dict(attack=Langevin(epsilon=0.1, steps=2), max_epochs=1, random_state=0,
              objective=PrimalDual(margin=0.01, dual_lr=0.05))
    plain = AdversarialClassifier(**kw).fit(X, y)
    awp = AdversarialClassifier(awp=AWP(gamma=0.0), **kw).fit(X, y)
    assert awp.objective_.nu_ == plain.objective_.nu_


# ----------------------------------------------------------------------- MART
class _Net:
    def get_loss(self, y_pred, y, training=False):
        return F.cross_entropy(y_pred, y)


def test_mart_matches_a_hand_computation():
    rng = np.random.RandomState(0)
    za, zc = rng.randn(6, 4) * 2, rng.randn(6, 4) * 2
    y = np.array([0, 1, 2, 3, 0, 2])
    beta = 3.0
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731,E501
    pa, pc = softmax(za), softmax(zc)
    rows = np.arange(6)
    ce = -np.log(pa[rows, y]).mean()
    wrong = pa.copy()
    wrong[rows, y] = -1
    margin = -np.log(1 - wrong.max(1)).mean()
    kl = (pc * (np.log(pc) - np.log(pa))).sum(1)
    expected = ce + margin + beta * (kl * (1 - pc[rows, y])).mean()
    got = MART(beta=beta).loss(_Net(), torch.tensor(za, dtype=torch.float32), torch.tensor(y),
                               torch.tensor(zc, dtype=torch.float32))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    no_kl = MART(beta=0.0).loss(_Net(), torch.tensor(za, dtype=torch.float32), torch.tensor(y),
                                torch.tensor(zc, dtype=torch.float32))
    assert float(no_kl) == pytest.approx(ce + margin, rel=1e-5)


def test_mart_margin_term_is_exact_for_confident_wrong_predictions():
    za = torch.tensor([[40.0, 0.0, 0.0]], requires_grad=True)  # p_0 = 1 - 2e-18 in float32: 1
    zc = torch.zeros(1, 3)
    loss = MART(beta=1.0).loss(_Net(), za, torch.tensor([1]), zc)
    # CE = 40 + log(1 + e^-40 + 1) ~ 40, margin = -log(1 - p_0) = 40 - log 2
    assert loss.item() > 79
    loss.backward()
    assert torch.isfinite(za.grad).all()


# --------------------------------------------------- best checkpoint, early stop
class ScoredAt:
    """A validation 'attack' that leaves the inputs clean at call ``good`` only.

    Every other call returns blank inputs, so the robust score is best at
    exactly that epoch: a known best epoch for the checkpoint tests.
    """

    def __init__(self, good):
        self.good = good
        self.calls = 0
        self.sizes = []

    def __call__(self, module, X, y):
        self.calls += 1
        self.sizes.append(len(X))
        return X if self.calls == self.good else torch.zeros_like(X)


def test_best_robust_checkpoint_is_restored(data):
    X, y = data
    rec = RecordEpochs()
    clf = AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=2), max_epochs=4, random_state=0,
        valid_attack=RobustValidation(ScoredAt(good=2), restore_best=True, max_samples=20),
        callbacks=[("rec", rec)],
    ).fit(X, y)
    rv = dict(clf.callbacks_)["valid_robust_acc"]
    scores = clf.history[:, "valid_robust_acc"]
    assert int(np.argmax(scores)) == 1 and rv.restored_epoch_ == 2
    assert clf.history[:, "valid_robust_acc_best"][:2] == [True, True]
    best = rec.weights_[1]["module"]
    last = rec.weights_[-1]["module"]
    state = clf.module_.state_dict()
    assert all(torch.equal(state[k], best[k]) for k in best)
    assert not all(torch.equal(state[k], last[k]) for k in last)
    assert set(rv.attack.sizes) == {20}  # a fixed subset of 20 validation samples


def test_robust_validation_every_n_epochs_and_patience(data):
    X, y = data
    clf = AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=2), max_epochs=5, random_state=0,
        valid_attack=RobustValidation(PGD(epsilon=0.1, steps=2), every=2),
    ).fit(X, y)
    measured = [i + 1 for i, row in enumerate(clf.history) if "valid_robust_acc" in row]
    assert measured == [2, 4, 5]  # every 2 epochs, and the last
    stopped = AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=2), max_epochs=6, random_state=0,
        valid_attack=RobustValidation(ScoredAt(good=2), patience=2, restore_best=True),
    ).fit(X, y)
    assert len(stopped.history) == 4  # best at 2, no improvement at 3 and 4: stop


def test_best_checkpoint_restores_the_average_with_ema(data):
    X, y = data
    rec = RecordEpochs()
    clf = AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=2), max_epochs=3, random_state=0,
        ema=EMA(decay=0.5, warmup=0), callbacks=[("rec", rec)],
        valid_attack=RobustValidation(ScoredAt(good=2), restore_best=True),
    ).fit(X, y)
    snap = rec.weights_[1]
    state = clf.module_.state_dict()
    assert all(torch.equal(state[k], snap["module"][k]) for k in state)  # the epoch-2 average
    ema = dict(clf.callbacks_)["ema"]
    assert all(torch.equal(a, b) for a, b in zip(ema.average_, snap["callbacks"]["ema"]["average"]))


# ---------------------------------------------------------------------- guard
class BreakAt(Callback):
    """Forces a collapse: from epoch ``epoch`` on, every step leaves a constant classifier."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_batch_end(self, net, training=False, **kwargs):
        if training and len(net.history) >= self.epoch:
            last = [m for m in net.module_.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.copy_(torch.arange(last.bias.numel(), dtype=last.bias.dtype))


def test_guard_restores_the_last_good_weights_and_stops(data):
    X, y = data
    rec = RecordEpochs()
    clf = AdversarialClassifier(
        attack=FGSM(epsilon=0.1), max_epochs=5, lr=1e-2, random_state=0,
        guard=CollapseGuard(attack=PGD(epsilon=0.02, steps=2), max_samples=100),
        callbacks=[("break", BreakAt(3)), ("rec", rec)],
    )
    with pytest.warns(UserWarning, match="catastrophic overfitting at epoch 3"):
        clf.fit(X, y)
    assert len(clf.history) == 3  # stopped at the collapse
    assert clf.history[-1, "guard_collapse"] is True
    acc = clf.history[:, "guard_robust_acc"]
    assert acc[2] < acc[1] - 0.2
    good = rec.weights_[1]["module"]  # epoch 2's weights are back
    assert all(torch.equal(v, good[k]) for k, v in clf.module_.state_dict().items())
    assert dict(clf.callbacks_)["guard"].collapses_ == [3]


def test_guard_restore_mode_trains_on_and_no_false_alarm(data):
    X, y = data
    clf = AdversarialClassifier(
        attack=FGSM(epsilon=0.1), max_epochs=4, lr=1e-2, random_state=0,
        # the broken model predicts one class (about 0.1 robust accuracy); at
        # epoch 2 the model is still weak (about 0.3), so a drop of 0.1 is a collapse
        guard=CollapseGuard(attack=PGD(epsilon=0.02, steps=2), max_samples=100,
                            on_collapse="restore", drop=0.1),
        callbacks=[("break", BreakAt(3))],
    )
    with pytest.warns(UserWarning, match="training goes on"):
        clf.fit(X, y)
    assert len(clf.history) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        healthy = AdversarialClassifier(attack=FGSM(epsilon=0.1), max_epochs=3, random_state=0,
                                        guard=CollapseGuard(max_samples=100)).fit(X, y)
    assert "guard_collapse" not in healthy.history[-1]
    assert len(healthy.history[:, "guard_robust_acc"]) == 3
    # the default check: APGD-CE with 10 iterations in the training threat model
    check = dict(healthy.callbacks_)["guard"].attack_
    assert isinstance(check, APGD)
    assert (check.epsilon, check.norm, check.steps, check.loss, check.bounds) == \
        (0.1, "linf", 10, "ce", (0.0, 1.0))


class DrawingPGD(PGD):
    """PGD that also draws from every global generator, as foreign check code may."""

    def perturb(self, module, X, y):
        torch.rand(3)
        np.random.rand(3)
        random.random()
        return super().perturb(module, X, y)


def _global_draws():
    return torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()


def _seed_globals():
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)


@pytest.mark.parametrize("random_state", [0, None])
@pytest.mark.parametrize("check", ["guard", "valid_attack"])
def test_checks_leave_the_training_random_streams_alone(data, random_state, check):
    # A guard that never fires and robust validation that restores nothing must
    # leave training exactly as it is without them: same losses, same weights,
    # and the global generators where the plain fit leaves them. Unseeded, the
    # fit draws its random starts and shuffling from torch's global generator,
    # so a check drawing from it would shift every later batch.
    X, y = data
    kw = dict(attack=FGSM(epsilon=0.1), max_epochs=3, random_state=random_state)
    extra = {"guard": CollapseGuard(attack=DrawingPGD(epsilon=0.1, steps=2), max_samples=64,
                                    drop=0.99)} if check == "guard" else \
        {"valid_attack": RobustValidation(DrawingPGD(epsilon=0.1, steps=2), max_samples=64)}
    _seed_globals()
    plain = AdversarialClassifier(**kw).fit(X, y)
    after_plain = _global_draws()
    _seed_globals()
    checked = AdversarialClassifier(**kw, **extra).fit(X, y)
    after_checked = _global_draws()
    key = "guard_robust_acc" if check == "guard" else "valid_robust_acc"
    assert len(checked.history[:, key]) == 3  # the check ran every epoch
    assert "guard_collapse" not in checked.history[-1]
    assert checked.history[:, "train_loss"] == plain.history[:, "train_loss"]
    for a, b in zip(_params(plain.module_), _params(checked.module_)):
        assert torch.equal(a, b)
    assert after_checked == after_plain


def test_guard_without_a_threat_model_says_what_to_pass(data):
    X, y = data
    clf = AdversarialClassifier(attack=None, max_epochs=1, guard=CollapseGuard())
    with pytest.raises(ValueError, match=r"CollapseGuard\(attack=APGD"):
        clf.fit(X, y)


# ------------------------------------------------------------- label smoothing
def test_label_smoothing_changes_the_loss_as_expected(data):
    X, y = data
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), max_epochs=1, random_state=0,
                                criterion__label_smoothing=0.2).fit(X, y)
    logits = torch.randn(8, 10)
    yt = torch.arange(8)
    log_p = F.log_softmax(logits, dim=1)
    expected = (0.8 * -log_p[torch.arange(8), yt] + 0.2 * -log_p.mean(dim=1)).mean()
    torch.testing.assert_close(clf.get_loss(logits, yt, training=True), expected)
    # every objective's cross-entropy goes through the criterion
    clean = F.cross_entropy(logits, yt)
    for objective in (AdversarialCE(), TRADES(beta=0.0), MART(beta=0.0)):
        smoothed = objective.loss(clf, logits, yt, logits)
        assert not torch.allclose(smoothed, objective.loss(_Net(), logits, yt, logits))
    assert float(clf.get_loss(logits, yt)) != pytest.approx(float(clean))


def test_label_smoothing_does_not_reach_the_evaluation(data):
    X, y = data
    smooth = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), max_epochs=2, random_state=0,
                                   criterion__label_smoothing=0.3).fit(X, y)
    plain = copy.deepcopy(smooth).set_params(criterion__label_smoothing=0.0)
    plain.initialize_criterion()
    attack = PGD(epsilon=0.1, steps=5, random_start=False)
    # the attacks ascend the plain cross-entropy: the criterion does not weaken them
    assert smooth.robust_score(X, y, attack=attack, check=False) == \
        plain.robust_score(X, y, attack=attack, check=False)


# --------------------------------------------------- combinations, grid search
@pytest.mark.parametrize("attack", [PGD(epsilon=0.1, steps=2), FGSM(epsilon=0.1),
                                    Langevin(epsilon=0.1, steps=2)], ids=["pgd", "fgsm", "langevin"])
@pytest.mark.parametrize("objective", [AdversarialCE(), TRADES(), PrimalDual(), MART()],
                         ids=["ce", "trades", "dale", "mart"])
def test_every_recipe_combines_with_every_attack_and_objective(data, attack, objective):
    X, y = data
    clf = AdversarialClassifier(
        attack=attack, objective=objective, max_epochs=2, random_state=0,
        proxy_data=(X[::-1].copy(), y[::-1].copy()), proxy_ratio=0.25,
        ema=EMA(decay=0.9), awp=AWP(gamma=1e-2),
        guard=CollapseGuard(max_samples=50, on_collapse="restore"),
        valid_attack=RobustValidation(PGD(epsilon=0.1, steps=1), max_samples=20,
                                      restore_best=True),
        criterion__label_smoothing=0.1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a collapse alarm on 2 tiny epochs
        clf.fit(X, y)
    assert np.isfinite(clf.history[:, "train_loss"]).all()
    assert clf.predict(X[:5]).shape == (5,)


def test_recipes_are_grid_searchable(data):
    X, y = data
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=1), max_epochs=1, random_state=0,
                                ema=EMA(), awp=AWP(), guard=CollapseGuard(max_samples=20),
                                objective=MART(),
                                valid_attack=RobustValidation(PGD(epsilon=0.1, steps=1)))
    c = clone(clf).set_params(ema__decay=0.9, awp__gamma=0.02, guard__drop=0.3,
                              objective__beta=2.0, valid_attack__every=3,
                              valid_attack__attack__steps=2, criterion__label_smoothing=0.1)
    params = c.get_params()
    assert (params["ema__decay"], params["awp__gamma"], params["guard__drop"],
            params["objective__beta"], params["valid_attack__every"],
            params["valid_attack__attack__steps"], params["criterion__label_smoothing"]) == \
        (0.9, 0.02, 0.3, 2.0, 3, 2, 0.1)
    assert clf.ema.decay == 0.995  # the original is untouched
    grid = GridSearchCV(
        AdversarialClassifier(attack=PGD(epsilon=0.1, steps=1), max_epochs=1, random_state=0,
                              train_split=None),
        {"ema": [None, EMA(decay=0.9)], "awp": [None, AWP(gamma=1e-2)]}, cv=2,
        scoring=make_robust_scorer(PGD(epsilon=0.1, steps=2)),
    ).fit(X, y)
    assert len(grid.cv_results_["params"]) == 4


def test_recipe_parameters_are_checked(data):
    X, y = data
    with pytest.raises(ValueError, match="EMA: decay"):
        AdversarialClassifier(attack=PGD(epsilon=0.1), ema=EMA(decay=1.5), max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="AWP: gamma"):
        AdversarialClassifier(attack=PGD(epsilon=0.1), awp=AWP(gamma=-1), max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="RobustValidation: every"):
        AdversarialClassifier(attack=PGD(epsilon=0.1), max_epochs=1,
                              valid_attack=RobustValidation(PGD(), every=0)).fit(X, y)
    with pytest.raises((ValueError, TypeError), match="ema"):
        AdversarialClassifier(attack=PGD(epsilon=0.1), ema=0.99, max_epochs=1).fit(X, y)


def test_snapshot_round_trip(data):
    X, y = data
    clf = AdversarialClassifier(attack=None, max_epochs=1, random_state=0, ema=EMA(warmup=0)).fit(X, y)
    snap = snapshot_weights(clf)
    before = clf.predict_proba(X)
    clf.partial_fit(X, y)
    assert not np.allclose(clf.predict_proba(X), before)
    restore_weights(clf, snap)
    np.testing.assert_array_equal(clf.predict_proba(X), before)
