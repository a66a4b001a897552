"""skorch callbacks that robustfit adds to training.

:class:`~robustfit.AdversarialClassifier` installs these under names that
``callbacks__<name>=None`` removes (skorch's convention):

* ``lr_schedule`` - :class:`LRSchedule`, the per-batch learning-rate schedule;
* ``attack_warmup`` - :class:`EpsilonWarmup`, the attack's epsilon ramp;
* ``valid_robust_acc`` - :class:`RobustValidation`, with ``valid_attack``
  (robust validation every n epochs on a fixed subset, best-weights restore,
  early stopping);
* ``progress`` - :class:`Progress`, with ``verbose >= 1``.

The training recipes (weight averaging, the catastrophic-overfitting guard)
are callbacks too, in :mod:`robustfit.recipes`; :func:`snapshot_weights` and
:func:`restore_weights` are the copy of the weights they and
:class:`RobustValidation` share.

:class:`ResumableCheckpoint` is not installed by default: it checkpoints every
epoch and resumes a killed run from its last checkpoint (skorch's
``Checkpoint`` and ``LoadInitState`` in one callback).

Both schedules compute their position from ``net.history`` (the epochs the
history holds since the schedule started) and the batches seen in the current
epoch, so a run resumed from a checkpoint with skorch's ``LoadInitState``
continues where it stopped.
"""

from __future__ import annotations

import math
import sys
import warnings
from contextlib import suppress
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from skorch.callbacks import Callback, Checkpoint, LRScheduler
from skorch.utils import noop
from torch.utils.data import Subset
from tqdm import tqdm

from ._distributed import is_main
from ._evaluation import robust_accuracy
from ._utils import random_streams_kept
from ._validation import Interval, Options, ParamsValidationMixin, check_attack

#: Learning-rate schedules :class:`LRSchedule` knows.
SCHEDULES = ("onecycle", "cosine", "constant")


def schedule_factor(kind, progress, warmup=0.2):
    """Learning-rate multiplier at ``progress`` in [0, 1] of a schedule.

    Parameters
    ----------
    kind : {"onecycle", "cosine", "constant"} or None
        ``"onecycle"``: linear warm-up from 4% over the first ``warmup``
        fraction, then a cosine decay to 0; ``"cosine"``: cosine decay from
        the start; ``"constant"``/``None``: 1.
    progress : float
        Fraction of the schedule done (clipped to [0, 1]).
    warmup : float, default=0.2
        Warm-up fraction of ``"onecycle"``.

    Returns
    -------
    factor : float

    Examples
    --------
    >>> from robustfit.callbacks import schedule_factor
    >>> schedule_factor("onecycle", 0.2), schedule_factor("cosine", 1.0)
    (1.0, 0.0)
    """
    progress = min(max(progress, 0.0), 1.0)
    if kind in (None, "constant"):
        return 1.0
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if progress < warmup:
        return 0.04 + 0.96 * progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))


def _schedule_epochs_done(net):
    """Whole epochs of the current schedule that ``net.history`` holds.

    The schedule starts at ``net.schedule_origin_`` (0 for ``fit``; the
    history's length at the call for ``partial_fit`` and warm starts). The
    current epoch's row, added when the epoch begins, does not count.
    """
    origin = getattr(net, "schedule_origin_", 0)
    return max(len(net.history) - 1 - origin, 0)


def _batches_per_epoch(net):
    """Training batches per epoch as the iterator yields them (at least 1)."""
    return max(int(getattr(net, "train_batches_", None) or 1), 1)


class _EpochCounter(Callback):
    """Counts the training batches of the current epoch."""

    def initialize(self):
        self.batch_in_epoch_ = 0
        return self

    def on_epoch_begin(self, net, **kwargs):
        self.batch_in_epoch_ = 0

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training:
            self.batch_in_epoch_ += 1

    def position(self, net):
        """Fractional epochs of the schedule done before the current batch."""
        return _schedule_epochs_done(net) + self.batch_in_epoch_ / _batches_per_epoch(net)


