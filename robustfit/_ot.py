"""The optimal-transport term of Robustness-via-Synthesis (GeneratorSynth).

A private module: :func:`sinkhorn_distance` and :func:`sinkhorn_cost` are
public as :func:`robustfit.losses.sinkhorn_distance` and
:func:`robustfit.losses.sinkhorn_cost`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from ._validation import Interval, Options, check_param


class _LogSumExp(torch.autograd.Function):
    """``log sum exp`` over one dimension, its backward a single product with the saved softmax."""

    @staticmethod
    def forward(ctx, x, dim):
        shift = x.amax(dim=dim, keepdim=True)
        floor = 0.5 * math.log(torch.finfo(x.dtype).tiny)
        terms = (x - shift).clamp_(min=floor).exp_()
        total = terms.sum(dim=dim, keepdim=True)
        ctx.dim = dim
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(terms.div_(total))
        return (total.log_() + shift).squeeze(dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (softmax,) = ctx.saved_tensors
        return grad.unsqueeze(ctx.dim) * softmax, None


def _logsumexp(x, dim):
    """``torch.logsumexp(x, dim)`` for finite ``x``, without the CPU's slow paths.

    torch's CPU ``exp`` is vectorized only for arguments above the
    floating-point underflow threshold (about -87.3 in float32): below it every
    element goes through a scalar fallback, about 100x slower, and in a
    Sinkhorn solver at a small regularization nearly every term of every
    log-sum-exp lies there; products that underflow to subnormal numbers (in
    the backward pass) are as slow. Here the shifted exponents ``x - max`` are
    clamped at ``0.5 * log(finfo.tiny)`` (-43.7 in float32) before ``exp``.
    The sum holds the maximum's term ``exp(0) = 1``, so raising the terms
    below ``exp(-43.7) = 1e-19`` to it changes the sum by less than
    ``n * 1e-19``, far below its float32 rounding: the value is
    ``torch.logsumexp``'s to rounding, and so is the gradient, the softmax,
    saved by the forward pass and multiplied once by the backward pass
    (differentiable once). Half-precision inputs are computed in float32.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return _LogSumExp.apply(x, dim)


def _ground_cost(x, y, p):
    """``|x_i - y_j|^p / p`` for every pair of rows of ``x`` (..., n, d) and ``y`` (..., m, d),
    batched over leading dimensions (squared distances by the Gram expansion)."""
    sq = ((x * x).sum(-1, keepdim=True) - 2 * x @ y.transpose(-1, -2)
          + (y * y).sum(-1).unsqueeze(-2)).clamp(min=0)
    return sq / 2 if p == 2 else sq.clamp(min=1e-8).sqrt()


def _annealing(x, y, p, blur, scaling):
    """The decreasing entropic regularizations of epsilon-scaling: from the diameter of the
    two clouds' bounding box (to the power p) down to ``blur ** p``, each ``scaling ** p``
    times the previous one (Feydy et al. 2019; Schmitzer 2019). A diameter below a millionth
    of ``blur`` (every point the same, where geomloss fails) counts as that millionth."""
    both = torch.cat([x.detach(), y.detach()])
    diameter = float((both.amax(0) - both.amin(0)).norm())  # one host sync per solve
    diameter = max(diameter, 1e-6 * blur)
    eps = [diameter ** p]
    if diameter > blur:
        steps = math.ceil(math.log(diameter / blur) / math.log(1 / scaling))
        eps += [diameter ** p * scaling ** (p * k) for k in range(steps)]
    return eps + [blur ** p]


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
    unregularized OT cost as ``blur`` goes to 0 (Feydy et al. 2019).

    The solver is robustfit's own, the algorithm of Feydy et al. (2019) that
    geomloss's ``SamplesLoss("sinkhorn", backend="tensorized")`` also runs (the
    tests check the two agree): symmetric log-domain Sinkhorn updates of the
    dual potentials of the problems (a, b), (b, a) and, when debiased, (a, a)
    and (b, b), solved together, with epsilon-scaling from the diameter of the
    clouds down to the blur (one update per scale, about
    ``log(diameter / blur) / log(1 / scaling)`` of them), then one last update
    with gradients: the potentials are held fixed there, so the gradient is
    the envelope theorem's (through the cost matrix only) and memory does not
    grow with the number of iterations. Its log-sum-exp avoids the CPU's slow
    path for large negative exponents, which made the
    solve several times faster than geomloss's on the CPU. Computed on the
    inputs' device, in float32 outside any autocast; the diameter costs one
    host synchronization per call. Memory: four ``max(n, m)`` squared cost
    matrices.

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
    a, b = a.flatten(1), b.flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different feature sizes: {a.shape[1]} and {b.shape[1]}")
    with torch.autocast(device_type=a.device.type, enabled=False):
        return _sinkhorn_divergence(a.float(), b.float(), float(blur), int(p), float(scaling),
                                    bool(debias))


