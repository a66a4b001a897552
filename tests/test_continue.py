"""What a fitted classifier does next: ``set_params`` followed by ``partial_fit`` or a
warm-start ``fit``, and callables and validation settings that used to be ignored silently.

Each case was found by a review: the new settings were kept in the parameters but the
training went on with the old ones, with no error and no warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.callbacks import RobustValidation
from robustfit.recipes import EMA

pytestmark = pytest.mark.one_thread  # see conftest.py


@pytest.fixture(scope="module")
def data(digits):
    X, y = digits
    return X[:300], y[:300]


class _Record(Callback):
    """The learning rate and the training attack's epsilon at every training batch."""

    def __init__(self):
        self.rows = []

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            self.rows.append((net.optimizer_.param_groups[0]["lr"], float(net.attack_.epsilon)))


def _clf(record, **kw):
    params = dict(attack=PGD(epsilon=0.3, steps=2), max_epochs=1, batch_size=100, lr=0.003,
                  random_state=0, device="cpu", train_split=None, callbacks=[("record", record)])
    params.update(kw)
    return AdversarialClassifier(**params)


def test_set_params_after_fit_rebuilds_the_callbacks_it_installs(data):
    """Before: the one-cycle schedule and the epsilon warm-up went on, EMA and robust
    validation were not installed (lr per batch [0.00012, 0.0028, 0.00111], epsilon
    [0.0, 0.3, 0.3] after set_params(lr_schedule="constant", attack_warmup=0, ...))."""
    record = _Record()
    clf = _clf(record).fit(*data)
    assert record.rows[0] == (pytest.approx(0.003 / 25), 0.0)  # one-cycle warm-up, eps ramp
    record.rows.clear()
    clf.set_params(lr_schedule="constant", attack_warmup=0, ema=EMA(decay=0.9),
                   valid_attack=PGD(epsilon=0.1, steps=1))
    names = [name for name, _ in clf.callbacks_]
    assert names[0] == "ema"  # first, as a fresh build puts it
    # before the user's callbacks, so a Checkpoint monitoring valid_robust_acc_best sees it
    assert names.index("valid_robust_acc") < names.index("record") < names.index("print_log")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no validation split: robust validation warns
        clf.partial_fit(*data)
    assert record.rows == [(0.003, 0.3)] * 3  # constant rate (the base), full budget
    ema = dict(clf.callbacks_)["ema"]
    assert ema.average_ is not None and ema.holds_average_
    clf.set_params(ema__decay=0.5)  # new settings for the running average, which is kept
    assert dict(clf.callbacks_)["ema"] is ema and ema.decay == 0.5 and ema.average_ is not None
    clf.set_params(ema=None, valid_attack=None)
    assert "ema" not in dict(clf.callbacks_) and "valid_robust_acc" not in dict(clf.callbacks_)


def test_a_new_lr_is_the_base_of_the_schedule(data):
    """The one-cycle schedule kept the first fit's peak (torch's initial_lr) after
    set_params(lr=...)."""
    record = _Record()
    clf = _clf(record).fit(*data)
    first = [lr for lr, _ in record.rows]
    assert clf.optimizer_.param_groups[0]["lr"] == 0.003  # the base again after the schedule
    record.rows.clear()
    clf.set_params(lr=0.03).partial_fit(*data)
    np.testing.assert_allclose([lr for lr, _ in record.rows], np.multiply(first, 10), rtol=1e-6)
    record.rows.clear()
    clf.set_params(warm_start=True).fit(*data)  # a warm fit too
    np.testing.assert_allclose([lr for lr, _ in record.rows], np.multiply(first, 10), rtol=1e-6)


def test_a_warm_start_fit_goes_on_with_new_random_draws(data):
    """Every warm-start fit replayed the first call's shuffling and attack starts."""
    X, y = data
    seen = []

    class FirstLabels(Callback):
        def on_batch_begin(self, net, batch=None, training=False, **kwargs):
            rows = [b for b in net.history[-1]["batches"] if "train_batch_size" in b]
            if training and not rows:
                seen.append(batch[1][:8].tolist())

    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=1), max_epochs=1, batch_size=100,
                                warm_start=True, random_state=0, device="cpu", train_split=None,
                                callbacks=[FirstLabels()])
    for _ in range(3):
        clf.fit(X, y)
    assert seen[0] != seen[1] != seen[2]
    first, seen[:] = list(seen), []
    twin = AdversarialClassifier(**clf.get_params())
    for _ in range(3):
        twin.fit(X, y)
    assert seen == first  # and it repeats from the same seed


