"""Gaussian noise augmentation: the training of Cohen, Rosenfeld & Kolter (2019)
for randomized smoothing, as an attack object.

A smoothed classifier ``g(x) = argmax_c P(f(x + eta) = c)``, ``eta ~ N(0,
sigma^2 I)``, is only as good as its base classifier ``f`` is on noisy
inputs. Cohen et al. train ``f`` on inputs with fresh Gaussian noise of the
same ``sigma`` every time a sample is seen; :class:`GaussianNoise` does that
as the ``attack`` of :class:`~robustfit.AdversarialClassifier`, so it mixes
with ``proxy_data``, callbacks and grid searches like any other attack.
"""

from __future__ import annotations

from numbers import Real

import torch

from .._validation import Interval
from ._base import Attack


def gaussian_copies(x, sigma, copies, generator=None):
    """``copies`` noisy versions of every sample: ``x[:, None] + sigma * eta``.

    Parameters
    ----------
    x : torch.Tensor of shape (n, ...)
        Clean inputs.
    sigma : float
        Standard deviation of the noise.
    copies : int
        Noise draws per sample.
    generator : torch.Generator or None, default=None
        Random generator on ``x``'s device; ``None`` uses torch's global one.

    Returns
    -------
    noise : torch.Tensor of shape (n, copies, ...)
        The noise alone (not added to ``x``), drawn on ``x``'s device.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import gaussian_copies
    >>> gaussian_copies(torch.zeros(3, 1, 8, 8), sigma=0.5, copies=4).shape
    torch.Size([3, 4, 1, 8, 8])
    """
    shape = (x.shape[0], copies, *x.shape[1:])
    noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    return noise.mul_(float(sigma))


class GaussianNoise(Attack):
    """Gaussian noise augmentation for randomized smoothing (Cohen et al. 2019).

    Returns ``X + sigma * eta`` with ``eta ~ N(0, I)`` drawn afresh on every
    call, so that a classifier trained with ``attack=GaussianNoise(sigma)``
    sees new noise each time it sees a sample. This is the base classifier's
    training that :class:`~robustfit.certify.SmoothedClassifier` certifies
    at the same ``sigma``. The noisy inputs are *not* clipped to ``bounds``:
    the smoothed classifier, and so its certificate, is defined with
    unclipped noise.

    It has no ``epsilon``: it is not a threat model, and the epsilon warm-up
    of :class:`~robustfit.AdversarialClassifier` leaves it alone.

    Parameters
    ----------
    sigma : float, default=0.25
        Standard deviation of the noise, ``>= 0`` (0 is clean training).
    bounds : tuple of float or None, default=None
        The box the *clean* inputs must lie in (checked by ``attack(...)``
        and for the classifier's training and proxy data); ``None`` checks
        nothing.

    See Also
    --------
    SmoothAdv : adversarial training of the smoothed classifier.
    robustfit.certify.SmoothedClassifier : the smoothed classifier and its
        certificates.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import GaussianNoise
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.zeros(2000, 1, 2, 2), torch.zeros(2000, dtype=torch.long)
    >>> X_noisy = GaussianNoise(sigma=0.5)(net, X, y)
    >>> round(float(X_noisy.std()), 1)
    0.5
    """

    _parameter_constraints = {
        "sigma": [Interval(Real, 0, None, closed="left")],
        "bounds": ["bounds"],
    }

    def __init__(self, sigma=0.25, bounds=None):
        self.sigma = sigma
        self.bounds = bounds

    def perturb(self, module, x, y):
        """Add fresh noise to ``x`` (no forward pass; ``module`` is unused).

        Parameters
        ----------
        module : torch.nn.Module
            Unused: the noise does not depend on the network.
        x : torch.Tensor
            Clean inputs.
        y : torch.Tensor
            Unused.

        Returns
        -------
        x_noisy : torch.Tensor
            ``x + sigma * eta``, detached.
        """
        if self.sigma == 0:
            return x.detach().clone()
        return (x + gaussian_copies(x, self.sigma, 1)[:, 0]).detach()

    def _perturb(self, module, x, y):
        return self.perturb(module, x, y)
