"""SmoothAdv (Salman et al. 2019): PGD against the smoothed soft classifier.

The soft smoothed classifier averages the base network's softmax over
Gaussian noise, ``G(x) = E_eta[softmax(f(x + eta))]``. Salman et al.
("Provably Robust Deep Learning via Adversarially Trained Smoothed
Classifiers", NeurIPS 2019) attack it with l_2 PGD, estimating the
expectation with ``m`` noise draws that stay fixed during the attack::

    J(x') = -log( (1/m) sum_j softmax(f(x' + eta_j))_y )

and train the base network on the adversarial point plus the same noise
draws. :class:`SmoothAdv` is that attack; as the ``attack`` of
:class:`~robustfit.AdversarialClassifier` it is that training.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
import torch.nn.functional as F

from .._validation import Interval
from ._base import Attack, eval_mode
from ._steps import ascent_steps, start
from .noise import gaussian_copies


def smoothed_nll(logits, y, copies):
    """Summed ``-log`` of the noise-averaged softmax probability of ``y``.

    Parameters
    ----------
    logits : torch.Tensor of shape (n * copies, n_classes)
        Logits of ``copies`` consecutive noisy versions of each sample.
    y : torch.Tensor of shape (n,)
        Class indices.
    copies : int
        Noise draws per sample.

    Returns
    -------
    loss : torch.Tensor
        ``-sum_i log((1/m) sum_j softmax(logits_ij)[y_i])``, computed with
        ``logsumexp`` (no probability is clamped).

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import smoothed_nll
    >>> logits = torch.tensor([[9.0, 0.0], [0.0, 9.0]])   # one sample, two noisy copies
    >>> round(float(smoothed_nll(logits, torch.tensor([0]), copies=2)), 3)  # -log(0.5)
    0.693
    """
    logp = F.log_softmax(logits.float(), dim=1).view(y.shape[0], copies, -1)
    log_mean = torch.logsumexp(logp, dim=1) - math.log(copies)
    return F.nll_loss(log_mean, y, reduction="sum")


class SmoothAdv(Attack):
    """l_2 PGD on the soft smoothed classifier (Salman et al. 2019).

    For every sample, ``noise_samples`` Gaussian draws ``eta_1..eta_m`` of
    standard deviation ``sigma`` are fixed, and ``steps`` projected l_2
    gradient steps ascend ``-log((1/m) sum_j softmax(f(x' + eta_j))_y)``
    inside the ``epsilon``-ball around ``x`` and the input box.

    * Called as ``attack(module, X, y)`` it returns the adversarial points
      ``x'`` (without noise): an attack on the *smoothed* classifier, to
      evaluate a :class:`~robustfit.certify.SmoothedClassifier` empirically.
    * As the ``attack`` of :class:`~robustfit.AdversarialClassifier` it is
      SmoothAdv training: each batch becomes ``x' + eta_1``, and with
      ``multi_noise=True`` the loss is the mean cross-entropy over all ``m``
      noisy copies ``x' + eta_j`` of each adversarial point, as Salman et al.
      train. The extra copies enter through :meth:`regularizer`, which adds
      ``(1/m) sum_{j>1} CE_j - ((m-1)/m) CE_1`` to the objective's loss; that
      makes the total the mean over the copies when the objective is the
      default cross-entropy on the batch (:class:`~robustfit.losses.AdversarialCE`
      with ``CrossEntropyLoss``).

    The classifier's epsilon warm-up ramps ``epsilon`` over the first epochs,
    as Salman et al. do.

    Parameters
    ----------
    epsilon : float, default=0.5
        Radius of the l_2 ball.
    sigma : float, default=0.25
        Standard deviation of the smoothing noise; train at the ``sigma`` you
        certify at.
    steps : int, default=2
        PGD steps.
    step_size : float or None, default=None
        Step length; ``None`` uses ``2 * epsilon / steps`` (Salman et al.).
    noise_samples : int, default=2
        Noise draws ``m`` per sample, fixed during the attack.
    multi_noise : bool, default=True
        Train on all ``m`` noisy copies of each adversarial point (else on
        the first only).
    random_start : bool, default=False
        Start from a uniform point of the ball (Salman et al. start at ``x``).
    bounds : tuple of float or None, default=(0.0, 1.0)
        Box of the adversarial points; the noise added on top is not clipped.

    Attributes
    ----------
    norm : str
        Always ``"l2"``: the smoothing certificate is an l_2 guarantee.

    See Also
    --------
    GaussianNoise : plain Gaussian noise augmentation (Cohen et al. 2019).
    robustfit.certify.SmoothedClassifier : the smoothed classifier.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import SmoothAdv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = SmoothAdv(epsilon=0.5, sigma=0.25, noise_samples=8)(net, X, y)
    >>> bool(((X_adv - X).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all())
    True
    """

    norm = "l2"

    _parameter_constraints = {
        "epsilon": [Interval(Real, 0, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="left")],
        "steps": [Interval(Integral, 1, None)],
        "step_size": [None, Interval(Real, 0, None, closed="left")],
        "noise_samples": [Interval(Integral, 1, None)],
        "multi_noise": ["boolean"],
        "random_start": ["boolean"],
        "bounds": ["bounds"],
    }

    def __init__(
        self,
        epsilon=0.5,
        sigma=0.25,
        steps=2,
        step_size=None,
        noise_samples=2,
        multi_noise=True,
        random_start=False,
        bounds=(0.0, 1.0),
    ):
        self.epsilon = epsilon
        self.sigma = sigma
        self.steps = steps
        self.step_size = step_size
        self.noise_samples = noise_samples
        self.multi_noise = multi_noise
        self.random_start = random_start
        self.bounds = bounds

    @property
    def step_size_(self):
        """The step length in use: ``step_size``, or ``2 * epsilon / steps``."""
        if self.step_size is not None:
            return float(self.step_size)
        return 2.0 * float(self.epsilon) / self.steps

    def attack_with_noise(self, module, x, y, noise):
        """PGD on the soft smoothed classifier with the given noise draws.

        Parameters
        ----------
        module : torch.nn.Module
            Network returning logits (put it in eval mode yourself).
        x : torch.Tensor of shape (n, ...)
            Clean inputs inside ``bounds``.
        y : torch.Tensor of shape (n,)
            Class indices.
        noise : torch.Tensor of shape (n, m, ...)
            Noise draws, fixed during the attack (see
            :func:`~robustfit.attacks.gaussian_copies`).

        Returns
        -------
        x_adv : torch.Tensor of shape (n, ...)
            Adversarial points inside the ball and the box, without noise.
        """
        if self.epsilon == 0:
            return x.detach().clone()
        copies = noise.shape[1]

        def noisy_forward(z):
            return module((z.unsqueeze(1) + noise).flatten(0, 1))

        def potential(logits, target):
            return smoothed_nll(logits, target, copies)

        bounds = self._bounds
        delta = start(x, self.epsilon, "l2", bounds, self.random_start)
        delta = ascent_steps(
            noisy_forward, x, y, delta, steps=self.steps, step_size=self.step_size_,
            epsilon=self.epsilon, norm="l2", bounds=bounds, potential=potential,
        )
        return (x + delta).detach()

    def _perturb(self, module, x, y):
        noise = gaussian_copies(x, self.sigma, self.noise_samples)
        return self.attack_with_noise(module, x, y, noise)

    # ------------------------------------------------------- training hooks
    def train_perturb(self, module, x, y):
        """``x' + eta_1`` for one training batch; keeps the other copies for
        :meth:`regularizer` when ``multi_noise`` is on.

        Parameters
        ----------
        module : torch.nn.Module
            The network being trained.
        x : torch.Tensor
            Clean batch.
        y : torch.Tensor
            Class indices.

        Returns
        -------
        x_noisy_adv : torch.Tensor
            The adversarial batch plus its first noise draw, detached.
        """
        noise = gaussian_copies(x, self.sigma, self.noise_samples)
        with eval_mode(module), torch.enable_grad():
            x_adv = self.attack_with_noise(module, x, y, noise)
        extra = self.multi_noise and self.noise_samples > 1
        self._pending = (x_adv, noise[:, 1:]) if extra else None
        return (x_adv + noise[:, 0]).detach()

    def regularizer(self, module, x, x_adv, y, logits_adv):
        """Turn the loss on the first noisy copy into the mean over all ``m``.

        Adds ``(1/m) sum_{j>1} CE(f(x' + eta_j), y) - ((m-1)/m) CE(logits_adv, y)``
        (mean cross-entropies over the batch), or nothing when
        ``multi_noise`` is off or ``m = 1``.

        Parameters
        ----------
        module : torch.nn.Module
            The network being trained (train mode).
        x, x_adv : torch.Tensor
            The clean batch and the batch from :meth:`train_perturb`.
        y : torch.Tensor
            Class indices.
        logits_adv : torch.Tensor
            Logits on ``x_adv``, with the graph.

        Returns
        -------
        term : torch.Tensor or None
        """
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is None:
            return None
        x_clean_adv, extra = pending
        m = extra.shape[1] + 1
        logits = module((x_clean_adv.unsqueeze(1) + extra).flatten(0, 1))
        others = F.cross_entropy(logits.float(), y.repeat_interleave(m - 1), reduction="mean")
        first = F.cross_entropy(logits_adv.float(), y, reduction="mean")
        return (m - 1) / m * (others - first)

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never empty the live object
        state.pop("_pending", None)  # a batch in flight is never pickled
        return state