def test_a_callable_attack_runs_in_eval_mode_and_is_not_ramped_silently(data):
    """A plain callable attack ran with the module in train mode (batch-norm statistics
    moved by every attack pass, dropout on), and attack_warmup skipped it without a word."""
    X, y = data
    modes = []

    class Callable:
        epsilon = 0.1

        def __call__(self, module, x, y):
            modes.append(module.training)
            return x

    class BNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1),
                                           torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                           torch.nn.Flatten(), torch.nn.Linear(256, 10))

        def forward(self, x):
            return self.net(x)

    with pytest.warns(UserWarning, match=r"attack_warmup='auto' does not ramp a plain callable "
                                         r"attack \(Callable, epsilon=0.1\)"):
        AdversarialClassifier(BNNet, attack=Callable(), max_epochs=2, batch_size=100,
                              random_state=0, device="cpu").fit(X, y)
    assert modes and not any(modes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attack_warmup=0: nothing to say
        AdversarialClassifier(BNNet, attack=Callable(), attack_warmup=0, max_epochs=1,
                              random_state=0, device="cpu", train_split=None).fit(X, y)


def test_robust_validation_without_a_validation_split_warns(data):
    """With train_split=None it recorded nothing, restored nothing and never stopped."""
    with pytest.warns(UserWarning, match="no validation split .* restore_best and patience do "
                                         "nothing") as caught:
        AdversarialClassifier(valid_attack=RobustValidation(PGD(epsilon=0.1, steps=1),
                                                            restore_best=True, patience=1),
                              max_epochs=2, random_state=0, device="cpu",
                              train_split=None).fit(*data)
    assert sum("no validation split" in str(w.message) for w in caught) == 1  # once per fit


def test_set_params_keeps_the_ema_average_unless_ema_changes(data):
    """skorch rebuilds every callback when a callbacks* parameter is set, and setting ema to
    its own value counted as a change: both dropped EMA's average (0.018 in predict_proba)."""
    X, y = data

    def fitted():
        return AdversarialClassifier(attack=PGD(epsilon=0.1, steps=1), ema=EMA(decay=0.9, warmup=0),
                                     max_epochs=1, batch_size=100, random_state=0, device="cpu",
                                     train_split=None).fit(X, y)

    reference = fitted()
    proba = reference.predict_proba(X)
    same = fitted().set_params(ema=reference.ema)  # an equal EMA: nothing changes
    other = fitted().set_params(callbacks__print_log__keys_ignored=["dur"])
    for clf in (same, other):
        assert dict(clf.callbacks_)["ema"].average_ is not None
        np.testing.assert_array_equal(clf.predict_proba(X), proba)
    reference.partial_fit(X, y)
    for clf in (same, other):
        clf.partial_fit(X, y)
        np.testing.assert_array_equal(clf.predict_proba(X), reference.predict_proba(X))


def test_set_params_leaves_disabled_callbacks_disabled(data):
    clf = AdversarialClassifier(max_epochs=1, callbacks="disable", random_state=0, device="cpu",
                                train_split=None).fit(*data)
    clf.set_params(lr_schedule="cosine", verbose=1)
    assert clf.callbacks_ == []


def test_a_resumed_finished_run_ends_at_the_base_learning_rate(data, tmp_path):
    """Resuming a finished run trains no epoch; the checkpoint's last one-cycle rate (0)
    stayed in the optimizer, and a following constant-rate partial_fit trained nothing."""
    from robustfit.callbacks import ResumableCheckpoint

    def clf():
        return AdversarialClassifier(max_epochs=2, lr=0.01, random_state=0, device="cpu",
                                     train_split=None,
                                     callbacks=[ResumableCheckpoint(str(tmp_path))])

    clf().fit(*data)
    again = clf().fit(*data)  # the finished run, resumed: no epoch to train
    assert len(again.history) == 2 and again.optimizer_.param_groups[0]["lr"] == 0.01
    before = [p.detach().clone() for p in again.module_.parameters()]
    again.set_params(lr_schedule="constant").partial_fit(*data)
    assert any(not torch.equal(a, b) for a, b in zip(before, again.module_.parameters()))
