"""Training objectives: how a batch's clean and adversarial logits become a loss.

An objective is a small parameter object, like an attack, passed as
``AdversarialClassifier(objective=...)``; its parameters are grid-searchable as
``objective__beta`` and so on. The classifier keeps a fitted copy as
``objective_`` that carries any state (the dual variable of
:class:`PrimalDual`) across batches and epochs.

* :class:`AdversarialCE` - the loss on the adversarial batch only (Madry et
  al. 2018), the default.
* :class:`TRADES` - clean loss plus ``beta`` times the KL divergence from the
  clean to the adversarial prediction (Zhang et al. 2019).
* :class:`PrimalDual` - robust loss plus ``nu`` times the clean loss, with the
  dual variable ``nu`` updated by projected ascent on the constraint
  ``clean loss <= margin`` (Robey et al. 2021, DALE).
* :class:`MART` - adversarial cross-entropy plus a margin term, and a KL term
  weighted towards misclassified examples (Wang et al. 2020).

Every cross-entropy term goes through the classifier's criterion
(``net.get_loss``), so ``criterion__label_smoothing`` reaches all of them; the
KL and margin terms use the plain softmax.

:func:`dale_recipe` gives the whole training recipe of the DALE authors' code
(attack, objective, optimizer, schedule) as classifier parameters.
"""

from __future__ import annotations

from numbers import Integral, Real

import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from skorch.callbacks import LRScheduler

from ._distributed import batch_mean
from ._ot import sinkhorn_cost, sinkhorn_distance
from ._validation import Interval, Options, ParamsValidationMixin, check_param
from .attacks import PGD, Langevin

__all__ = [
    "MART", "AdversarialCE", "Objective", "PrimalDual", "TRADES", "dale_recipe", "kl_divergence",
    "sinkhorn_cost",
    "sinkhorn_distance",
]


def kl_divergence(logits_clean, logits_adv):
    """Mean KL divergence ``KL(p_clean || p_adv)`` between two batches of logits.

    The clean distribution is the reference, as in TRADES (Zhang et al. 2019);
    gradients flow through both arguments.

    Parameters
    ----------
    logits_clean, logits_adv : torch.Tensor of shape (n, n_classes)
        Logits of the clean and of the adversarial inputs.

    Returns
    -------
    kl : torch.Tensor
        Scalar, averaged over the batch (``reduction="batchmean"``).
    """
    log_p_clean = F.log_softmax(logits_clean.float(), dim=1)
    log_p_adv = F.log_softmax(logits_adv.float(), dim=1)
    return F.kl_div(log_p_adv, log_p_clean, reduction="batchmean", log_target=True)