class LRSchedule(ParamsValidationMixin, LRScheduler):
    """The per-batch learning-rate schedule of :class:`~robustfit.AdversarialClassifier`.

    A skorch :class:`~skorch.callbacks.LRScheduler` stepping torch's
    :class:`~torch.optim.lr_scheduler.LambdaLR` every batch, with the factor
    :func:`schedule_factor` of the fraction of ``max_epochs`` done. Installed
    as ``lr_schedule`` with the classifier's ``lr_schedule`` parameter; the
    learning rate of each batch is recorded as ``event_lr`` in the batch
    history.

    Unlike a plain ``LRScheduler``, the torch scheduler is built at the first
    training batch of each ``fit``/``partial_fit`` call, after skorch's
    ``LoadInitState`` has restored the history and the optimizer, and its
    step count is derived from the history. A resumed run therefore continues
    the schedule where the checkpoint left it.

    If the net has another ``LRScheduler`` among its callbacks, this one
    steps aside (with a warning), so two schedules never fight over the
    learning rate.

    Parameters
    ----------
    kind : {"onecycle", "cosine", "constant"} or None, default="onecycle"
        The schedule (see :func:`schedule_factor`); ``None``/``"constant"``
        keeps each parameter group's learning rate.
    warmup : float, default=0.2
        Warm-up fraction of ``"onecycle"``.
    event_name : str, default="event_lr"
        Batch-history key of the learning rate.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.callbacks import LRSchedule
    >>> clf = AdversarialClassifier(lr_schedule="cosine")   # installs LRSchedule("cosine")
    >>> clf = AdversarialClassifier(callbacks__lr_schedule=None)  # no schedule at all
    """

    def __init__(self, kind="onecycle", warmup=0.2, event_name="event_lr"):
        super().__init__(policy=torch.optim.lr_scheduler.LambdaLR, step_every="batch",
                         event_name=event_name)
        self.kind = kind
        self.warmup = warmup

    def _get_param_names(self):
        # skorch takes a callback's parameters from its attributes (here also
        # LRScheduler's policy and step_every, which this class fixes): its
        # parameters are its own arguments, so that clone rebuilds it
        return ["kind", "warmup", "event_name"]

    @property
    def kwargs(self):
        return {}

    _parameter_constraints = {
        "kind": [None, Options(SCHEDULES)],
        "warmup": [Interval(Real, 0, 1, closed="left")],
        "event_name": [None, str],
        # LRScheduler's own parameters, fixed by this class
        "policy": "no_validation",
        "monitor": "no_validation",
        "step_every": "no_validation",
    }

    def initialize(self):
        self.validate_params()
        super().initialize()
        self.batch_in_epoch_ = 0
        return self

    def _active(self, net):
        if self.kind in (None, "constant"):
            return False
        others = [cb for name, cb in getattr(net, "callbacks_", [])
                  if isinstance(cb, LRScheduler) and cb is not self]
        if others:
            if not getattr(self, "warned_", False):
                warnings.warn(
                    f"lr_schedule={self.kind!r} is switched off because the callbacks include "
                    f"another LRScheduler ({type(others[0]).__name__}); pass lr_schedule=None "
                    "to silence this warning", UserWarning, stacklevel=2,
                )
                self.warned_ = True
            return False
        return True

    def on_train_begin(self, net, **kwargs):
        # built lazily at the first batch: the history may still be loaded
        # (LoadInitState runs after the default callbacks)
        self.lr_scheduler_ = None
        self.warned_ = False

    def on_epoch_begin(self, net, **kwargs):
        self.batch_in_epoch_ = 0

    def _factor(self, step, net):
        total = max(net.max_epochs, 1) * _batches_per_epoch(net)
        return schedule_factor(self.kind, step / total, self.warmup)

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if not training or self.lr_scheduler_ is not None or not self._active(net):
            return
        done = _schedule_epochs_done(net) * _batches_per_epoch(net) + self.batch_in_epoch_
        for group in net.optimizer_.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.lr_scheduler_ = torch.optim.lr_scheduler.LambdaLR(
            net.optimizer_, lr_lambda=lambda step: self._factor(step, net), last_epoch=done - 1,
        )

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training:
            self.batch_in_epoch_ += 1
        if self.lr_scheduler_ is not None:
            super().on_batch_end(net, training=training, **kwargs)

    def on_epoch_end(self, net, **kwargs):
        pass

    def on_train_end(self, net, **kwargs):
        # the schedule's end leaves its last factor in each group's lr: put the base
        # back, so the next partial_fit (with this or another schedule, a constant
        # one included) starts from it, and set_params(lr=...) replaces it
        # (also when no batch ran: a finished run resumed, whose checkpoint holds
        # the schedule's last rate)
        if self._active(net):
            for group in net.optimizer_.param_groups:
                group["lr"] = group.get("initial_lr", group["lr"])
        self.lr_scheduler_ = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["lr_scheduler_"] = None  # holds a lambda; rebuilt at the next batch
        return state


