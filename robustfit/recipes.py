"""Training recipes: weight averaging, adversarial weight perturbation, the
catastrophic-overfitting guard.

Each recipe is one parameter of :class:`~robustfit.AdversarialClassifier`,
grid-searchable like an attack (``ema__decay``, ``awp__gamma``,
``guard__drop``), and combines with every attack, objective and proxy data:

* :class:`EMA` (``ema=EMA(decay=0.995)``) - an exponential moving average of
  the weights (Gowal et al. 2020, Wang et al. 2023); a callback;
* :class:`AWP` (``awp=AWP(gamma=5e-3)``) - adversarial weight perturbation
  (Wu, Xia & Wang 2020): the gradient of each step is taken at weights moved
  towards a higher loss; a parameter object the training step calls;
* :class:`CollapseGuard` (``guard=CollapseGuard()``) - an APGD-CE check of
  training robustness after every epoch that restores the last good weights
  when fast (FGSM) training collapses (Wong, Rice & Kolter 2020); a callback.

The other recipes live where their kind does: the MART objective in
:mod:`robustfit.losses`, the best-robust checkpoint and robust early stopping
in :class:`robustfit.callbacks.RobustValidation` (``valid_attack=``), label
smoothing in the criterion (``criterion__label_smoothing=0.1``). See the
"Training recipes" page of the documentation.
"""

from __future__ import annotations

import contextlib
import warnings
from numbers import Integral, Real

import torch
from sklearn.base import BaseEstimator, clone
from skorch.callbacks import Callback
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ._distributed import all_reduce_mean_, current_shard, world_size
from ._validation import Interval, Options, ParamsValidationMixin, check_attack
from .attacks import APGD
from .callbacks import (
    _EpochCounter,
    _fixed_subset,
    _ParamsRepr,
    _schedule_epochs_done,
    _training_check,
    restore_weights,
    snapshot_weights,
)

__all__ = ["AWP", "EMA", "CollapseGuard"]


def _callback_of(net, kind):
    for _, cb in getattr(net, "callbacks_", []):
        if isinstance(cb, kind):
            return cb
    return None


