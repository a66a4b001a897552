"""The Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", ICML 2020), in its
targeted form FAB-T, as AutoAttack runs it.

FAB looks for the smallest perturbation that changes the decision, rather than
the highest loss inside a ball. At each iterate it replaces the network by its
first-order expansion: the decision boundary between the true class ``y`` and
a target ``t`` becomes the hyperplane

    f_t(x_i) - f_y(x_i) + <grad (f_t - f_y)(x_i), z - x_i> = 0,

and the attack moves towards the closest point of that hyperplane inside the
input box, biased towards the original input so the perturbation stays small.
An iterate that crosses the boundary is recorded and pulled back towards the
original input, so the search tightens around the boundary's nearest point.
"""

from __future__ import annotations

from numbers import Integral, Real

import torch

from .._utils import rand_like, randn_like
from .._validation import Interval
from ._base import Attack, _flat_norm, project_box
from ._steps import best_of_restarts


def hyperplane_projection(x, w, c, norm, bounds):
    """Smallest step onto a hyperplane that keeps the point inside a box.

    Solves, for each row, ``min ||delta||`` subject to ``<w, delta> = c`` and
    ``low <= x + delta <= high``. Both norms reduce to one search over a
    single scalar: with ``room_i`` the distance from ``x_i`` to the box face
    that ``w_i`` points to, the optimum is

    * l_inf: ``delta_i = sign(w_i) * min(s, room_i)``,
    * l_2:   ``delta_i = sign(w_i) * min(s * |w_i|, room_i)``,

    for the ``s >= 0`` at which ``<w, delta(s)> = c``. That inner product is
    piecewise linear and non-decreasing in ``s``, with a kink where each
    coordinate reaches the box, so sorting the kinks gives ``s`` exactly.
    When no point of the box reaches the hyperplane, every coordinate is
    pushed to its face (the point of the box closest to the hyperplane in
    the direction of ``w``).

    Parameters
    ----------
    x : torch.Tensor of shape (n, d)
        The points to project.
    w : torch.Tensor of shape (n, d)
        Normals of the hyperplanes.
    c : torch.Tensor of shape (n,)
        Offsets: the hyperplane of row ``k`` is ``<w_k, delta> = c_k``.
    norm : {"linf", "l2"}
        The norm to minimize.
    bounds : tuple of float or None
        The box; ``None`` for no box.

    Returns
    -------
    delta : torch.Tensor of shape (n, d)
        The steps.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks.fab import hyperplane_projection
    >>> x, w, c = torch.tensor([[0.5, 0.9]]), torch.tensor([[1.0, 1.0]]), torch.tensor([0.4])
    >>> hyperplane_projection(x, w, c, "linf", (0.0, 1.0))  # the 2nd coordinate hits 1.0
    tensor([[0.3000, 0.1000]])
    """
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w, c = w * flip[:, None], c * flip
    absw = w.abs()
    active = absw > 0
    if bounds is None:
        room = torch.full_like(x, float("inf"))
    else:
        low, high = bounds
        room = torch.where(w > 0, high - x, x - low).clamp_min(0)
    room = torch.where(active, room, torch.zeros_like(room))
    inf = torch.full_like(x, float("inf"))
    if norm == "linf":
        kink, slope = torch.where(active, room, inf), absw
    else:
        kink, slope = torch.where(active, room / absw.clamp_min(1e-30), inf), absw * absw
    reach = absw * room  # each coordinate's share of <w, delta> once at its face
    kink, order = kink.sort(dim=1)
    reach, slope = reach.gather(1, order), slope.gather(1, order)
    # shares of the coordinates already at their faces (an exclusive cumulative sum)
    before = torch.cat((torch.zeros_like(reach[:, :1]), reach[:, :-1].cumsum(1)), dim=1)
    after = slope.flip(1).cumsum(1).flip(1)  # slopes of the others
    value = before + kink * after  # <w, delta> at each kink
    hit = value >= c[:, None]  # nan (inf * 0) compares False
    feasible = hit.any(1)
    k = hit.to(torch.uint8).argmax(1, keepdim=True)  # first kink past c
    s = ((c[:, None] - before.gather(1, k)) / after.gather(1, k).clamp_min(1e-30)).clamp_min(0)
    scale = s if norm == "linf" else s * absw
    step = torch.where(feasible[:, None], torch.minimum(scale, room), room)
    return torch.where(active, w.sign() * step, torch.zeros_like(step))