class EpsilonWarmup(ParamsValidationMixin, _EpochCounter):
    """Ramp the training attack's ``epsilon`` linearly from 0 over the first epochs.

    Installed by :class:`~robustfit.AdversarialClassifier` as
    ``attack_warmup`` with its ``attack_warmup`` parameter. Before every
    training batch it sets ``net.attack_.epsilon`` (the fitted copy; the
    ``attack`` parameter is never changed) to
    ``attack.epsilon * min(1, position / epochs)``, with the position in
    epochs computed from ``net.history``, so a resumed run continues the ramp.

    Parameters
    ----------
    epochs : float or "auto", default="auto"
        Length of the ramp in epochs; ``"auto"`` is 20% of ``max_epochs``;
        ``0`` uses the full budget from the first batch.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.3), attack_warmup=2)
    """

    _parameter_constraints = {"epochs": [Options(("auto",)), Interval(Real, 0, None)]}

    def __init__(self, epochs="auto"):
        self.epochs = epochs

    def initialize(self):
        self.validate_params()
        return super().initialize()

    def ramp_epochs(self, net):
        """The ramp's length in epochs for ``net``."""
        if self.epochs == "auto":
            return 0.2 * net.max_epochs
        return float(self.epochs)

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        attack = getattr(net, "attack_", None)
        if not training or attack is None or not hasattr(attack, "epsilon"):
            return
        epochs = self.ramp_epochs(net)
        ramp = 1.0 if not epochs else min(1.0, self.position(net) / epochs)
        attack.epsilon = net.attack.epsilon * ramp



class _ParamsRepr:
    """``ClassName(param=value, ...)`` as the repr of a callback (skorch's have none)."""

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({params})"


def snapshot_weights(net):
    """A copy of the network's weights, to restore later with :func:`restore_weights`.

    The copy holds ``net.module_``'s state (parameters and buffers) and the
    state of every callback of ``net`` that keeps weights of its own (a
    callback with ``weights_state()``/``load_weights_state()``, such as
    :class:`~robustfit.recipes.EMA`), so a restore puts back the training
    weights and their average together. The optimizer's state is not copied.

    Parameters
    ----------
    net : robustfit.AdversarialClassifier
        An initialized classifier.

    Returns
    -------
    snapshot : dict
        Tensors cloned on their device.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.callbacks import restore_weights, snapshot_weights
    >>> from robustfit.datasets import load_digits_images
    >>> X, y = load_digits_images()
    >>> clf = AdversarialClassifier(max_epochs=1, random_state=0).fit(X[:200], y[:200])
    >>> before = snapshot_weights(clf)
    >>> _ = clf.partial_fit(X[:200], y[:200])
    >>> restore_weights(clf, before)
    """
    module = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
    return {"module": module, "callbacks": _callback_states(net)}


def _callback_states(net, method="weights_state"):
    """``{callback name: cb.<method>()}`` for every callback of ``net`` that
    has ``method``: ``weights_state`` (the weights a callback keeps beside the
    module, :class:`~robustfit.recipes.EMA`'s set not in the module; part of
    :func:`snapshot_weights`, of a saved model and of a checkpoint) or
    ``resume_state`` (what a callback needs to continue a resumed run: the
    best weights of :class:`RobustValidation` and of the collapse guard)."""
    return {name: getattr(cb, method)() for name, cb in getattr(net, "callbacks_", [])
            if callable(getattr(cb, method, None))}