# --------------------------------------------------------------------- EMA
class EMA(_ParamsRepr, ParamsValidationMixin, _EpochCounter):
    """An exponential moving average of the weights, used for prediction.

    After every training step the average ``w_ema`` of the parameters and of
    the floating-point buffers (BatchNorm's running mean and variance) moves
    towards the current weights ``w``:
    ``w_ema <- decay * w_ema + (1 - decay) * w`` (torch's
    :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`); integer buffers
    (BatchNorm's batch counter) are copied. During the first ``warmup``
    epochs the average is a copy of the weights, so it does not remember the
    random initialization and the fast early changes.

    **Which weights the module holds.** The training steps run on the raw
    weights; everything else sees the average: the validation pass
    (``valid_loss``, ``valid_acc``, ``valid_robust_acc``), the callbacks after
    each epoch (checkpoints save the average), and, once ``fit`` returns,
    ``predict``, ``predict_proba``, ``score``, ``robust_score`` and pickling.
    The callback swaps the two sets of weights in place (twice per epoch, a
    copy each time) and keeps the set that is not in the module;
    ``partial_fit`` swaps the raw weights back in at its first batch and goes
    on from them. skorch's ``Checkpoint`` saves the module, so its
    ``params.pt`` holds the average; the raw weights are in robustfit's
    training state beside it, and in a file written by
    :meth:`~robustfit.AdversarialClassifier.save`, so a resumed run, or
    ``partial_fit`` after :meth:`~robustfit.AdversarialClassifier.load`, goes
    on from them as the uninterrupted run does.

    **Batch normalization.** The running statistics are averaged like the
    parameters (an EMA of the buffers, as ``AveragedModel(use_buffers=True)``
    does), not recomputed on the training data: each running mean is the
    average of statistics gathered under slightly different weights, which at
    ``decay`` close to 1 and slowly moving weights differs little from a
    recomputation (:func:`torch.optim.swa_utils.update_bn`) and costs nothing.

    Installed by :class:`~robustfit.AdversarialClassifier` as the callback
    ``ema`` (first in the list, so every other callback sees the average)
    with its ``ema`` parameter; grid-searchable as ``ema__decay``.

    Parameters
    ----------
    decay : float, default=0.995
        Weight of the old average at each step, in ``[0, 1)``: the average
        spans about ``1 / (1 - decay)`` steps (200 at 0.995, the value of
        Gowal et al. 2020).
    warmup : float or "auto", default="auto"
        Epochs, from the start of each ``fit``/``partial_fit`` call, during
        which the average copies the weights. ``"auto"`` is 20% of
        ``max_epochs`` (the length of the default learning-rate and epsilon
        warm-ups); ``0`` averages from the first step.

    Attributes
    ----------
    average_ : list of torch.Tensor or None
        The set of weights not in the module (the average during training
        steps, the raw weights otherwise), in the order of
        ``parameters()`` then ``buffers()``.
    holds_average_ : bool
        Whether the module holds the average now.
    updates_ : int
        Averaging steps taken after the warm-up.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> from robustfit.recipes import EMA
    >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.3, steps=7), ema=EMA(decay=0.995))
    >>> clf.set_params(ema__decay=0.99).ema.decay
    0.99
    """

    _parameter_constraints = {
        "decay": [Interval(Real, 0, 1, closed="left")],
        "warmup": [Options(("auto",)), Interval(Real, 0, None)],
    }

    def __init__(self, decay=0.995, warmup="auto"):
        self.decay = decay
        self.warmup = warmup

    def initialize(self):
        self.validate_params()
        super().initialize()
        self.average_ = None
        self.holds_average_ = False
        self.updates_ = 0
        return self

    def warmup_epochs(self, net):
        """The warm-up's length in epochs for ``net``."""
        return 0.2 * net.max_epochs if self.warmup == "auto" else float(self.warmup)

    @staticmethod
    def _tensors(module):
        return [t for t in module.parameters()] + [t for t in module.buffers()]

    def _aligned(self, tensors):
        # an average unpickled on the CPU follows the module to its device
        avg = self.average_
        if any(a.device != t.device for a, t in zip(avg, tensors)):
            avg = self.average_ = [a.to(t.device) for a, t in zip(avg, tensors)]
        return avg

    @torch.no_grad()
    def _swap(self, net):
        tensors = self._tensors(net.module_)
        for t, a in zip(tensors, self._aligned(tensors)):
            held = t.detach().clone()
            t.copy_(a)
            a.copy_(held)
        self.holds_average_ = not self.holds_average_

    def show_average(self, net):
        """Put the average into the module (no-op when it is there)."""
        if self.average_ is not None and not self.holds_average_:
            self._swap(net)

    def show_raw(self, net):
        """Put the raw training weights into the module (no-op when they are there)."""
        if self.average_ is not None and self.holds_average_:
            self._swap(net)

    @contextlib.contextmanager
    def raw_weights(self, net):
        """Context in which the module holds the raw training weights.

        Parameters
        ----------
        net : robustfit.AdversarialClassifier
            The classifier this callback belongs to.

        Yields
        ------
        module : torch.nn.Module
            ``net.module_``.
        """
        held = self.holds_average_
        self.show_raw(net)
        try:
            yield net.module_
        finally:
            if held:
                self.show_average(net)

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            self.show_raw(net)
        else:
            self.show_average(net)

    @torch.no_grad()
    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        super().on_batch_end(net, batch=batch, training=training, **kwargs)
        if not training:
            return
        tensors = self._tensors(net.module_)
        if self.average_ is None:
            self.average_ = [t.detach().clone() for t in tensors]
            return
        avg = self._aligned(tensors)
        if self.position(net) <= self.warmup_epochs(net):
            for a, t in zip(avg, tensors):
                a.copy_(t)
            return
        floats = [(a, t) for a, t in zip(avg, tensors) if a.is_floating_point()]
        if floats:
            a_f, t_f = zip(*floats)
            get_ema_multi_avg_fn(self.decay)(list(a_f), [t.detach() for t in t_f], None)
        for a, t in zip(avg, tensors):
            if not a.is_floating_point():
                a.copy_(t)
        self.updates_ += 1

    def on_epoch_end(self, net, **kwargs):
        self.show_average(net)

    def on_train_end(self, net, **kwargs):
        self.show_average(net)

    def distributed_buffers(self, net):
        """The callback's copies of the module's buffers, which a data-parallel
        fit averages over the ranks after every training pass, with the
        module's own (each rank's BatchNorm statistics come from its shard).

        Parameters
        ----------
        net : robustfit.AdversarialClassifier
            The classifier this callback belongs to.

        Returns
        -------
        buffers : list of torch.Tensor
            Empty before the first training step.
        """
        if self.average_ is None:
            return []
        return self.average_[len(list(net.module_.parameters())):]

    # the snapshot protocol of robustfit.callbacks.snapshot_weights
    def weights_state(self):
        """The callback's copy of the weights, for :func:`~robustfit.callbacks.snapshot_weights`.

        Returns
        -------
        state : dict
            ``{"average": cloned tensors or None, "holds_average": bool}``.
        """
        avg = None if self.average_ is None else [a.detach().clone() for a in self.average_]
        return {"average": avg, "holds_average": self.holds_average_}

    @torch.no_grad()
    def load_weights_state(self, state):
        """Restore a state returned by :meth:`weights_state`.

        Parameters
        ----------
        state : dict
            The value :meth:`weights_state` returned.
        """
        if state["average"] is None or self.average_ is None:
            self.average_ = None if state["average"] is None else [a.clone() for a in state["average"]]
        else:
            for a, s in zip(self.average_, state["average"]):
                a.copy_(s)
        self.holds_average_ = state["holds_average"]

    def __getstate__(self):
        state = self.__dict__.copy()
        if state.get("average_") is not None:  # pickled on the CPU: loads anywhere
            state["average_"] = [a.detach().cpu() for a in state["average_"]]
        return state


