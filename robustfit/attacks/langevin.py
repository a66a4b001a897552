"""Langevin Monte Carlo sampling of perturbations (Robey et al. 2021, DALE)."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from .._utils import exponential_like, randn_like
from .._validation import Interval, Options
from ._base import Attack
from ._steps import ascent_steps, ce_potential, kl_potential, multistep_size, start

_NOISES = ("gaussian", "laplace")
_POTENTIALS = ("ce", "log1m", "kl")
_STARTS = ("uniform", "normal")


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
        noise as ``sqrt(2 * step_size * T)``. ``0`` gives PGD (ignored when
        ``noise_coef`` is given). The useful range
        depends on the noise: Gaussian noise competes with the step itself
        (on MNIST at epsilon 0.3, ``1e-3`` to ``1e-2``), Laplace noise with the
        per-sample gradient inside the sign, whose coordinates are tiny
        (around ``1e-8`` to ``1e-6`` there; at ``1e-3`` the signs are
        essentially random). See :doc:`/dale`.
    noise_coef : float or None, default=None
        The noise multiplier itself, as the authors' code sets it
        (``g_dale_noise_coeff``, 1e-3 on MNIST): the noise is
        ``noise_coef * xi`` and ``temperature`` is ignored. The two forms map
        by ``noise_coef = sqrt(2 * step_size * T)``, i.e.
        ``T = noise_coef ** 2 / (2 * step_size)`` (the authors' 1e-3 at step
        0.1 is ``T = 5e-6``; see :attr:`temperature_`). For
        ``noise="laplace"`` the noise is added to the gradient of the
        potential *summed* over the batch; the authors average it, so their
        coefficient ``c`` is ``noise_coef = c * batch_size`` here.
    noise : {"gaussian", "laplace"}, default="gaussian"
        The noise distribution and where it enters (see above).
    potential : {"ce", "log1m", "kl"}, default="ce"
        ``U``: the cross-entropy of the true class (PGD's loss);
        ``log(1 - p_y)``, the log of the probability of misclassification used
        in the authors' Langevin samplers; or ``KL(p(x) || p(x + delta))``
        against the clean prediction (the TRADES attack, which the authors'
        ``KL_DALE_PD`` uses, there without noise).
    random_start : bool or {"uniform", "normal"}, default=True
        The first iterate: ``True``/``"uniform"`` draws it uniformly from the
        ball, ``False`` starts from ``X``, ``"normal"`` from
        ``X + start_scale * N(0, I)`` (the authors' near-zero start), each
        projected onto the ball and the box.
    start_scale : float, default=1e-3
        Standard deviation of the ``"normal"`` start (unused otherwise).
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

    The authors' MNIST sampler (``LMC_Gaussian_Linf`` in advbench): 7 steps
    of 0.1 on ``log(1 - p_y)`` from a near-zero start, Gaussian noise of
    coefficient 1e-3 (:func:`robustfit.losses.dale_recipe` builds the whole
    training recipe).

    >>> authors = Langevin(epsilon=0.3, steps=7, step_size=0.1, noise_coef=1e-3,
    ...                    potential="log1m", random_start="normal", start_scale=1e-3)
    >>> round(authors.temperature_, 12)
    5e-06
    """

    #: Differentiates with respect to the input only (see PGD).
    _input_gradients_only = True

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "steps": [Interval(Integral, 1, None)],
        "step_size": [None, Interval(Real, 0, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="left")],
        "noise_coef": [None, Interval(Real, 0, None, closed="left")],
        "noise": [Options(_NOISES)],
        "potential": [Options(_POTENTIALS)],
        "random_start": ["boolean", Options(_STARTS)],
        "start_scale": [Interval(Real, 0, None, closed="left")],
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
        noise_coef=None,
        start_scale=1e-3,
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
        self.noise_coef = noise_coef
        self.start_scale = start_scale

    @property
    def step_size_(self):
        """The step length in use: ``step_size``, or its default."""
        return multistep_size(self.step_size, self.epsilon, self.steps)

    @property
    def noise_scale_(self):
        """The noise multiplier: ``noise_coef``, or ``sqrt(2 * step_size * temperature)``."""
        if self.noise_coef is not None:
            return float(self.noise_coef)
        return math.sqrt(2.0 * self.step_size_ * float(self.temperature))

    @property
    def temperature_(self):
        """The temperature in use: ``temperature``, or ``noise_coef ** 2 / (2 * step_size)``."""
        if self.noise_coef is None:
            return float(self.temperature)
        step = self.step_size_
        return float(self.noise_coef) ** 2 / (2.0 * step) if step > 0 else float("inf")

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
        delta = start(x, self.epsilon, self.norm, bounds, self.random_start, self.start_scale)
        grad_noise, step_noise = self._noise_functions()
        if self.potential == "kl":
            potential = kl_potential(module, x)
        else:
            potential = _log1m_potential if self.potential == "log1m" else ce_potential
        delta = ascent_steps(
            module, x, y, delta,
            steps=self.steps, step_size=self.step_size_,
            epsilon=self.epsilon, norm=self.norm, bounds=bounds,
            potential=potential, grad_noise=grad_noise, step_noise=step_noise,
        )
        return x + delta
