"""Projected gradient descent (Madry et al. 2018) and FGSM with a random start
(Wong, Rice & Kolter 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._base import (
    Attack,
    _check_nonnegative,
    _check_positive_int,
    normalize_gradient,
    project,
    random_init,
)


def _ce_potential(logits, y):
    """Summed cross-entropy: the quantity PGD ascends (per-sample gradients do
    not depend on the batch size)."""
    return F.cross_entropy(logits, y, reduction="sum")


def _kl_potential(module, x):
    """Summed ``KL(p(x) || p(x + delta))`` against the clean prediction, fixed
    once (the inner maximization of TRADES, Zhang et al. 2019)."""
    with torch.no_grad():
        log_p_clean = F.log_softmax(module(x).float(), dim=1)

    def potential(logits, y):
        log_p_adv = F.log_softmax(logits.float(), dim=1)
        return F.kl_div(log_p_adv, log_p_clean, reduction="sum", log_target=True)

    return potential


def _start(x, epsilon, norm, bounds, random_start):
    """The first iterate: uniform in the ball (then fit to the box), or zero."""
    if random_start:
        return random_init(x, epsilon, norm, bounds)
    return torch.zeros_like(x)


def _multistep_size(step_size, epsilon, steps):
    """``step_size``, or the default ``2.5 * epsilon / steps`` of Madry et al."""
    if step_size is not None:
        return float(step_size)
    return 2.5 * float(epsilon) / steps


def _ascent_steps(module, x, y, delta, *, steps, step_size, epsilon, norm, bounds,
                  potential=_ce_potential, grad_noise=None, step_noise=None):
    """Run ``steps`` projected (noisy) ascent steps on ``potential`` from ``delta``.

    One step, for the steepest-ascent direction ``dir`` of the norm (``sign``
    for l_inf, the l_2-normalized vector for l_2)::

        g     = grad potential(module(x + delta), y)      (+ grad_noise(g))
        delta = delta + step_size * dir(g)                (+ step_noise(delta))
        delta = project(delta)                            # ball, then box

    With both noise functions ``None`` this is PGD. The iterate is projected
    onto the ball and the box after every step, and the forward pass sees
    ``x + delta`` unclamped, so every coordinate gets a gradient (clamping only
    inside the forward pass would zero the gradient of every coordinate pushed
    outside the box).

    Parameters
    ----------
    potential : callable
        ``potential(logits, y) -> scalar``, summed over the batch.
    grad_noise, step_noise : callable or None
        ``f(t) -> tensor shaped like t``: noise added to the gradient before
        the direction is taken (Laplace-in-the-sign sampler), or to the
        iterate after the step (Gaussian Langevin sampler).
    """
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = potential(module(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if grad_noise is not None:
                grad = grad + grad_noise(grad)
            delta = delta + step_size * normalize_gradient(grad, norm)
            if step_noise is not None:
                delta = delta + step_noise(delta)
            delta = project(x, delta, epsilon, norm, bounds)
    return delta.detach()


_PGD_LOSSES = ("ce", "kl")


class PGD(Attack):
    """Projected gradient descent on the cross-entropy loss (Madry et al. 2018).

    Each step moves the perturbation along the steepest-ascent direction of
    the loss for the chosen norm (the gradient's sign for l_inf, the
    l_2-normalized gradient for l_2), then projects it onto the epsilon-ball
    and onto the input box.

    Parameters
    ----------
    epsilon : float, default=0.3
        Radius of the threat model's ball.
    norm : {"linf", "l2"}, default="linf"
        Norm of the threat model.
    steps : int, default=10
        Number of ascent steps.
    step_size : float or None, default=None
        Step length. ``None`` uses ``2.5 * epsilon / steps``, the choice of
        Madry et al., which lets the iterate cross the ball in a few steps.
    random_start : bool, default=True
        Start from a point drawn uniformly from the ball instead of from ``X``.
    restarts : int, default=1
        Number of runs from independent random starts. Later restarts only
        attack the points that earlier ones did not misclassify; for each point
        the returned example is a misclassified one when any run found one, and
        otherwise the one of highest loss.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box ``(low, high)`` that adversarial inputs are clipped to;
        ``None`` for unbounded features.
    loss : {"ce", "kl"}, default="ce"
        The loss each step ascends. ``"ce"``: cross-entropy with the true
        label (Madry et al.). ``"kl"``: ``KL(p(X) || p(X_adv))`` from the
        clean prediction, the inner maximization of TRADES (Zhang et al.
        2019), which ignores ``y``; pair it with
        :class:`~robustfit.losses.TRADES`. Restarts still keep, per point, a
        misclassified example or else the one of highest cross-entropy.

    See Also
    --------
    FGSM : the one-step attack, for fast adversarial training.
    Langevin : PGD with noise, a sampler of perturbations (DALE).

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import PGD
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = PGD(epsilon=0.1, steps=5)(net, X, y)
    >>> bool((X_adv - X).abs().max() <= 0.1 + 1e-6)
    True
    """

    def __init__(
        self,
        epsilon=0.3,
        norm="linf",
        steps=10,
        step_size=None,
        random_start=True,
        restarts=1,
        bounds=(0.0, 1.0),
        loss="ce",
    ):
        self.epsilon = epsilon
        self.norm = norm
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.restarts = restarts
        self.bounds = bounds
        self.loss = loss

    def _validate(self):
        super()._validate()
        _check_positive_int(self.steps, "steps")
        _check_positive_int(self.restarts, "restarts")
        if self.step_size is not None:
            _check_nonnegative(self.step_size, "step_size")
        if self.loss not in _PGD_LOSSES:
            raise ValueError(f"loss must be one of {_PGD_LOSSES}, got {self.loss!r}")

    @property
    def step_size_(self):
        """The step length in use: ``step_size``, or its default."""
        return _multistep_size(self.step_size, self.epsilon, self.steps)

    def _single_run(self, module, x, y):
        bounds = self._bounds
        delta = _start(x, self.epsilon, self.norm, bounds, self.random_start)
        potential = _kl_potential(module, x) if self.loss == "kl" else _ce_potential
        delta = _ascent_steps(
            module, x, y, delta,
            steps=self.steps, step_size=self.step_size_,
            epsilon=self.epsilon, norm=self.norm, bounds=bounds, potential=potential,
        )
        return x + delta

    def _perturb(self, module, x, y):
        if self.epsilon == 0:
            return x.clone()
        if self.restarts == 1:
            return self._single_run(module, x, y)
        return best_of_restarts(module, x, y, self._single_run, self.restarts)


@torch.no_grad()
def _score(module, x_adv, y):
    """Per-sample attack score: +inf where misclassified, else the loss."""
    logits = module(x_adv)
    loss = F.cross_entropy(logits, y, reduction="none").float()
    return torch.where(logits.argmax(1) != y, torch.full_like(loss, float("inf")), loss)


def best_of_restarts(module, x, y, run, restarts):
    """Keep, per point, the best of ``restarts`` independent runs of ``run``.

    "Best" means misclassified if any run misclassified the point, and
    otherwise highest loss. Points already misclassified are not attacked
    again, so restarts cost little once most points are broken.
    """
    best = run(module, x, y)
    best_score = _score(module, best, y)
    for _ in range(restarts - 1):
        todo = torch.isfinite(best_score).nonzero().flatten()
        if todo.numel() == 0:
            break
        cand = run(module, x[todo], y[todo])
        cand_score = _score(module, cand, y[todo])
        better = cand_score > best_score[todo]
        idx = todo[better]
        best[idx] = cand[better]
        best_score[idx] = cand_score[better]
    return best


class FGSM(Attack):
    """Fast gradient sign method with a random start (Wong, Rice & Kolter 2020).

    One ascent step from a uniform random point of the ball, followed by the
    projection onto the ball and the box. This is the cheap attack of "Fast is
    better than free": with ``step_size = 1.25 * epsilon`` adversarial
    training with it approaches PGD training at the cost of one extra
    gradient per batch.

    Parameters
    ----------
    epsilon : float, default=0.3
        Radius of the threat model's ball.
    step_size : float or None, default=None
        Length of the single step. ``None`` uses ``1.25 * epsilon`` with a
        random start and ``epsilon`` without one (classic FGSM).
    random_start : bool, default=True
        Start from a uniform point of the ball (Wong et al.); ``False`` gives
        the FGSM of Goodfellow et al. 2015.
    norm : {"linf", "l2"}, default="linf"
        Norm of the threat model. For l_2 the step follows the normalized
        gradient (the "fast gradient method").
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box that adversarial inputs are clipped to; ``None`` for
        unbounded features.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import FGSM
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = FGSM(epsilon=0.1)(net, X, y)
    >>> X_adv.shape
    torch.Size([5, 1, 2, 2])
    """

    def __init__(
        self, epsilon=0.3, step_size=None, random_start=True, norm="linf",
        bounds=(0.0, 1.0),
    ):
        self.epsilon = epsilon
        self.step_size = step_size
        self.random_start = random_start
        self.norm = norm
        self.bounds = bounds

    def _validate(self):
        super()._validate()
        if self.step_size is not None:
            _check_nonnegative(self.step_size, "step_size")

    @property
    def step_size_(self):
        """The step length in use: ``step_size``, or its default."""
        if self.step_size is not None:
            return float(self.step_size)
        return (1.25 if self.random_start else 1.0) * float(self.epsilon)

    def _perturb(self, module, x, y):
        if self.epsilon == 0:
            return x.clone()
        bounds = self._bounds
        delta = _start(x, self.epsilon, self.norm, bounds, self.random_start)
        delta = _ascent_steps(
            module, x, y, delta, steps=1, step_size=self.step_size_,
            epsilon=self.epsilon, norm=self.norm, bounds=bounds,
        )
        return x + delta