def _sinkhorn_divergence(x, y, blur, p, scaling, debias):
    """The solver of :func:`sinkhorn_distance` on float32 matrices ``x`` (n, d) and ``y`` (m, d).

    Problem k computes the potential on the rows of ``costs[k]`` against the
    measure on its columns, whose log-weights are ``log_w[k]`` and whose own
    potential is that of problem k's partner: (a, b) -> f on a and (b, a) -> g
    on b are each other's partners, then (a, a) and (b, b), when debiased, are
    their own. The problems are stacked in one
    tensor, padded to ``max(n, m)`` points: a padding column has log-weight
    -inf (no mass), a padding row's potential is never read.
    """
    n, m = len(x), len(y)
    size = max(n, m)

    def padded(cost):
        return torch.nn.functional.pad(cost, (0, size - cost.shape[1], 0, size - cost.shape[0]))

    def log_weights(k):
        w = x.new_full((size,), -math.inf)
        w[:k] = -math.log(k)
        return w

    log_a, log_b = log_weights(n), log_weights(m)
    # the second point cloud of each cost is detached: the gradient of the
    # potential on x (on y) flows to x (to y) only, as the envelope theorem gives it
    rows, cols = [x, y], [y.detach(), x.detach()]
    log_w = [log_b, log_a]
    if debias:
        rows, cols = rows + [x, y], cols + [x.detach(), y.detach()]
        log_w += [log_a, log_b]
    if n == m:  # all problems in one batched computation
        costs = _ground_cost(torch.stack(rows), torch.stack(cols), p)
    else:
        costs = torch.stack([padded(_ground_cost(r, c, p)) for r, c in zip(rows, cols)])
    log_w = torch.stack(log_w)

    def softmin(eps, cost, h):
        # -eps log sum_j exp(h_j - C_ij / eps), every problem at once
        return -eps * _logsumexp(torch.add(h.unsqueeze(1), cost, alpha=-1 / eps), dim=2)

    def partners(t):
        # row k of the result: row k's partner, (a, b) <-> (b, a), (a, a) and (b, b) their own
        return torch.cat((t[1:2], t[:1], t[2:]))

    schedule = _annealing(x, y, p, blur, scaling)
    with torch.no_grad():
        fixed = costs.detach()
        pot = softmin(schedule[0], fixed, log_w)
        for eps in schedule:
            pot = 0.5 * (pot + softmin(eps, fixed, log_w + partners(pot) / eps))
    eps = schedule[-1]
    pot = softmin(eps, costs, log_w + partners(pot) / eps)  # the gradient flows through costs only
    weight = partners(log_w.exp())  # each potential is integrated against its own measure
    value = (weight[:2] * pot[:2]).sum()
    if debias:
        value = value - (weight[2:] * pot[2:]).sum()
    return value


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
            F = log_mu - _logsumexp(G - scaled, dim=1).unsqueeze(1)
            G = log_nu - _logsumexp(F - scaled, dim=0).unsqueeze(0)
        plan = torch.exp(F + G - scaled)
        return (plan * cost).sum()
