"""The optimal-transport term of Robustness-via-Synthesis (GeneratorSynth).

A private module: :func:`sinkhorn_distance` is public as
:func:`robustfit.losses.sinkhorn_distance`.
"""

from __future__ import annotations

from numbers import Real

import torch

from ._utils import optional_import
from ._validation import Interval, Options, check_param


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
    check_param(blur, "blur", [Interval(Real, 0, None, closed="neither")], "sinkhorn_distance")
    check_param(p, "p", [Options((1, 2))], "sinkhorn_distance")
    check_param(scaling, "scaling", [Interval(Real, 0, 1, closed="neither")], "sinkhorn_distance")
    SamplesLoss = optional_import("geomloss", "sinkhorn_distance (GeneratorSynth's OT term)").SamplesLoss
    a, b = a.flatten(1), b.flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different feature sizes: {a.shape[1]} and {b.shape[1]}")
    with torch.autocast(device_type=a.device.type, enabled=False):
        loss = SamplesLoss("sinkhorn", p=p, blur=float(blur), scaling=float(scaling),
                           debias=bool(debias), backend="tensorized")
        return loss(a.float().contiguous(), b.float().contiguous())
