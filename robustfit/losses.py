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
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator

__all__ = ["AdversarialCE", "Objective", "PrimalDual", "TRADES", "kl_divergence", "sinkhorn_distance"]


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


def _check_real(value, name, minimum=0.0):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) \
            or not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")


class Objective(BaseEstimator):
    """Base class of training objectives.

    Subclasses implement :meth:`loss`. An objective that needs the logits of
    the clean batch sets ``needs_clean = True``; the classifier then runs a
    second forward pass, in train mode, on the clean inputs. One whose loss
    does not use the adversarial batch makes ``needs_adv`` false; the
    classifier then skips the attack.

    The hooks :meth:`reset`, :meth:`on_epoch_end` keep and report state;
    :meth:`validate` checks the parameters.
    """

    #: Whether :meth:`loss` needs the clean batch's logits.
    needs_clean = False

    #: Whether :meth:`loss` uses the adversarial batch (else the attack is skipped).
    needs_adv = True

    def validate(self):
        """Check the parameters; raise ``ValueError`` for a bad one."""

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

    def __init__(self, beta=6.0):
        self.beta = beta

    @property
    def needs_adv(self):
        """``False`` for ``beta=0``: the loss is then the clean loss alone."""
        return self.beta != 0

    def validate(self):
        """Check that ``beta`` is a number ``>= 0``."""
        _check_real(self.beta, "beta")

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
    _robust_losses = ("ce", "kl")
    _updates = ("batch", "epoch")

    def __init__(self, margin=0.1, dual_lr=0.01, robust_loss="ce", update="batch", nu_init=0.0):
        self.margin = margin
        self.dual_lr = dual_lr
        self.robust_loss = robust_loss
        self.update = update
        self.nu_init = nu_init

    def validate(self):
        """Check the parameters."""
        _check_real(self.margin, "margin")
        _check_real(self.dual_lr, "dual_lr")
        _check_real(self.nu_init, "nu_init")
        if self.robust_loss not in self._robust_losses:
            raise ValueError(
                f"robust_loss must be one of {self._robust_losses}, got {self.robust_loss!r}"
            )
        if self.update not in self._updates:
            raise ValueError(f"update must be one of {self._updates}, got {self.update!r}")

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

    def loss(self, net, logits_adv, y, logits_clean=None):
        """``robust_loss + nu * clean_loss``, then the dual step; see :meth:`Objective.loss`."""
        clean = net.get_loss(logits_clean, y, training=True)
        if self.robust_loss == "ce":
            robust = net.get_loss(logits_adv, y, training=True)
        else:
            robust = kl_divergence(logits_clean, logits_adv)
        # nu stays a tensor on the device: no host sync per batch
        if getattr(self, "nu_t_", None) is None:
            self.nu_t_ = torch.tensor(float(self.nu_init), device=clean.device)
        nu = self.nu_t_
        if nu.device != clean.device:  # unpickled on another device
            nu = self.nu_t_ = nu.to(clean.device)
        loss = robust + nu * clean
        slack = clean.detach().float() - self.margin
        if self.update == "batch":
            self.nu_t_ = (nu + self.dual_lr * slack).clamp_min(0.0)
        acc = clean.detach().float()
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


# ---------------------------------------------------------------------------
# Optimal-transport regularizer (Robustness-via-Synthesis, GeneratorSynth)
# ---------------------------------------------------------------------------
def sinkhorn_distance(a, b, blur=0.1, p=2, scaling=0.5, debias=True):
    """Entropic optimal-transport (Sinkhorn) divergence between two point clouds.

    The OT term of :class:`~robustfit.attacks.GeneratorSynth` (Baytas & Deb
    2023): the batches ``a`` and ``b`` are uniform distributions over their
    rows, the ground cost is ``|x - y|^p / p`` and the entropic regularization
    is ``blur ** p``. With ``debias=True`` this is the Sinkhorn *divergence*

    .. math::

        S(a, b) = OT_\\varepsilon(a, b) - \\tfrac12 OT_\\varepsilon(a, a)
                  - \\tfrac12 OT_\\varepsilon(b, b),

    which is zero for identical batches, positive otherwise, and tends to the
    unregularized OT cost as ``blur`` goes to 0 (Feydy et al. 2019). It is
    computed by geomloss (``SamplesLoss("sinkhorn")``), on the inputs' device,
    in float32 outside any autocast, and is differentiable in both arguments
    (gradients by the envelope theorem, so memory does not grow with the
    number of Sinkhorn iterations). geomloss was picked over POT by the
    measurement in ``benchmarks/bench_ot.py`` (see the GeneratorSynth docs
    page).

    Parameters
    ----------
    a, b : torch.Tensor of shape (n, ...) and (m, ...)
        Two batches of representations; trailing dimensions are flattened and
        must agree.
    blur : float, default=0.1
        Entropic blur, in the units of the representations.
    p : {1, 2}, default=2
        Exponent of the ground cost.
    scaling : float, default=0.5
        Ratio of the epsilon-scaling annealing in ``(0, 1)``: closer to 1 is
        more accurate and slower.
    debias : bool, default=True
        Return the Sinkhorn divergence (``True``) or the entropic OT cost
        ``OT_eps(a, b)`` itself (``False``, not zero for identical batches).

    Returns
    -------
    distance : torch.Tensor
        Scalar.

    Examples
    --------
    >>> import torch
    >>> from robustfit.losses import sinkhorn_distance
    >>> a = torch.randn(64, 10)
    >>> float(sinkhorn_distance(a, a))
    0.0
    >>> bool(sinkhorn_distance(a, a + 1.0) > 0)
    True
    """
    from geomloss import SamplesLoss

    _check_real(blur, "blur")
    if blur == 0:
        raise ValueError(f"blur must be > 0, got {blur!r}")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    if not isinstance(scaling, numbers.Real) or not 0 < scaling < 1:
        raise ValueError(f"scaling must be a number in (0, 1), got {scaling!r}")
    a, b = a.flatten(1), b.flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different feature sizes: {a.shape[1]} and {b.shape[1]}")
    with torch.autocast(device_type=a.device.type, enabled=False):
        loss = SamplesLoss("sinkhorn", p=p, blur=float(blur), scaling=float(scaling),
                           debias=bool(debias), backend="tensorized")
        return loss(a.float().contiguous(), b.float().contiguous())
