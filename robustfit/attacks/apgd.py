"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks", ICML 2020).

APGD is PGD without a step size to tune: it starts with a large step
(``2 * epsilon``), adds momentum, and halves the step at checkpoints where the
loss has stopped rising, restarting from the best point found so far. Besides
the cross-entropy it can ascend the *difference of logits ratio* (DLR), a
margin loss that is invariant to shifting and rescaling the logits, so that a
model cannot hide behind saturated softmax outputs.
"""

from __future__ import annotations

from numbers import Integral, Real

import torch
import torch.nn.functional as F

from .._validation import Interval, Options, check_param
from ._base import Attack, normalize_gradient, project, random_init
from ._steps import best_of_restarts, margin

LOSSES = ("ce", "dlr", "dlr-targeted")


def dlr_loss(logits, y, target=None):
    """Difference of logits ratio loss (Croce & Hein 2020), per sample.

    With ``z`` the logits and ``z_pi1 >= z_pi2 >= ...`` their sorted values,
    the untargeted loss is::

        DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)

    and the targeted one, for a target class ``t``::

        DLR_t(z, y) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)

    Both are to be *maximized* by an attack; the untargeted one is positive
    exactly on misclassified samples. Dividing by a difference of logits makes
    them invariant to shifting and to positive rescaling of the logits.

    With too few classes for the denominator (fewer than 3 untargeted, 4
    targeted), the denominator falls back to ``z_pi1 - z_pi3`` when 3 classes
    exist, and to 1 (the plain margin loss of Carlini & Wagner) for 2 classes.

    Parameters
    ----------
    logits : torch.Tensor of shape (n, n_classes)
        Class logits.
    y : torch.Tensor of shape (n,)
        True class indices.
    target : torch.Tensor of shape (n,) or None, default=None
        Target class indices for the targeted loss; ``None`` for the
        untargeted one.

    Returns
    -------
    loss : torch.Tensor of shape (n,)
        The loss of each sample (differentiable).

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import dlr_loss
    >>> z = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    >>> dlr_loss(z, torch.tensor([0]))            # -(1 - 3) / (3 - 1)
    tensor([1.])
    >>> dlr_loss(z, torch.tensor([0]), torch.tensor([2]))  # -(1 - 2) / (3 - 0.5)
    tensor([0.4000])
    """
    n_classes = logits.shape[1]
    z_sorted = logits.sort(dim=1, descending=True).values
    if target is None:
        numerator = margin(logits, y)
        denominator = z_sorted[:, 0] - z_sorted[:, 2] if n_classes >= 3 else 1.0
    else:
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        z_t = logits.gather(1, target[:, None]).squeeze(1)
        numerator = z_y - z_t
        if n_classes >= 4:
            denominator = z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3])
        elif n_classes == 3:
            denominator = z_sorted[:, 0] - z_sorted[:, 2]
        else:
            denominator = 1.0
    return -numerator / (denominator + 1e-12)


def apgd_checkpoints(n_iter):
    """The iterations at which APGD may halve its step size.

    ``w_j = ceil(p_j * n_iter)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` while ``p_j <= 1``
    (Croce & Hein 2020, section 3.2). The fractions are computed in exact
    integer hundredths, so no rounding error moves a checkpoint.

    Parameters
    ----------
    n_iter : int
        Number of iterations of the attack.

    Returns
    -------
    checkpoints : list of int
        Increasing iteration indices, starting at 0 (duplicates, which occur
        for small ``n_iter``, are dropped).

    Examples
    --------
    >>> from robustfit.attacks import apgd_checkpoints
    >>> apgd_checkpoints(100)
    [0, 22, 41, 57, 70, 80, 87, 93, 99]
    """
    check_param(n_iter, "n_iter", [Interval(Integral, 1, None)], "apgd_checkpoints")
    p = [0, 22]  # in hundredths
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 3, 6)
        if nxt > 100:
            break
        p.append(nxt)
    checkpoints = []
    for pj in p:
        w = -(-pj * n_iter // 100)  # ceil(pj / 100 * n_iter) in integers
        if not checkpoints or w > checkpoints[-1]:
            checkpoints.append(w)
    return checkpoints


def _halve_at_checkpoint(history, w0, w1, rho, reduced_last, loss_best, loss_best_last):
    """Where APGD halves the step at checkpoint ``w1``: the loss rose in fewer than a
    fraction ``rho`` of the steps since ``w0`` (condition 1), or the step was not
    reduced last time and the best loss has not improved since (condition 2)."""
    increases = (history[w0 + 1:w1 + 1] > history[w0:w1]).sum(0)
    cond1 = increases < rho * (w1 - w0)
    cond2 = ~reduced_last & (loss_best <= loss_best_last)
    return cond1 | cond2


class APGD(Attack):
    """Auto-PGD: projected gradient ascent with an adaptive step size.

    The attack of Croce & Hein, ICML 2020.
    Starting from a random point of the ball, each iteration takes a step of
    length ``eta`` along the steepest-ascent direction of the loss (the sign of
    the gradient for l_inf, the normalized gradient for l_2), projects onto the
    ball and the box, and mixes in momentum::

        z       = P(x_k + eta * dir(grad f(x_k)))
        x_{k+1} = P(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_{k-1}))

    with ``alpha = momentum`` (plain step at the first iteration). The step
    starts at ``2 * epsilon`` and is halved at a checkpoint of
    :func:`apgd_checkpoints` when

    1. fewer than ``rho`` of the iterations since the last checkpoint
       increased the loss, or
    2. the step was not halved at the last checkpoint and the best loss has
       not improved since then;

    after a halving, the iterate restarts from the best point found so far.
    As in the authors' implementation, condition 2 is first tested at the
    second checkpoint.

    For each sample the attack returns a misclassified point if any iterate
    was misclassified, and otherwise the point of highest loss. All iterates
    lie inside the epsilon-ball and the input box.

    Parameters
    ----------
    epsilon : float, default=0.3
        Radius of the threat model's ball.
    norm : {"linf", "l2"}, default="linf"
        Norm of the threat model.
    steps : int, default=100
        Number of iterations per run (the paper's ``N_iter``).
    loss : {"ce", "dlr", "dlr-targeted"}, default="ce"
        Loss to ascend: cross-entropy (APGD-CE), the difference of logits
        ratio (APGD-DLR, see :func:`dlr_loss`), or the targeted DLR (APGD-T),
        run once for each of the ``n_target_classes`` highest-scoring classes
        other than the top one.
    restarts : int, default=1
        Runs from independent random starts (per target class for APGD-T).
        Later runs only attack points that earlier runs did not misclassify.
    n_target_classes : int, default=9
        For ``loss="dlr-targeted"``: number of target classes, capped at
        ``n_classes - 1``. Ignored by the other losses.
    rho : float, default=0.75
        Threshold of condition 1 on the fraction of loss increases.
    momentum : float, default=0.75
        Weight ``alpha`` of the new step against the previous one.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box ``(low, high)`` adversarial inputs are clipped to;
        ``None`` for unbounded features.

    See Also
    --------
    PGD : Fixed-step projected gradient descent.
    AutoAttack : APGD-CE, APGD-T and optionally Square as one ensemble.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import APGD
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = APGD(epsilon=0.1, steps=10)(net, X, y)
    >>> bool((X_adv - X).abs().max() <= 0.1 + 1e-6)
    True
    """

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "steps": [Interval(Integral, 1, None)],
        "loss": [Options(LOSSES)],
        "restarts": [Interval(Integral, 1, None)],
        "n_target_classes": [Interval(Integral, 1, None)],
        "rho": [Interval(Real, 0, 1)],
        "momentum": [Interval(Real, 0, 1)],
    }

    def __init__(
        self,
        epsilon=0.3,
        norm="linf",
        steps=100,
        loss="ce",
        restarts=1,
        n_target_classes=9,
        rho=0.75,
        momentum=0.75,
        bounds=(0.0, 1.0),
    ):
        self.epsilon = epsilon
        self.norm = norm
        self.steps = steps
        self.loss = loss
        self.restarts = restarts
        self.n_target_classes = n_target_classes
        self.rho = rho
        self.momentum = momentum
        self.bounds = bounds


    def _loss(self, logits, y, target):
        if self.loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return dlr_loss(logits, y, target if self.loss == "dlr-targeted" else None)

    def _single_run(self, module, x, y, target_rank=None):
        """One APGD run from a random start; ``target_rank`` picks the target
        class of the targeted loss (1 = the second-highest clean logit).

        A point leaves the batch once it is misclassified: its result (that
        misclassified iterate) is final, and the trajectories of the other
        points do not depend on the batch, so dropping it changes no result
        and saves its forward and backward passes. The batch is compacted at
        the step-size checkpoints and whenever enough points have broken.
        """
        eps, norm, bounds = float(self.epsilon), self.norm, self._bounds
        target = None
        if target_rank is not None:
            with torch.no_grad():
                target = module(x).argsort(dim=1, descending=True)[:, target_rank]

        def loss_and_grad(point):
            point.requires_grad_(True)
            logits = module(point)
            loss = self._loss(logits, y, target)
            (grad,) = torch.autograd.grad(loss.sum(), point)
            point.requires_grad_(False)
            return loss.detach().float(), grad, logits.detach()

        low = high = None
        if norm == "linf":
            # the ball and the box are both boxes: one clamp between precomputed
            # per-coordinate limits projects onto their intersection
            low, high = x - eps, x + eps
            if bounds is not None:
                low, high = low.clamp_min(bounds[0]), high.clamp_max(bounds[1])

        def ascend(point, step, grad):
            if norm == "linf":
                return torch.addcmul(point, step, grad.sign()).clamp_(low, high)
            return x + project(x, point - x + step * normalize_gradient(grad, norm),
                               eps, norm, bounds)

        def feasible(point):
            if norm == "linf":
                return point.clamp_(low, high)
            return x + project(x, point - x, eps, norm, bounds)

        n = x.shape[0]
        result = x + random_init(x, eps, norm, bounds)
        rows = torch.arange(n, device=x.device)  # the batch's rows in ``result``
        x_adv = result.clone()
        loss, grad, logits = loss_and_grad(x_adv)
        broken = logits.argmax(1) != y
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()

        checkpoints = apgd_checkpoints(self.steps)
        history = torch.empty((self.steps + 1, n), device=x.device)
        history[0] = loss
        step = torch.full((n,) + (1,) * (x.dim() - 1), 2.0 * eps, device=x.device, dtype=x.dtype)
        reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
        loss_best_last = loss_best.clone()
        alpha = float(self.momentum)
        j = 1
        x_prev = x_adv
        for i in range(self.steps):
            at_checkpoint = j < len(checkpoints) and i + 1 == checkpoints[j]
            n_broken = int(broken.sum())
            if n_broken and (at_checkpoint or n_broken >= max(8, broken.numel() // 16)):
                # result rows of the broken points already hold their misclassified
                # iterate; keep only the robust ones
                keep = (~broken).nonzero().flatten()
                x, y, x_adv, x_prev, grad = x[keep], y[keep], x_adv[keep], x_prev[keep], grad[keep]
                x_best, grad_best, loss_best = x_best[keep], grad_best[keep], loss_best[keep]
                step, reduced_last, loss_best_last = step[keep], reduced_last[keep], loss_best_last[keep]
                history, rows, broken = history[:, keep], rows[keep], broken[keep]
                if target is not None:
                    target = target[keep]
                if low is not None:
                    low, high = low[keep], high[keep]
                if rows.numel() == 0:
                    return result
            with torch.no_grad():
                z = ascend(x_adv, step, grad)
                if i > 0:
                    # x + a (z - x) + (1 - a) (x - x_prev), in three in-place passes
                    z = feasible(z.mul_(alpha).add_(x_adv, alpha=2.0 * (1.0 - alpha))
                                 .sub_(x_prev, alpha=1.0 - alpha))
                x_prev, x_adv = x_adv, z
            loss, grad, logits = loss_and_grad(x_adv)
            with torch.no_grad():
                history[i + 1] = loss
                new = ((logits.argmax(1) != y) & ~broken).nonzero().flatten()
                if new.numel():
                    result[rows[new]] = x_adv[new]  # the first misclassified iterate
                    broken[new] = True
                improved = loss > loss_best
                idx = improved.nonzero().flatten()
                if idx.numel():
                    x_best[idx] = x_adv[idx]
                    grad_best[idx] = grad[idx]
                loss_best = torch.where(improved, loss, loss_best)
                if at_checkpoint:
                    halve = _halve_at_checkpoint(history, checkpoints[j - 1], checkpoints[j], self.rho,
                                                 reduced_last, loss_best, loss_best_last)
                    step[halve] /= 2.0
                    x_adv[halve] = x_best[halve]
                    grad[halve] = grad_best[halve]
                    reduced_last = halve
                    loss_best_last = loss_best.clone()
                    j += 1
        robust = (~broken).nonzero().flatten()
        result[rows[robust]] = x_best[robust]
        return result

    def _perturb(self, module, x, y):
        if self.epsilon == 0:
            return x.clone()
        if self.loss != "dlr-targeted":
            return best_of_restarts(module, x, y, self._single_run, self.restarts)
        with torch.no_grad():
            n_classes = module(x[:1]).shape[1]
        ranks = [
            rank
            for rank in range(1, min(self.n_target_classes, n_classes - 1) + 1)
            for _ in range(self.restarts)
        ]
        pending = iter(ranks)

        def run(module, xs, ys):
            return self._single_run(module, xs, ys, target_rank=next(pending))

        return best_of_restarts(module, x, y, run, len(ranks))