def _load_callback_states(net, states, method="load_weights_state"):
    """Give ``net``'s callbacks back what ``_callback_states`` returned
    (``states`` may be None; names without a callback are skipped)."""
    callbacks = dict(getattr(net, "callbacks_", []))
    for name, state in (states or {}).items():
        if callable(getattr(callbacks.get(name), method, None)):
            getattr(callbacks[name], method)(state)


def restore_weights(net, snapshot):
    """Put back the weights saved by :func:`snapshot_weights`, in place.

    Parameters
    ----------
    net : robustfit.AdversarialClassifier
        The classifier the snapshot was taken from.
    snapshot : dict
        The value :func:`snapshot_weights` returned.

    Examples
    --------
    See :func:`snapshot_weights`.
    """
    with torch.no_grad():
        for key, value in net.module_.state_dict().items():
            value.copy_(snapshot["module"][key])
    _load_callback_states(net, snapshot["callbacks"])


def _fixed_subset(dataset, max_samples):
    """The same random ``max_samples`` items of ``dataset`` at every call (seed 0);
    the whole dataset for ``max_samples=None`` or more than it holds."""
    n = len(dataset)
    if max_samples is None or max_samples >= n:
        return dataset
    idx = np.sort(np.random.RandomState(0).choice(n, max_samples, replace=False))
    return Subset(dataset, idx.tolist())


def _training_check(net, dataset, attack):
    """Robust accuracy of ``net`` on ``dataset``, measured during ``fit``
    without touching the training's random streams.

    The check behind :class:`RobustValidation` and
    :class:`~robustfit.recipes.CollapseGuard`. Its attack draws from a
    random source of its own, seeded by the classifier's ``random_state``
    (``0`` for an unseeded classifier), and every stream the training draws
    from (torch's CPU generator and the module's GPU generator, numpy's and
    Python's global generators, the fit's own generators) is put back after
    it (:func:`~robustfit._utils.random_streams_kept`). A fit with the check
    therefore trains exactly as the same fit without it, until the check acts
    (restores weights or stops training).

    Parameters
    ----------
    net : robustfit.AdversarialClassifier
        The classifier being trained.
    dataset : torch.utils.data.Dataset
        The points checked, with their (encoded) labels.
    attack : robustfit.attacks.Attack or callable
        The attack.

    Returns
    -------
    accuracy : float
    """
    param = next(iter(net.module_.parameters()), None)
    device = "cpu" if param is None else param.device
    seed = getattr(net, "random_state", None)
    with random_streams_kept(device):
        return robust_accuracy(net, dataset, None, attack=attack,
                               random_state=0 if seed is None else seed)


def _fit_epochs_done(net):
    """Epochs of the current ``fit``/``partial_fit`` call, the current one included."""
    return len(net.history) - getattr(net, "schedule_origin_", 0)


