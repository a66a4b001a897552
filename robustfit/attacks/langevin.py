"""Langevin Monte Carlo sampling of perturbations (Robey et al. 2021, DALE)."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from .._utils import exponential_like, randn_like
from .._validation import Interval, Options
from ._base import Attack
from ._steps import ascent_steps, ce_potential, multistep_size, start

_NOISES = ("gaussian", "laplace")
_POTENTIALS = ("ce", "log1m")


def _log1m_potential(logits, y):
    """Summed ``log(1 - p_y)``, the potential of the authors' DALE sampler.

    Computed as ``logsumexp_{j != y} z_j - logsumexp_j z_j``, which stays
    finite and accurate when ``p_y`` is close to one (where ``log(1 - p_y)``
    computed from ``p_y`` would lose every digit).
    """
    z = logits.float()
    others = z.scatter(1, y[:, None], float("-inf"))
    return (torch.logsumexp(others, dim=1) - torch.logsumexp(z, dim=1)).sum()


def _laplace_like(t):
    """Standard Laplace noise (density ``exp(-|u|) / 2``) shaped like ``t``:
    the difference of two standard exponentials."""
    return exponential_like(t) - exponential_like(t)


class Langevin(Attack):
    """Langevin Monte Carlo sampler of perturbations (Robey et al. 2021).

    DALE ("Adversarial Robustness with Semi-Infinite Constrained Learning")
    replaces the worst-case perturbation of adversarial training by samples
    from a distribution concentrated where the loss is high,
    ``gamma(delta) ~ exp(U(delta) / T)`` on the epsilon-ball, with the
    potential ``U`` a loss of the model at ``x + delta``. Each step ascends
    ``U`` along the steepest-ascent direction of the norm (``sign`` for l_inf,
    the normalized gradient for l_2), adds noise, and projects onto the ball
    and the input box:

    * ``noise="gaussian"`` (Langevin dynamics)::

          delta <- P[delta + eta * dir(grad U) + sqrt(2 eta T) * xi],  xi ~ N(0, I)

    * ``noise="laplace"`` (the noise inside the sign, as in the authors'
      l_inf sampler)::

          delta <- P[delta + eta * dir(grad U + sqrt(2 eta T) * xi)],  xi ~ Laplace(0, I)

    where ``eta`` is ``step_size`` and ``P`` projects onto the ball, then the
    box. Gradients are taken per sample (the potential is summed over the
    batch), so ``temperature`` does not depend on the batch size. With
    ``temperature=0`` no noise is drawn and the sampler is exactly
    :class:`PGD` with the same ``epsilon``, ``norm``, ``steps``,
    ``step_size``, ``random_start`` and ``bounds`` (and ``potential="ce"``):
    the same output for the same seed.

    Parameters
    ----------
    epsilon : float, default=0.3
        Radius of the threat model's ball.
    norm : {"linf", "l2"}, default="linf"
        Norm of the threat model. The authors only sample in l_inf; l_2 uses
        the normalized gradient and the l_2 projection.
    steps : int, default=10
        Number of Langevin steps.
    step_size : float or None, default=None
        The step ``eta``; ``None`` uses PGD's default ``2.5 * epsilon / steps``.
    temperature : float, default=1e-3
        The temperature ``T >= 0`` of the sampled distribution; it scales the
        noise as ``sqrt(2 * step_size * T)``. ``0`` gives PGD. The useful range
        depends on the noise: Gaussian noise competes with the step itself
        (on MNIST at epsilon 0.3, ``1e-3`` to ``1e-2``), Laplace noise with the
        per-sample gradient inside the sign, whose coordinates are tiny
        (around ``1e-8`` to ``1e-6`` there; at ``1e-3`` the signs are
        essentially random). See :doc:`/dale`.
    noise : {"gaussian", "laplace"}, default="gaussian"
        The noise distribution and where it enters (see above).
    potential : {"ce", "log1m"}, default="ce"
        ``U``: the cross-entropy of the true class (PGD's loss), or
        ``log(1 - p_y)``, the log of the probability of misclassification used
        in the authors' code.
    random_start : bool, default=True
        Start from a point drawn uniformly from the ball instead of from ``X``.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box that samples are clipped to; ``None`` for unbounded
        features.

    See Also
    --------
    PGD : the noiseless special case, ``temperature=0``.
    robustfit.losses.PrimalDual : the primal-dual objective DALE pairs it with.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import Langevin
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = Langevin(epsilon=0.1, steps=5, temperature=1e-2)(net, X, y)
    >>> bool((X_adv - X).abs().max() <= 0.1 + 1e-6)
    True

    DALE: Langevin samples with primal-dual training.

    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.losses import PrimalDual
    >>> dale = AdversarialClassifier(attack=Langevin(epsilon=0.3, steps=7),
    ...                              objective=PrimalDual(margin=0.1))
    """

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "steps": [Interval(Integral, 1, None)],
        "step_size": [None, Interval(Real, 0, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="left")],
        "noise": [Options(_NOISES)],
        "potential": [Options(_POTENTIALS)],
        "random_start": ["boolean"],
    }

    def __init__(
        self,
        epsilon=0.3,
        norm="linf",
        steps=10,
        step_size=None,
        temperature=1e-3,
        noise="gaussian",
        potential="ce",
        random_start=True,
        bounds=(0.0, 1.0),
    ):
        self.epsilon = epsilon
        self.norm = norm
        self.steps = steps
        self.step_size = step_size
        self.temperature = temperature
        self.noise = noise
        self.potential = potential
        self.random_start = random_start
        self.bounds = bounds


    @property
    def step_size_(self):
        """The step length in use: ``step_size``, or its default."""
        return multistep_size(self.step_size, self.epsilon, self.steps)

    @property
    def noise_scale_(self):
        """The noise multiplier ``sqrt(2 * step_size * temperature)``."""
        return math.sqrt(2.0 * self.step_size_ * float(self.temperature))

    def _noise_functions(self):
        """``(grad_noise, step_noise)`` for :func:`~robustfit.attacks._steps.ascent_steps`."""
        scale = self.noise_scale_
        if scale == 0:
            return None, None  # T = 0: no draw at all, so the RNG stream is PGD's
        if self.noise == "laplace":
            return (lambda g: scale * _laplace_like(g)), None
        return None, (lambda d: scale * randn_like(d))

    def _perturb(self, module, x, y):
        if self.epsilon == 0:
            return x.clone()
        bounds = self._bounds
        delta = start(x, self.epsilon, self.norm, bounds, self.random_start)
        grad_noise, step_noise = self._noise_functions()
        potential = _log1m_potential if self.potential == "log1m" else ce_potential
        delta = ascent_steps(
            module, x, y, delta,
            steps=self.steps, step_size=self.step_size_,
            epsilon=self.epsilon, norm=self.norm, bounds=bounds,
            potential=potential, grad_noise=grad_noise, step_noise=step_noise,
        )
        return x + delta
