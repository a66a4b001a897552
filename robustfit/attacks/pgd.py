"""Projected gradient descent (Madry et al. 2018) and FGSM with a random start
(Wong, Rice & Kolter 2020)."""

from __future__ import annotations

from numbers import Integral, Real

from .._validation import Interval, Options
from ._base import Attack
from ._steps import (
    ascent_steps,
    best_of_restarts,
    ce_potential,
    kl_potential,
    multistep_size,
    start,
)

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

    #: Differentiates with respect to the input only, so the classifier may run the
    #: training attack on a network with batch norm folded (``fold_batchnorm``).
    _input_gradients_only = True

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "steps": [Interval(Integral, 1, None)],
        "step_size": [None, Interval(Real, 0, None, closed="left")],
        "random_start": ["boolean"],
        "restarts": [Interval(Integral, 1, None)],
        "loss": [Options(_PGD_LOSSES)],
    }

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


    @property
    def step_size_(self):
        """The step length in use: ``step_size``, or its default."""
        return multistep_size(self.step_size, self.epsilon, self.steps)

    def _single_run(self, module, x, y):
        bounds = self._bounds
        delta = start(x, self.epsilon, self.norm, bounds, self.random_start)
        potential = kl_potential(module, x) if self.loss == "kl" else ce_potential
        delta = ascent_steps(
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

    #: Differentiates with respect to the input only, so the classifier may run the
    #: training attack on a network with batch norm folded (``fold_batchnorm``).
    _input_gradients_only = True

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "step_size": [None, Interval(Real, 0, None, closed="left")],
        "random_start": ["boolean"],
    }

    def __init__(
        self, epsilon=0.3, step_size=None, random_start=True, norm="linf",
        bounds=(0.0, 1.0),
    ):
        self.epsilon = epsilon
        self.step_size = step_size
        self.random_start = random_start
        self.norm = norm
        self.bounds = bounds


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
        delta = start(x, self.epsilon, self.norm, bounds, self.random_start)
        delta = ascent_steps(
            module, x, y, delta, steps=1, step_size=self.step_size_,
            epsilon=self.epsilon, norm=self.norm, bounds=bounds,
        )
        return x + delta