class RobustValidation(_ParamsRepr, ParamsValidationMixin, Callback):
    """Robust accuracy on the validation split; keep the best weights, stop early.

    Added by :class:`~robustfit.AdversarialClassifier` under the name
    ``valid_robust_acc`` when ``valid_attack`` is set: ``valid_attack=PGD(...)``
    installs ``RobustValidation(PGD(...))`` with the defaults below, and
    ``valid_attack=RobustValidation(PGD(...), every=2, restore_best=True)``
    installs (a clone of) that one, its parameters grid-searchable as
    ``valid_attack__every`` and so on. It can also be passed in ``callbacks``.

    Every ``every`` epochs of a ``fit`` (and at its last epoch), the robust
    accuracy on the validation split, or on a fixed random subset of
    ``max_samples`` of it, goes into the history as ``name``, with
    ``name + "_best"`` telling whether it beats every earlier value in the
    history (skorch's ``Checkpoint(monitor=name + "_best")`` saves on it). Epochs in between
    record nothing (``net.history[:, name]`` skips them). Robust validation
    costs an attack pass over the subset, so a cheap attack, a subset and
    ``every > 1`` keep it affordable on long runs.

    Robust overfitting (Rice et al. 2020): robust accuracy on held-out data
    peaks and then declines while training goes on. With
    ``restore_best=True`` the callback keeps a copy of the weights of the best
    measured epoch (with :class:`~robustfit.recipes.EMA`, the averaged and the
    training weights) and puts it back when training ends; with ``patience``,
    training stops after that many measurements without improvement.

    In data-parallel training the validation points are sharded across the
    ranks and the per-point results gathered
    (:func:`~robustfit.metrics.robust_accuracy`), so every rank records the
    same score (and stops or restores alike).

    The measurement draws its random numbers from a generator of its own
    (seeded by the classifier's ``random_state``) and puts the training's
    generators back, so adding robust validation does not change how the
    model trains.

    The attack is cloned when the callback is initialized (at every ``fit``),
    and the clone runs: the ``attack`` given is never changed, and an attack
    with learned state (``GeneratorSynth``) starts afresh in each ``fit``, so
    refits with the same ``random_state`` record the same scores.

    Parameters
    ----------
    attack : robustfit.attacks.Attack or callable
        The attack run on the validation split.
    name : str, default="valid_robust_acc"
        History key.
    lower_is_better : bool, default=False
        Whether lower scores are better (for checkpointing callbacks).
    every : int, default=1
        Measure every ``every`` epochs of each ``fit`` call (epochs
        ``every``, ``2 * every``, ...), and always at the call's last epoch.
    max_samples : int or None, default=None
        Measure on a fixed subset of this many validation samples, drawn once
        with a fixed seed (the same subset at every epoch and in every fit of
        the same data); ``None`` uses the whole validation split.
    restore_best : bool, default=False
        Keep the weights of the best measured epoch and restore them at the
        end of training (also after an early stop or an interrupt).
    patience : int or None, default=None
        Stop training after this many consecutive measurements without a new
        best (skorch's convention: the callback raises ``KeyboardInterrupt``,
        which ``fit`` catches). ``None`` never stops.

    Attributes
    ----------
    attack_ : robustfit.attacks.Attack or callable
        The clone that runs (a plain callable is used as is).
    best_score_ : float or None
        The best score of the current ``fit``/``partial_fit`` call (the one
        ``restore_best`` and ``patience`` go by).
    best_epoch_ : int or None
        Its epoch (1-based, as in ``net.history``).
    restored_epoch_ : int or None
        The epoch whose weights were restored at the end of training.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> from robustfit.callbacks import RobustValidation
    >>> clf = AdversarialClassifier(
    ...     attack=PGD(epsilon=0.3, steps=7),
    ...     valid_attack=RobustValidation(PGD(epsilon=0.3, steps=10), every=2,
    ...                                   max_samples=500, restore_best=True))
    >>> clf.set_params(valid_attack__every=5).valid_attack.every
    5
    """

    _parameter_constraints = {
        "attack": ["callable"],
        "name": [str],
        "lower_is_better": ["boolean"],
        "every": [Interval(Integral, 1, None)],
        "max_samples": [None, Interval(Integral, 1, None)],
        "restore_best": ["boolean"],
        "patience": [None, Interval(Integral, 1, None)],
    }

    def __init__(self, attack, name="valid_robust_acc", lower_is_better=False, every=1,
                 max_samples=None, restore_best=False, patience=None):
        self.attack = attack
        self.name = name
        self.lower_is_better = lower_is_better
        self.every = every
        self.max_samples = max_samples
        self.restore_best = restore_best
        self.patience = patience

    def initialize(self):
        self.validate_params()
        check_attack(self.attack, "attack", type(self).__name__)
        self.attack_ = clone(self.attack) if hasattr(self.attack, "get_params") else self.attack
        self._reset()
        return self

    def _reset(self):
        self.best_score_ = self.best_epoch_ = self.restored_epoch_ = None
        self.best_weights_ = None
        self.stale_ = 0

    def on_train_begin(self, net, **kwargs):
        if getattr(self, "attack_", None) is None:  # used without initialize()
            self.initialize()
        self._reset()
        self.warned_ = False

    def _due(self, net):
        done = _fit_epochs_done(net)
        return done % self.every == 0 or done >= net.max_epochs

    def _better(self, score):
        if self.best_score_ is None:
            return True
        return score < self.best_score_ if self.lower_is_better else score > self.best_score_

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        if dataset_valid is None:
            if not getattr(self, "warned_", False):
                warnings.warn(
                    f"{self.name}: there is no validation split (train_split=None, or a split "
                    "that fell back to none), so robust validation measures nothing and "
                    "restore_best and patience do nothing; give train_split a ValidSplit",
                    UserWarning, stacklevel=2)
                self.warned_ = True
            return
        if getattr(self, "attack_", None) is None:  # used without initialize()
            self.initialize()
        if not self._due(net):
            return
        score = _training_check(net, _fixed_subset(dataset_valid, self.max_samples), self.attack_)
        net.history.record(self.name, score)
        # the flag compares with the whole history (a run resumed by LoadInitState
        # included), as skorch's Checkpoint expects
        past = [row[self.name] for row in net.history[:-1]
                if row.get(self.name) is not None]
        flag = not past or (score < min(past) if self.lower_is_better else score > max(past))
        net.history.record(self.name + "_best", bool(flag))
        if self._better(score):
            self.best_score_, self.best_epoch_, self.stale_ = score, len(net.history), 0
            if self.restore_best:
                self.best_weights_ = snapshot_weights(net)
            return
        self.stale_ += 1
        if self.patience is not None and self.stale_ >= self.patience:
            if net.verbose:
                print(f"Stopping: {self.name} has not improved for {self.stale_} measurements; "
                      f"the best was {self.best_score_:.4f} at epoch {self.best_epoch_}.")
            raise KeyboardInterrupt

    def on_train_end(self, net, **kwargs):
        if self.restore_best and getattr(self, "best_weights_", None) is not None:
            restore_weights(net, self.best_weights_)
            self.restored_epoch_ = self.best_epoch_
            self.best_weights_ = None  # the restored weights are the module's now

    def resume_state(self):
        """What a run resumed from a checkpoint needs to go on as this one would.

        Saved in the checkpoint's training state
        (:meth:`~robustfit.AdversarialClassifier.save_training_state`): the
        best score, its epoch and weights, and the measurements since it.

        Returns
        -------
        state : dict
        """
        return {"best_score": self.best_score_, "best_epoch": self.best_epoch_,
                "stale": self.stale_, "best_weights": getattr(self, "best_weights_", None)}

    def load_resume_state(self, state):
        """Restore what :meth:`resume_state` returned.

        Parameters
        ----------
        state : dict
        """
        self.best_score_, self.best_epoch_ = state["best_score"], state["best_epoch"]
        self.stale_, self.best_weights_ = state["stale"], state["best_weights"]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["best_weights_"] = None  # a copy of the module, only needed during fit
        return state