# --------------------------------------------------------------------- AWP
class AWP(ParamsValidationMixin, BaseEstimator):
    """Adversarial weight perturbation (Wu, Xia & Wang, NeurIPS 2020).

    Adversarial training flattens the loss in the input; AWP also flattens it
    in the weights. Each training step, after the attack has produced the
    adversarial batch at the current weights ``w``, AWP moves every weight
    matrix or kernel ``w_l`` (tensors of two or more dimensions; biases and
    normalization parameters stay) one step up the objective's gradient, to
    the edge of a ball of radius ``gamma * ||w_l||``:

    .. math::

        v_l = \\gamma\\,\\|w_l\\|\\,\\frac{\\nabla_{w_l} \\ell(w)}{\\|\\nabla_{w_l} \\ell(w)\\|}

    The training loss and its gradient are then computed at ``w + v``, the
    weights are put back to ``w`` exactly (from a copy, not by subtracting
    ``v``), and the optimizer applies that gradient to ``w``. The loss ascended
    is the classifier's objective (:meth:`~robustfit.losses.Objective.value`:
    cross-entropy on the adversarial batch for PGD-AT, clean CE plus ``beta``
    KL for TRADES, MART's, or DALE's without a dual step), with the module in
    train mode; BatchNorm's running statistics are restored after that extra
    pass, so they see each batch once, as the authors' separate proxy model
    ensures.

    Cost: one more forward and backward pass per batch (two forwards with an
    objective that needs the clean batch), about 1/8 more than PGD-7 training.

    Parameters
    ----------
    gamma : float, default=5e-3
        Relative size of the perturbation of each layer, ``>= 0`` (Wu et al.:
        5e-3 with TRADES, 1e-2 with PGD-AT on CIFAR-10). ``0`` turns AWP off.
    warmup : float, default=0
        Epochs of each ``fit`` call trained without AWP (Wu et al. start it
        after 10 of 200 epochs with TRADES).

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> from robustfit.losses import TRADES
    >>> from robustfit.recipes import AWP
    >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.3, steps=7, loss="kl"),
    ...                             objective=TRADES(beta=6.0), awp=AWP(gamma=5e-3, warmup=2))
    >>> clf.set_params(awp__gamma=1e-2).awp.gamma
    0.01
    """

    _parameter_constraints = {
        "gamma": [Interval(Real, 0, None)],
        "warmup": [Interval(Real, 0, None)],
    }

    def __init__(self, gamma=5e-3, warmup=0):
        self.gamma = gamma
        self.warmup = warmup

    def active(self, net):
        """Whether the current step of ``net`` is perturbed (past the warm-up).

        Parameters
        ----------
        net : robustfit.AdversarialClassifier
            The classifier being trained.

        Returns
        -------
        active : bool
        """
        return self.gamma > 0 and _schedule_epochs_done(net) >= self.warmup

    def perturb(self, net, X, X_adv, y, **fit_params):
        """Move the weights of ``net.module_`` to ``w + v`` for this step.

        Called by the training step after the attack and before the forward
        pass; :meth:`restore` must follow the backward pass.

        Parameters
        ----------
        net : robustfit.AdversarialClassifier
            The classifier being trained (its ``module_`` in train mode, its
            ``objective_`` set).
        X, X_adv : torch.Tensor
            The clean and the adversarial batch.
        y : torch.Tensor
            Class indices.
        **fit_params
            Passed to the module's ``forward``.
        """
        self.saved_ = self.weights_ = None
        if not self.active(net):
            return
        module, objective = net.module_, net.objective_
        weights = [p for p in module.parameters() if p.requires_grad and p.dim() > 1]
        buffers = [b.detach().clone() for b in module.buffers()]
        with torch.enable_grad():
            logits_adv = net.infer(X_adv, **fit_params)
            logits_clean = net.infer(X, **fit_params) if objective.needs_clean else None
            loss = objective.value(net, logits_adv, y, logits_clean)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
        grads = _global_batch_grads(weights, grads)
        with torch.no_grad():
            for b, saved in zip(module.buffers(), buffers):
                b.copy_(saved)
            self.saved_ = [w.detach().clone() for w in weights]
            for w, g in zip(weights, grads):
                if g is not None:
                    scale = self.gamma * w.norm() / g.norm().clamp_min(1e-12)
                    w.add_(g * scale)
        self.weights_ = weights

    @torch.no_grad()
    def restore(self, net):
        """Put the weights back to ``w`` exactly; a no-op when none were moved.

        Parameters
        ----------
        net : robustfit.AdversarialClassifier
            The classifier being trained.
        """
        if getattr(self, "saved_", None) is None:
            return
        for w, saved in zip(self.weights_, self.saved_):
            w.copy_(saved)
        self.saved_ = self.weights_ = None

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["saved_"] = state["weights_"] = None  # only alive within one step
        return state