class FAB(Attack):
    """Targeted Fast Adaptive Boundary attack (FAB-T), inside a budget.

    The attack of Croce & Hein, ICML 2020, in the targeted form that
    AutoAttack runs. For a target class ``t``, from the clean input ``x_0``
    (later restarts: a random point at distance ``epsilon / 2``), each of the
    ``steps`` iterations

    1. linearizes ``f_t - f_y`` at the iterate ``x_i``, giving a hyperplane;
    2. projects both ``x_i`` and ``x_0`` onto that hyperplane inside the input
       box (minimal ``norm`` steps ``d_i`` and ``d_0``, see
       :func:`hyperplane_projection`);
    3. moves to ``(1 - a) (x_i + eta d_i) + a (x_0 + eta d_0)``, clipped to the
       box, with ``a = min(|d_i| / (|d_i| + |d_0|), alpha_max)``: mostly a
       step to the boundary, slightly biased towards the clean input, with an
       overshoot ``eta``;
    4. if the new point is misclassified, records it when it is closer to
       ``x_0`` than the best so far, and pulls it back to
       ``x_0 + beta (x_i+1 - x_0)``.

    Targets are the ``n_target_classes`` most likely wrong classes at the clean
    input, attacked in turn on the points still robust. FAB minimizes the
    perturbation rather than maximizing a loss in the ball, so as an attack
    with a budget it returns, per point, its smallest misclassified point when
    that lies within ``epsilon`` of the input, and the clean input otherwise.

    Parameters
    ----------
    epsilon : float, default=0.3
        Radius of the threat model's ball: perturbations found beyond it do
        not count.
    norm : {"linf", "l2"}, default="linf"
        The norm the attack minimizes.
    steps : int, default=100
        Iterations per target class and restart (AutoAttack: 100).
    n_target_classes : int, default=9
        Target classes, the most likely wrong ones at the clean input, capped
        at ``n_classes - 1`` (AutoAttack: 9, every wrong class of a 10-class
        problem).
    restarts : int, default=1
        Runs per target class; the first starts at the clean input, later ones
        at a random point at distance ``epsilon / 2`` in ``norm``.
    alpha_max : float, default=0.1
        Largest weight of the step towards the clean input's projection.
    eta : float, default=1.05
        Overshoot: steps are ``eta`` times the distance to the hyperplane.
    beta : float, default=0.9
        Backward step: a misclassified iterate moves to ``x_0 + beta
        (x - x_0)``.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box; ``None`` for unbounded features.

    See Also
    --------
    APGD : Maximizes a loss inside the ball instead.
    AutoAttack : ``version="standard"`` runs FAB-T after APGD-CE and APGD-T.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import FAB
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = FAB(epsilon=0.1, steps=10)(net, X, y)
    >>> bool((X_adv - X).abs().max() <= 0.1 + 1e-6)
    True
    """

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "steps": [Interval(Integral, 1, None)],
        "n_target_classes": [Interval(Integral, 1, None)],
        "restarts": [Interval(Integral, 1, None)],
        "alpha_max": [Interval(Real, 0, 1)],
        "eta": [Interval(Real, 1, None)],
        "beta": [Interval(Real, 0, 1, closed="right")],
    }

    def __init__(
        self,
        epsilon=0.3,
        norm="linf",
        steps=100,
        n_target_classes=9,
        restarts=1,
        alpha_max=0.1,
        eta=1.05,
        beta=0.9,
        bounds=(0.0, 1.0),
    ):
        self.epsilon = epsilon
        self.norm = norm
        self.steps = steps
        self.n_target_classes = n_target_classes
        self.restarts = restarts
        self.alpha_max = alpha_max
        self.eta = eta
        self.beta = beta
        self.bounds = bounds

    def _start(self, x, restart):
        """The clean input, or for a restart a random point at distance
        ``epsilon / 2`` (then clipped to the box)."""
        if restart == 0:
            return x.clone()
        t = rand_like(x) * 2 - 1 if self.norm == "linf" else randn_like(x)
        t = t / _flat_norm(t, self.norm).clamp_min(1e-12)
        return x + project_box(x, 0.5 * float(self.epsilon) * t, self._bounds)

    def _single_run(self, module, x, y, target_rank, restart, enough=None):
        """One FAB-T run; returns the smallest misclassified point found and
        its distance (``inf`` where none was found).

        With ``enough`` (the budget), a point leaves the batch once a
        misclassified point within that distance is found: the budgeted
        attack needs no smaller one, and the other points' iterates do not
        depend on the batch.
        """
        norm, bounds = self.norm, self._bounds
        eta, beta, alpha_max = float(self.eta), float(self.beta), float(self.alpha_max)
        n = x.shape[0]
        shape = (1,) * (x.dim() - 1)
        with torch.no_grad():
            target = module(x).argsort(dim=1, descending=True)[:, target_rank]
        xi = self._start(x, restart)
        best, best_dist = x.clone(), torch.full((n,), float("inf"), device=x.device)
        rows = torch.arange(n, device=x.device)  # the batch's rows in ``best``
        for _ in range(self.steps):
            if enough is not None:
                done = best_dist[rows] <= enough
                if done.any():
                    keep = (~done).nonzero().flatten()
                    if keep.numel() == 0:
                        break
                    x, y, target, xi, rows = x[keep], y[keep], target[keep], xi[keep], rows[keep]
            m = rows.numel()
            here = torch.arange(m, device=x.device)
            xi.requires_grad_(True)
            logits = module(xi)
            gap = logits[here, target] - logits[here, y]  # > 0 past the boundary
            (grad,) = torch.autograd.grad(gap.sum(), xi)
            xi.requires_grad_(False)
            with torch.no_grad():
                x0, w, b, xf = x.reshape(m, -1), grad.reshape(m, -1), gap.detach(), xi.reshape(m, -1)
                both = hyperplane_projection(
                    torch.cat((xf, x0)), torch.cat((w, w)),
                    torch.cat((-b, -b - (w * (x0 - xf)).sum(1))), norm, bounds,
                )
                d_i, d_0 = both[:m], both[m:]
                len_i = _flat_norm(d_i, norm).clamp_min(1e-8)
                len_0 = _flat_norm(d_0, norm).clamp_min(1e-8)
                alpha = (len_i / (len_i + len_0)).clamp(0, alpha_max)
                moved = (1 - alpha) * (xf + eta * d_i) + alpha * (x0 + eta * d_0)
                if bounds is not None:
                    moved = moved.clamp(*bounds)
                xi = moved.view_as(x)
                crossed = module(xi).argmax(1) != y
                dist = _flat_norm(xi - x, norm).flatten()
                closer = (crossed & (dist < best_dist[rows])).nonzero().flatten()
                if closer.numel():
                    best[rows[closer]] = xi[closer]
                    best_dist[rows[closer]] = dist[closer]
                xi = torch.where(crossed.view(-1, *shape), x + beta * (xi - x), xi)
        return best, best_dist

    def _perturb(self, module, x, y):
        if self.epsilon == 0:
            return x.clone()
        with torch.no_grad():
            n_classes = module(x[:1]).shape[1]
        runs = [
            (rank, restart)
            for rank in range(1, min(self.n_target_classes, n_classes - 1) + 1)
            for restart in range(self.restarts)
        ]
        if not runs:
            return x.clone()
        pending, eps = iter(runs), float(self.epsilon)
        shape = (1,) * (x.dim() - 1)

        def run(module, xs, ys):
            found, dist = self._single_run(module, xs, ys, *next(pending), enough=eps)
            return torch.where((dist <= eps).view(-1, *shape), found, xs)

        return best_of_restarts(module, x, y, run, len(runs))