class ResumableCheckpoint(Checkpoint):
    """Checkpoint every epoch into ``dirname``, and resume from there when a fit starts.

    skorch's :class:`~skorch.callbacks.Checkpoint` (``monitor=None``: every
    epoch) and :class:`~skorch.callbacks.LoadInitState` in one callback. Run
    the same script again after a crash or a kill, with the same parameters,
    and ``fit`` continues from the last completed epoch and ends with
    ``max_epochs`` epochs of history, where the uninterrupted run would have
    ended (on the CPU, with ``random_state`` set: the same weights and
    history). With :class:`~robustfit.AdversarialClassifier`, every checkpoint
    also holds the training state skorch's files lack (the attack's and the
    objective's state, the random generators; see
    :meth:`~robustfit.AdversarialClassifier.save_params`), and every file is
    written atomically. Files are read back with
    ``torch.load(weights_only=True)``; see :doc:`/persistence`.

    Parameters
    ----------
    dirname : str, default="checkpoints"
        Folder of the checkpoint files (created if needed). Use one folder
        per run: a folder holding a finished run makes ``fit`` train nothing.
    f_params, f_optimizer, f_criterion, f_history : str or None
        File names, as in skorch's ``Checkpoint``.
    fn_prefix : str, default=""
        Prefix of the file names.
    event_name : str or None, default="event_cp"
        History column marking the checkpointed epochs.
    sink : callable, default=skorch.utils.noop
        Receives a line per checkpoint (``print`` to see them).

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> from robustfit.callbacks import ResumableCheckpoint
    >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.1), max_epochs=20, random_state=0,
    ...                             callbacks=[ResumableCheckpoint("run1")])
    """

    def __init__(self, dirname="checkpoints", *, f_params="params.pt", f_optimizer="optimizer.pt",
                 f_criterion="criterion.pt", f_history="history.json", fn_prefix="",
                 event_name="event_cp", sink=noop):
        super().__init__(monitor=None, f_params=f_params, f_optimizer=f_optimizer,
                         f_criterion=f_criterion, f_history=f_history, fn_prefix=fn_prefix,
                         dirname=dirname, event_name=event_name, sink=sink)

    def _get_param_names(self):
        # skorch takes a callback's parameters from its attributes, which
        # include Checkpoint's monitor, load_best, ... that this class fixes:
        # its parameters are its own arguments, so clone and save/load rebuild it
        return ["dirname", "f_params", "f_optimizer", "f_criterion", "f_history", "fn_prefix",
                "event_name", "sink"]

    def initialize(self):
        super().initialize()
        self.did_load_ = False
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if self.did_load_:  # once per callback, as LoadInitState
            return
        self.did_load_ = True
        with suppress(FileNotFoundError):
            net.load_params(checkpoint=self)