def _global_batch_grads(weights, grads):
    """In data-parallel training, the gradient of the global batch's mean loss
    from each rank's gradient of its shard's mean loss: the mean over ranks of
    each rank's gradient times the shard's weight (``size * world / total``,
    as the training step weights its loss for DDP's average), so that every
    rank moves the weights as one process would; ``grads`` itself otherwise."""
    shard = current_shard()
    if shard is None or world_size() == 1:
        return grads
    return all_reduce_mean_([torch.zeros_like(w) if g is None else g.detach() * shard.weight
                             for w, g in zip(weights, grads)])


# ------------------------------------------------------------------- guard
class CollapseGuard(_ParamsRepr, ParamsValidationMixin, Callback):
    """Catastrophic-overfitting guard: an APGD-CE check of training robustness.

    Fast adversarial training with FGSM can *collapse* within an epoch: the
    model becomes robust to FGSM's single step while PGD accuracy falls to
    near zero (Wong, Rice & Kolter 2020, "catastrophic overfitting"). After
    every epoch this callback measures the robust accuracy of the training
    weights under APGD-CE (by default) on a fixed random subset of the
    training split
    (recorded as ``guard_robust_acc``). When it falls more than ``drop``
    below the best value of the fit, it warns, records ``guard_collapse``,
    restores the weights of the last epoch that passed the check (with
    :class:`EMA`, its average too) and, by default, stops training, as Wong et
    al. do. The check draws its random numbers from a generator of its own
    and puts the training's generators back, so a guarded fit trains exactly
    as the same fit without the guard until the guard acts: guarded and
    unguarded runs of one seed are a paired comparison.

    Installed by :class:`~robustfit.AdversarialClassifier` as the callback
    ``guard`` with its ``guard`` parameter; grid-searchable as
    ``guard__drop``. It works with any attack; FGSM is the one that needs it.

    Cost: one pass of a 10-iteration attack over ``max_samples`` training
    samples per epoch (512 samples of 10 iterations is about 1/11 of an epoch
    of FGSM training on MNIST's 8,000 images) and a copy of the weights.

    The default check is APGD-CE rather than PGD-10: on MNIST FGSM runs that
    lost 21 to 33 robust points after their best epoch, PGD-10 accuracy on
    the training subset stayed high and the guard fired late or never, while
    APGD-CE with 10 iterations saw the fall and fired one epoch after the
    most robust one on two seeds of three (see the recipes guide).

    Parameters
    ----------
    attack : robustfit.attacks.Attack, callable or None, default=None
        The check. ``None``: :class:`~robustfit.attacks.APGD` with the
        cross-entropy loss and 10 iterations in the training attack's
        threat model (its full ``epsilon``, ``norm`` and ``bounds``). Pass
        ``PGD(epsilon=..., steps=10)`` for the check of Wong et al.
    max_samples : int, default=512
        Size of the fixed training subset checked (the whole training split
        when it is smaller).
    drop : float, default=0.2
        The collapse threshold: a fall of the robust accuracy by more than this
        (absolute, in ``(0, 1)``) below the best of the fit (Wong et al. use
        0.2 between consecutive epochs).
    on_collapse : {"stop", "restore"}, default="stop"
        ``"stop"``: restore the last good weights and end training.
        ``"restore"``: restore them and train on (the optimizer keeps its
        state; the collapse may come back, and the guard acts again).

    Attributes
    ----------
    attack_ : robustfit.attacks.Attack or callable
        The check in use (set at the first epoch).
    best_ : float or None
        The best robust accuracy of the fit so far.
    collapses_ : list of int
        The epochs (1-based) at which a collapse was detected.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import FGSM
    >>> from robustfit.recipes import CollapseGuard
    >>> clf = AdversarialClassifier(attack=FGSM(epsilon=0.3), guard=CollapseGuard(drop=0.2))
    >>> clf.set_params(guard__max_samples=256).guard.max_samples
    256
    """

    _parameter_constraints = {
        "attack": [None, "callable"],
        "max_samples": [Interval(Integral, 1, None)],
        "drop": [Interval(Real, 0, 1, closed="neither")],
        "on_collapse": [Options(("stop", "restore"))],
    }

    def __init__(self, attack=None, max_samples=512, drop=0.2, on_collapse="stop"):
        self.attack = attack
        self.max_samples = max_samples
        self.drop = drop
        self.on_collapse = on_collapse

    def initialize(self):
        self.validate_params()
        check_attack(self.attack, "attack", type(self).__name__)
        self.attack_ = None
        self.collapses_ = []
        self._reset()
        return self

    def _reset(self):
        self.best_ = None
        self.good_ = None

    def resume_state(self):
        """What a run resumed from a checkpoint needs to go on as this one would:
        the best robust training accuracy so far and the weights of the last
        epoch that passed the check (saved in the checkpoint's training state).

        Returns
        -------
        state : dict
        """
        return {"best": self.best_, "good": self.good_}

    def load_resume_state(self, state):
        """Restore what :meth:`resume_state` returned.

        Parameters
        ----------
        state : dict
        """
        self.best_, self.good_ = state["best"], state["good"]

    def on_train_begin(self, net, **kwargs):
        if not hasattr(self, "collapses_"):  # used without initialize()
            self.initialize()
        self._reset()

    def _check_attack(self, net):
        if self.attack is not None:
            return clone(self.attack) if hasattr(self.attack, "get_params") else self.attack
        train = getattr(net, "attack", None)
        if train is None or not hasattr(train, "epsilon"):
            raise ValueError(
                "CollapseGuard(attack=None) checks in the training attack's threat model, but "
                f"the classifier's attack is {train!r}; pass CollapseGuard(attack=APGD(epsilon=...))"
            )
        return APGD(epsilon=train.epsilon, norm=getattr(train, "norm", "linf"), steps=10,
                    loss="ce", bounds=getattr(train, "bounds", (0.0, 1.0)))

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        if dataset_train is None:
            return
        if getattr(self, "attack_", None) is None:
            self.attack_ = self._check_attack(net)
        subset = _fixed_subset(dataset_train, self.max_samples)
        ema = _callback_of(net, EMA)
        with ema.raw_weights(net) if ema is not None else contextlib.nullcontext():
            score = _training_check(net, subset, self.attack_)
        net.history.record("guard_robust_acc", score)
        if self.best_ is not None and score < self.best_ - self.drop:
            epoch = len(net.history)
            self.collapses_.append(epoch)
            net.history.record("guard_collapse", True)
            action = "training stops" if self.on_collapse == "stop" else "training goes on"
            warnings.warn(
                f"catastrophic overfitting at epoch {epoch}: robust training accuracy under "
                f"{type(self.attack_).__name__} fell to {score:.3f} from a best of {self.best_:.3f} "
                f"(drop > {self.drop}); the weights of the last good epoch are restored and "
                f"{action}. A smaller step size (FGSM step_size <= 1.25 * epsilon), a multi-step "
                "attack or a lower learning rate avoids the collapse.",
                UserWarning, stacklevel=2,
            )
            if self.good_ is not None:
                restore_weights(net, self.good_)
            if self.on_collapse == "stop":
                raise KeyboardInterrupt
            return
        self.best_ = score if self.best_ is None else max(self.best_, score)
        self.good_ = snapshot_weights(net)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["good_"] = None  # a copy of the module, only needed during fit
        return state