class Objective(ParamsValidationMixin, BaseEstimator):
    """Base class of training objectives.

    Subclasses implement :meth:`loss`. An objective that needs the logits of
    the clean batch sets ``needs_clean = True``; the classifier then runs a
    second forward pass, in train mode, on the clean inputs. One whose loss
    does not use the adversarial batch makes ``needs_adv`` false; the
    classifier then skips the attack.

    The hooks :meth:`reset`, :meth:`on_epoch_end` keep and report state;
    :meth:`validate_params` checks the parameters against the class's
    ``_parameter_constraints``. :meth:`value` is the loss without any state
    update; adversarial weight perturbation (:class:`~robustfit.recipes.AWP`)
    ascends it.
    """

    #: Whether :meth:`loss` needs the clean batch's logits.
    needs_clean = False

    #: Whether :meth:`loss` uses the adversarial batch (else the attack is skipped).
    needs_adv = True

    def reset(self):
        """Forget any state; called when ``fit`` starts afresh."""

    def loss(self, net, logits_adv, y, logits_clean=None):
        """The training loss of one batch.

        Parameters
        ----------
        net : robustfit.AdversarialClassifier
            The classifier being trained; its ``criterion_`` is the per-batch
            loss (cross-entropy by default).
        logits_adv : torch.Tensor of shape (n, n_classes)
            Logits of the adversarial batch, in train mode.
        y : torch.Tensor of shape (n,)
            Class indices.
        logits_clean : torch.Tensor of shape (n, n_classes) or None
            Logits of the clean batch when :attr:`needs_clean` is true.

        Returns
        -------
        loss : torch.Tensor
            Scalar to back-propagate.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")  # pragma: no cover

    def value(self, net, logits_adv, y, logits_clean=None):
        """The loss of one batch, without updating any state.

        Equal to :meth:`loss` for stateless objectives (the default calls it);
        an objective with state (:class:`PrimalDual`) overrides it so that an
        extra evaluation, such as the weight perturbation of
        :class:`~robustfit.recipes.AWP`, leaves the state alone.

        Parameters
        ----------
        net, logits_adv, y, logits_clean
            As for :meth:`loss`.

        Returns
        -------
        loss : torch.Tensor
            Scalar.
        """
        return self.loss(net, logits_adv, y, logits_clean)

    def on_epoch_end(self):
        """Values to record in the classifier's history after an epoch.

        Returns
        -------
        values : dict
            Column name to float; empty by default.
        """
        return {}


class AdversarialCE(Objective):
    """The classifier's criterion on the adversarial batch (Madry et al. 2018).

    The default objective: ``criterion(f(x_adv), y)``. With ``attack=None``
    it is standard training.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> from robustfit.losses import AdversarialCE
    >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.1), objective=AdversarialCE())
    """

    def loss(self, net, logits_adv, y, logits_clean=None):
        """``criterion(logits_adv, y)``; see :meth:`Objective.loss`."""
        return net.get_loss(logits_adv, y, training=True)


class TRADES(Objective):
    """TRADES (Zhang et al. 2019): clean loss plus a robustness regularizer.

    .. math::

        \\ell = \\mathrm{CE}(f(x), y) + \\beta\\,
        \\mathrm{KL}\\big(p(x) \\,\\|\\, p(x_{adv})\\big)

    ``beta`` trades clean accuracy (small) for robustness (large); Zhang et
    al. use 6 on CIFAR-10 and MNIST. ``beta=0`` is standard training on the
    clean batch: the classifier then skips the attack, so the fit is the one
    ``attack=None`` gives. Zhang et al. generate ``x_adv`` by maximizing the
    KL term, ``PGD(..., loss="kl")``; robustfit uses whatever ``attack`` the
    classifier has.

    Parameters
    ----------
    beta : float, default=6.0
        Weight of the KL term, ``>= 0``.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> from robustfit.losses import TRADES
    >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.3), objective=TRADES(beta=6.0))
    >>> clf.set_params(objective__beta=1.0).objective.beta
    1.0
    """

    needs_clean = True
    _parameter_constraints = {"beta": [Interval(Real, 0, None)]}

    def __init__(self, beta=6.0):
        self.beta = beta

    @property
    def needs_adv(self):
        """``False`` for ``beta=0``: the loss is then the clean loss alone."""
        return self.beta != 0

    def loss(self, net, logits_adv, y, logits_clean=None):
        """Clean criterion plus ``beta`` times the KL term; see :meth:`Objective.loss`."""
        clean = net.get_loss(logits_clean, y, training=True)
        if self.beta == 0:
            return clean
        return clean + self.beta * kl_divergence(logits_clean, logits_adv)


class PrimalDual(Objective):
    """Primal-dual training with a constraint on the clean loss (DALE).

    Robey et al. (2021) pose adversarial training as the constrained problem

    .. math::

        \\min_\\theta\\ \\mathbb{E}\\big[\\ell_{rob}(\\theta)\\big]
        \\quad\\text{s.t.}\\quad \\mathbb{E}\\big[\\ell(f_\\theta(x), y)\\big] \\le \\rho

    and solve its Lagrangian dual: every batch takes a descent step on
    ``robust_loss + nu * clean_loss`` in the parameters, and the dual variable
    follows projected ascent,
    ``nu <- max(0, nu + dual_lr * (clean_loss - margin))``. ``nu`` grows while
    clean accuracy is worse than the margin allows, and shrinks to zero once
    the constraint holds, so the robust loss then has the gradient to itself.

    Special cases: ``dual_lr=0`` with ``nu_init=0`` (or a margin the clean
    loss never exceeds) is plain adversarial training, and with
    ``attack=Langevin(temperature=0)`` exactly PGD training;
    ``robust_loss="kl", dual_lr=0, nu_init=1/beta`` is :class:`TRADES` scaled
    by ``1/beta``. See :doc:`/dale`.

    Parameters
    ----------
    margin : float, default=0.1
        The constraint level ``rho`` on the mean clean loss.
    dual_lr : float, default=0.01
        Step size of the dual ascent. With ``update="batch"`` the step is
        taken every batch, so ``nu`` moves by up to ``dual_lr * n_batches``
        times the slack per epoch: on MNIST (63 batches an epoch) 0.01 let
        ``nu`` peak near 1.6, while 0.1 drove it to 14 and robust accuracy
        from 81% to 47% (``benchmarks/bench_dale.py``). ``0`` keeps ``nu`` at
        ``nu_init`` (DALE with a fixed weight).
    robust_loss : {"ce", "kl"}, default="ce"
        ``"ce"``: cross-entropy on the adversarial batch. ``"kl"``: the
        TRADES-style ``KL(p(x) || p(x_adv))``, which the authors' code uses.
    update : {"batch", "epoch"}, default="batch"
        Update ``nu`` after every batch (with that batch's clean loss) or once
        per epoch (with the epoch's mean clean loss).
    nu_init : float, default=0.0
        The dual variable at the start of ``fit`` (the authors' code starts
        from 1).

    The authors' settings (advbench's ``Gaussian_DALE_PD`` and
    ``KL_DALE_PD``) are ``PrimalDual(margin=0.1, dual_lr=1e-3, nu_init=1.0)``
    with ``update="batch"``, and ``robust_loss="kl"`` for KL-DALE;
    :func:`dale_recipe` sets them together with the authors' sampler and
    optimizer.

    Notes
    -----
    In data-parallel training (``torchrun``) the clean loss of each step is
    all-reduced over the ranks before the dual step, so ``nu`` is the same
    on every rank and equals the one-process value for the same global batch.

    Attributes
    ----------
    nu_ : float
        The current dual variable (also recorded as ``dual_nu`` in the
        classifier's history each epoch, next to ``clean_loss``).

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import Langevin
    >>> from robustfit.losses import PrimalDual
    >>> dale = AdversarialClassifier(
    ...     attack=Langevin(epsilon=0.3, steps=7, temperature=1e-3),
    ...     objective=PrimalDual(margin=0.1, dual_lr=0.01))
    >>> dale.set_params(objective__margin=0.05).objective.margin
    0.05
    """

    needs_clean = True
    _parameter_constraints = {
        "margin": [Interval(Real, 0, None)],
        "dual_lr": [Interval(Real, 0, None)],
        "robust_loss": [Options(("ce", "kl"))],
        "update": [Options(("batch", "epoch"))],
        "nu_init": [Interval(Real, 0, None)],
    }

    def __init__(self, margin=0.1, dual_lr=0.01, robust_loss="ce", update="batch", nu_init=0.0):
        self.margin = margin
        self.dual_lr = dual_lr
        self.robust_loss = robust_loss
        self.update = update
        self.nu_init = nu_init

    def reset(self):
        """Set ``nu`` to ``nu_init`` and clear the epoch's running sums."""
        self.nu_t_ = None
        self._clear_epoch()

    def _clear_epoch(self):
        self.epoch_loss_ = None
        self.epoch_batches_ = 0

    @property
    def nu_(self):
        """The dual variable as a float."""
        nu = getattr(self, "nu_t_", None)
        return float(self.nu_init) if nu is None else float(nu)

    def _nu(self, device):
        # nu stays a tensor on the device: no host sync per batch
        if getattr(self, "nu_t_", None) is None:
            self.nu_t_ = torch.tensor(float(self.nu_init), device=device)
        if self.nu_t_.device != device:  # unpickled on another device
            self.nu_t_ = self.nu_t_.to(device)
        return self.nu_t_

    def _terms(self, net, logits_adv, y, logits_clean):
        clean = net.get_loss(logits_clean, y, training=True)
        if self.robust_loss == "ce":
            robust = net.get_loss(logits_adv, y, training=True)
        else:
            robust = kl_divergence(logits_clean, logits_adv)
        return clean, robust

    def value(self, net, logits_adv, y, logits_clean=None):
        """``robust_loss + nu * clean_loss`` with the current ``nu``, no dual step."""
        clean, robust = self._terms(net, logits_adv, y, logits_clean)
        return robust + self._nu(clean.device) * clean

    def loss(self, net, logits_adv, y, logits_clean=None):
        """``robust_loss + nu * clean_loss``, then the dual step; see :meth:`Objective.loss`."""
        clean, robust = self._terms(net, logits_adv, y, logits_clean)
        nu = self._nu(clean.device)
        loss = robust + nu * clean
        # data-parallel: the dual step uses the global batch's clean loss
        # (all-reduced), so every rank holds the same nu
        acc = batch_mean(clean.detach().float())
        if self.update == "batch":
            self.nu_t_ = (nu + self.dual_lr * (acc - self.margin)).clamp_min(0.0)
        self.epoch_loss_ = acc if getattr(self, "epoch_loss_", None) is None else self.epoch_loss_ + acc
        self.epoch_batches_ = getattr(self, "epoch_batches_", 0) + 1
        return loss

    def __getstate__(self):
        # the state is pickled on the CPU, so a model trained on a GPU loads anywhere
        state = dict(super().__getstate__())  # a copy: the live object keeps its device
        for key in ("nu_t_", "epoch_loss_"):
            if torch.is_tensor(state.get(key)):
                state[key] = state[key].detach().cpu()
        return state

    def on_epoch_end(self):
        """Apply the per-epoch dual step (``update="epoch"``); report ``nu``.

        Returns
        -------
        values : dict
            ``{"dual_nu": nu, "clean_loss": mean clean training loss}``.
        """
        values = {"dual_nu": self.nu_}
        if getattr(self, "epoch_batches_", 0):
            mean = self.epoch_loss_ / self.epoch_batches_
            values["clean_loss"] = float(mean)
            if self.update == "epoch":
                nu = self.nu_t_ if self.nu_t_ is not None else torch.tensor(float(self.nu_init))
                self.nu_t_ = (nu + self.dual_lr * (mean - self.margin)).clamp_min(0.0)
                values["dual_nu"] = self.nu_
        self._clear_epoch()
        return values


def _log_one_minus_softmax(logits, index):
    """``log(1 - softmax(logits)[i, index[i]])``, computed without cancellation.

    ``1 - p_k`` is the probability of every class but ``k``, so its log is
    ``logsumexp`` of the other logits minus ``logsumexp`` of all of them: exact
    even where ``p_k`` rounds to 1 in floating point.
    """
    others = logits.scatter(1, index[:, None], float("-inf"))
    return torch.logsumexp(others, dim=1) - torch.logsumexp(logits, dim=1)


class MART(Objective):
    """MART (Wang et al. 2020): misclassification-aware adversarial training.

    .. math::

        \\ell = \\underbrace{\\mathrm{CE}(f(x'), y)
        - \\log\\big(1 - \\max_{k \\ne y} p_k(x')\\big)}_{\\mathrm{BCE}}
        + \\beta\\,\\mathrm{KL}\\big(p(x) \\,\\|\\, p(x')\\big)\\,\\big(1 - p_y(x)\\big)

    averaged over the batch, with ``x'`` the adversarial and ``x`` the clean
    input. The boosted cross-entropy (BCE) adds a margin term that pushes down
    the most likely wrong class; the KL regularizer of :class:`TRADES` is
    weighted by ``1 - p_y(x)``, so examples the model misclassifies (or
    classifies with little confidence) weigh more. As in the paper, the
    weight is part of the graph (not detached). The adversarial examples come
    from the classifier's ``attack``, which for MART is PGD on the
    cross-entropy (the default ``PGD(loss="ce")``).

    The cross-entropy term is the classifier's criterion (label smoothing
    applies to it); the margin and KL terms use the plain softmax. The margin
    term is computed as ``log(1 - p_k) = logsumexp(z_{-k}) - logsumexp(z)``,
    exact where ``p_k`` is close to 1 (the authors' code adds ``1e-4`` inside
    the log instead).

    Parameters
    ----------
    beta : float, default=6.0
        Weight of the misclassification-aware KL term, ``>= 0`` (Wang et al.
        use 6 on CIFAR-10 and MNIST). ``beta=0`` leaves the boosted
        cross-entropy alone.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> from robustfit.losses import MART
    >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.3, steps=7), objective=MART(beta=6.0))
    >>> clf.set_params(objective__beta=3.0).objective.beta
    3.0
    """

    needs_clean = True
    _parameter_constraints = {"beta": [Interval(Real, 0, None)]}

    def __init__(self, beta=6.0):
        self.beta = beta

    def loss(self, net, logits_adv, y, logits_clean=None):
        """Boosted cross-entropy plus the weighted KL term; see :meth:`Objective.loss`."""
        ce = net.get_loss(logits_adv, y, training=True)
        z_adv = logits_adv.float()
        # the most likely wrong class of each adversarial example
        wrong = z_adv.scatter(1, y[:, None], float("-inf")).argmax(dim=1)
        margin = -_log_one_minus_softmax(z_adv, wrong).mean()
        loss = ce + margin
        if self.beta == 0:
            return loss
        log_p_clean = F.log_softmax(logits_clean.float(), dim=1)
        log_p_adv = F.log_softmax(z_adv, dim=1)
        kl = (log_p_clean.exp() * (log_p_clean - log_p_adv)).sum(dim=1)
        weight = 1.0 - log_p_clean.gather(1, y[:, None]).squeeze(1).exp()
        return loss + self.beta * (kl * weight).mean()


# --------------------------------------------------------------------------- the authors' recipe
_DALE_METHODS = ("dale", "dale-laplace", "kl-dale", "pgd", "trades")


def dale_recipe(method="dale", epsilon=0.3, epochs=50, steps=7, step_size=0.1, batch_size=128,
                schedule="constant"):
    """The MNIST training recipe of the DALE authors' code, as classifier parameters.

    Robey et al.'s code (github.com/arobey1/advbench) trains every method of
    their MNIST comparison with the same optimizer and schedule; this function
    returns those settings for one method, to unpack into
    :class:`~robustfit.AdversarialClassifier`::

        AdversarialClassifier(MnistCNN, **dale_recipe("kl-dale"))

    Every entry can be overridden after unpacking, e.g.
    ``clf.set_params(max_epochs=20)`` (the schedule's milestones follow
    ``epochs``, so pass the epoch count here rather than later).

    * optimizer: SGD, lr 0.01, momentum 0.9, weight decay 3.5e-3, batch 128,
      50 epochs, no epsilon warm-up, the whole training set (no validation
      split); the learning rate constant (``schedule="constant"``: the code
      of the paper's time, October 2021, stepped it at epochs 55, 75 and 90,
      which 50 epochs never reach) or divided by 10 at epochs 25, 35 and 40
      (``schedule="step"``: the repository's 2023 code; the milestones scale
      with ``epochs``, at 50%, 70% and 80%);
    * ``"dale"`` (``Gaussian_DALE_PD``): :class:`~robustfit.attacks.Langevin`
      on ``log(1 - p_y)``, ``steps`` steps of ``step_size`` from
      ``x + 0.001 N(0, I)``, Gaussian noise of coefficient 1e-3; the
      cross-entropy robust loss; :class:`PrimalDual` with ``nu_init=1``,
      ``dual_lr=1e-3``, ``margin=0.1``;
    * ``"dale-laplace"``: the same with Laplace noise inside the sign
      (advbench's ``LMC_Laplacian_Linf`` sampler, coefficient 1e-3 on the
      batch-mean gradient, ``1e-3 * batch_size`` on robustfit's summed one);
    * ``"kl-dale"`` (``KL_DALE_PD``): the TRADES attack, i.e. Langevin on
      ``KL(p(x) || p(x + delta))`` from the near-zero start without noise,
      and the KL robust loss, same dual settings;
    * ``"pgd"``: the authors' PGD baseline, PGD steps from ``x`` itself (no
      random start) on the cross-entropy, :class:`AdversarialCE`;
    * ``"trades"``: the authors' TRADES baseline, the TRADES attack and
      :class:`TRADES` with their MNIST ``beta=1`` (the authors' code puts
      the cross-entropy on the adversarial batch; robustfit's TRADES on the
      clean one, as Zhang et al.).

    Parameters
    ----------
    method : {"dale", "dale-laplace", "kl-dale", "pgd", "trades"}, default="dale"
        Which method of the comparison.
    epsilon : float, default=0.3
        l_inf radius (the authors' MNIST value).
    epochs : int, default=50
        Training epochs (the authors': 50).
    steps : int, default=7
        Attack or sampler steps in training (the authors': 7).
    step_size : float, default=0.1
        Their length (the authors': 0.1).
    batch_size : int, default=128
        Training batch size (the authors' at the time of the paper; the
        repository's latest default is 64).
    schedule : {"constant", "step"}, default="constant"
        The learning-rate schedule (see above).

    Returns
    -------
    params : dict
        ``attack``, ``objective``, ``optimizer``, ``lr``,
        ``optimizer__momentum``, ``optimizer__weight_decay``, ``batch_size``,
        ``max_epochs``, ``lr_schedule`` (``"constant"``), ``attack_warmup``
        (0), ``train_split`` (None) and, for ``schedule="step"``,
        ``callbacks`` (a skorch ``LRScheduler`` named ``"step_lr"``).

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.losses import dale_recipe
    >>> from robustfit.models import MnistCNN
    >>> clf = AdversarialClassifier(MnistCNN, **dale_recipe("kl-dale", epochs=20))
    >>> clf.attack.potential, clf.objective.robust_loss, clf.objective.nu_init
    ('kl', 'kl', 1.0)
    """
    check_param(method, "method", [Options(_DALE_METHODS)], "dale_recipe")
    check_param(epsilon, "epsilon", [Interval(Real, 0, None, closed="left")], "dale_recipe")
    check_param(epochs, "epochs", [Interval(Integral, 1, None)], "dale_recipe")
    check_param(steps, "steps", [Interval(Integral, 1, None)], "dale_recipe")
    check_param(step_size, "step_size", [Interval(Real, 0, None, closed="left")], "dale_recipe")
    check_param(batch_size, "batch_size", [Interval(Integral, 1, None)], "dale_recipe")
    check_param(schedule, "schedule", [Options(("constant", "step"))], "dale_recipe")
    sampler = dict(epsilon=epsilon, steps=steps, step_size=step_size)
    near_zero = dict(random_start="normal", start_scale=1e-3)
    dual = dict(margin=0.1, dual_lr=1e-3, nu_init=1.0, update="batch")
    if method == "dale":
        attack = Langevin(potential="log1m", noise="gaussian", noise_coef=1e-3, **near_zero, **sampler)
        objective = PrimalDual(robust_loss="ce", **dual)
    elif method == "dale-laplace":
        attack = Langevin(potential="log1m", noise="laplace", noise_coef=1e-3 * batch_size,
                          **near_zero, **sampler)
        objective = PrimalDual(robust_loss="ce", **dual)
    elif method == "kl-dale":
        attack = Langevin(potential="kl", noise_coef=0.0, **near_zero, **sampler)
        objective = PrimalDual(robust_loss="kl", **dual)
    elif method == "pgd":
        attack = PGD(random_start=False, **sampler)
        objective = AdversarialCE()
    else:  # trades
        attack = Langevin(potential="kl", noise_coef=0.0, **near_zero, **sampler)
        objective = TRADES(beta=1.0)
    params = {
        "attack": attack,
        "objective": objective,
        "optimizer": torch.optim.SGD,
        "lr": 0.01,
        "optimizer__momentum": 0.9,
        "optimizer__weight_decay": 3.5e-3,
        "batch_size": batch_size,
        "max_epochs": epochs,
        "lr_schedule": "constant",
        "attack_warmup": 0,
        "train_split": None,
    }
    if schedule == "step":
        milestones = sorted({max(1, round(epochs * f)) for f in (0.5, 0.7, 0.8)})
        params["callbacks"] = [("step_lr", LRScheduler(policy=torch.optim.lr_scheduler.MultiStepLR,
                                                       milestones=milestones, gamma=0.1))]
    return params