def _interactive(stream):
    """Whether ``stream`` redraws a progress bar: a terminal or a Jupyter output."""
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return True
    return type(stream).__module__.startswith("ipykernel")


class Progress(Callback):
    """A progress bar over the training batches of each epoch (tqdm).

    Added by :class:`~robustfit.AdversarialClassifier` as ``progress`` when
    ``verbose >= 1``. The bar reads ``epoch k/N`` and counts the batches the
    iterator really yields (mixed proxy batches, ``batch_size=-1`` and resumed
    runs included); it is closed at the end of each epoch, before skorch prints
    that epoch's row of the history table, so the bar never lands inside the
    table. Where the output cannot redraw a bar (a log file, a pipe), no bar is
    drawn and the table alone reports progress. In data-parallel training
    (torchrun) only rank 0 draws it.

    Parameters
    ----------
    file : file-like or None, default=None
        Where the bar is drawn (``None``: standard error).
    disable : bool or None, default=None
        ``None`` draws the bar only on a terminal or in Jupyter; ``True``
        never, ``False`` always.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> clf = AdversarialClassifier(verbose=1)              # installs Progress()
    >>> clf = AdversarialClassifier(verbose=1, callbacks__progress=None)  # table only
    """

    def __init__(self, file=None, disable=None):
        self.file = file
        self.disable = disable

    def initialize(self):
        self.bar_ = None
        return self

    def _enabled(self):
        if not is_main():  # data-parallel training: rank 0 alone draws
            return False
        if self.disable is not None:
            return not self.disable
        return _interactive(self.file if self.file is not None else sys.stderr)

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        self._close()
        if not self._enabled():
            return
        total_epochs = getattr(net, "schedule_origin_", 0) + net.max_epochs
        self.bar_ = tqdm(
            total=getattr(net, "train_batches_", None), desc=f"epoch {len(net.history)}/{total_epochs}",
            leave=False, file=self.file if self.file is not None else sys.stderr, dynamic_ncols=True,
        )

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.bar_ is not None:
            self.bar_.update(1)

    def on_epoch_end(self, net, **kwargs):
        self._close()

    def on_train_end(self, net, **kwargs):
        self._close()

    def _close(self):
        if getattr(self, "bar_", None) is not None:
            self.bar_.close()
            self.bar_ = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["bar_"] = None
        return state
