"""The optimal-transport term of Robustness-via-Synthesis (GeneratorSynth).

A private module: :func:`sinkhorn_distance` and :func:`sinkhorn_cost` are
public as :func:`robustfit.losses.sinkhorn_distance` and
:func:`robustfit.losses.sinkhorn_cost`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

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


def sinkhorn_cost(a, b, reg=0.01, n_iter=100):
    """Transport cost of a fixed number of log-domain Sinkhorn iterations (not debiased).

    The OT term of the authors' code for Robustness-via-Synthesis (Baytas &
    Deb 2023): the batches ``a`` (n rows) and ``b`` (m rows) are uniform
    distributions over their rows, the ground cost is the squared Euclidean
    distance ``C_ij = |a_i - b_j|^2`` (no factor 1/2), and ``n_iter``
    alternating log-domain Sinkhorn updates of the dual potentials

    .. math::

        f_i \\leftarrow f_i + \\varepsilon\\big(\\log \\tfrac1n
              - \\operatorname{LSE}_j\\,(f_i + g_j - C_{ij}) / \\varepsilon\\big),
        \\qquad
        g_j \\leftarrow g_j + \\varepsilon\\big(\\log \\tfrac1m
              - \\operatorname{LSE}_i\\,(f_i + g_j - C_{ij}) / \\varepsilon\\big),

    from ``f = g = 0`` at regularization ``eps = reg`` give the plan
    ``pi = exp((f_i + g_j - C_ij) / eps)``; the value is the transport cost
    ``<pi, C>`` (without the entropy term). It is *not* zero for identical
    batches (the plan is blurred by the regularization) and no stopping test
    is made: exactly ``n_iter`` iterations run, as in the authors' code, and
    the gradient is taken by automatic differentiation through all of them
    (memory grows with ``n_iter``). Computed in float32 outside any autocast.
    Compare :func:`sinkhorn_distance`, the debiased divergence that
    :class:`~robustfit.attacks.GeneratorSynth` uses by default.

    Parameters
    ----------
    a, b : torch.Tensor of shape (n, ...) and (m, ...)
        Two batches of representations; trailing dimensions are flattened and
        must agree.
    reg : float, default=0.01
        Entropic regularization ``eps``, in the units of the cost (squared
        distances).
    n_iter : int, default=100
        Sinkhorn iterations (each updates both potentials).

    Returns
    -------
    cost : torch.Tensor
        Scalar.

    Examples
    --------
    >>> import torch
    >>> from robustfit.losses import sinkhorn_cost
    >>> a = torch.zeros(4, 2)
    >>> round(float(sinkhorn_cost(a, a + 1.0)), 4)   # every point moves by (1, 1): cost 2
    2.0
    """
    check_param(reg, "reg", [Interval(Real, 0, None, closed="neither")], "sinkhorn_cost")
    check_param(n_iter, "n_iter", [Interval(Integral, 1, None)], "sinkhorn_cost")
    a, b = a.flatten(1), b.flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different feature sizes: {a.shape[1]} and {b.shape[1]}")
    with torch.autocast(device_type=a.device.type, enabled=False):
        a, b = a.float(), b.float()
        cost = torch.cdist(a, b).square()
        # scaled potentials F = f / eps, G = g / eps: the update of f above is
        # F <- log(1/n) - LSE_j (G_j - C_ij / eps) (F_i leaves the LSE), and alike for G
        scaled = cost / float(reg)
        log_mu = -math.log(a.shape[0])
        log_nu = -math.log(b.shape[0])
        G = cost.new_zeros(1, b.shape[0])
        for _ in range(int(n_iter)):
            F = log_mu - torch.logsumexp(G - scaled, dim=1, keepdim=True)
            G = log_nu - torch.logsumexp(F - scaled, dim=0, keepdim=True)
        plan = torch.exp(F + G - scaled)
        return (plan * cost).sum()
