"""Minimum-norm adversarial examples by bisection over the budget.

The attack looks for the smallest perturbation that makes a classifier err,
rather than the worst loss inside a fixed budget. It bisects the radius of the
threat model's ball: each round runs a projected descent on the logit margin
``z_y - max_{j != y} z_j`` inside a ball of radius ``eps`` per sample (from the
clean point, from random points of the ball and towards the runner-up classes,
as APGD-T does), keeps every misclassified iterate as a candidate, and moves
the bracket ``[lo, hi]`` of the boundary distance: ``hi`` to the smallest
candidate's norm, ``lo`` to ``eps`` when a round finds nothing. The step size
decays over a round's steps (large moves first, then a fine search near the
boundary, as in FMN, Pintor et al. 2021). Every reported point is re-checked
at the end, so a finite distance always comes with a misclassified point.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from .._validation import Interval, Options, check_in_bounds
from ._base import (
    NORMS,
    Attack,
    _as_tensors,
    _flat_norm,
    eval_mode,
    normalize_gradient,
    perturbation_norm,
    project,
    random_init,
)
from ._steps import margin


def _uniform_start(x, eps, norm, bounds):
    """A random point of the per-sample ``norm`` ball of radius ``eps`` (shaped like x), in the box."""
    unit = random_init(torch.zeros_like(x), 1.0, norm, None)  # uniform in the unit ball
    return project(x, unit * eps, eps, norm, bounds)


def _target_gap(logits, y, target):
    """Per-sample ``z_y - z_t``: the loss of a run towards the target class ``t``."""
    return logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)


def _margin_descent(module, x, y, eps, delta, *, steps, norm, bounds, target=None):
    """Projected descent on the margin (or ``z_y - z_t``) inside per-sample balls of radius ``eps``.

    Returns, per sample, the smallest norm of an iterate the module
    misclassifies (``inf`` if none) and that iterate.
    """
    cand = torch.full((x.shape[0],), float("inf"), device=x.device)
    cand_x = x.clone()
    for i in range(steps + 1):
        delta.requires_grad_(i < steps)
        logits = module(x + delta)
        m = margin(logits, y)
        loss = m if target is None else _target_gap(logits, y, target)
        with torch.no_grad():
            nrm = _flat_norm(delta, norm).flatten()
            better = (m < 0) & (nrm < cand)
            cand = torch.where(better, nrm, cand)
            cand_x[better] = (x + delta)[better]
        if i == steps:
            break
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        # cosine-decayed step from eps / 4 to eps / 100: large moves first, then a
        # fine search near the boundary (as in FMN, Pintor et al. 2021)
        step = eps * (0.01 + 0.24 * (1 + math.cos(math.pi * i / steps)) / 2)
        with torch.no_grad():
            delta = project(x, delta - step * normalize_gradient(grad, norm), eps, norm, bounds)
    return cand, cand_x


def _search_round(module, x, y, eps, targets, *, steps, restarts, norm, bounds):
    """One bisection round: the best candidate of the clean-start, random-start and targeted runs."""
    kw = {"steps": steps, "norm": norm, "bounds": bounds}
    cand, cand_x = _margin_descent(module, x, y, eps, torch.zeros_like(x), **kw)
    runs = [(_uniform_start, None)] * (restarts - 1) + [(None, t) for t in targets.T]
    for start, target in runs:
        delta0 = torch.zeros_like(x) if start is None else start(x, eps, norm, bounds)
        c2, x2 = _margin_descent(module, x, y, eps, delta0, target=target, **kw)
        better = c2 < cand
        cand = torch.where(better, c2, cand)
        cand_x[better] = x2[better]
    return cand, cand_x


@torch.no_grad()
def _clean_pass(module, x, y, n_targets):
    """Where the clean point is already misclassified, and the ``n_targets`` runner-up classes."""
    logits = module(x)
    clean_wrong = logits.argmax(1) != y
    n_targets = min(n_targets, logits.shape[1] - 1)
    targets = logits.scatter(1, y[:, None], float("-inf")).topk(n_targets, dim=1).indices
    return clean_wrong, targets


@torch.no_grad()
def _update_bracket(state, idx, cand, cand_x, eps_max):
    """Record a round's candidates for samples ``idx``; move their bracket and next radius in place."""
    best, best_x, lo, eps, active = state
    improved = cand < best[idx]
    best[idx[improved]] = cand[improved]
    best_x[idx[improved]] = cand_x[improved]
    failed = ~torch.isfinite(cand)
    lo[idx[failed]] = torch.maximum(lo[idx[failed]], eps[idx[failed]])
    hi = best[idx]
    nxt = torch.where(torch.isfinite(hi), (lo[idx] + hi) / 2, eps[idx] * 2)
    eps[idx] = nxt.clamp(max=eps_max)
    # stop a sample once its budget cannot grow any more without success
    stuck = failed & (eps[idx] >= eps_max) & (lo[idx] >= eps_max)
    active[idx[stuck]] = False


@torch.no_grad()
def _verify(module, x, y, best, best_x, norm):
    """Keep a finite distance only where its point is misclassified and that far; reset the others to ``x``."""
    pos = torch.isfinite(best) & (best > 0)
    if pos.any():
        still = module(best_x[pos]).argmax(1) != y[pos]
        dist = perturbation_norm(best_x[pos], x[pos], norm)
        ok = still & (dist <= best[pos] + 1e-5)
        b = best[pos]
        b[~ok] = float("inf")
        best[pos] = b
        bad = pos.nonzero().flatten()[~ok]
        best_x[bad] = x[bad]


def _minimum_norm(module, x, y, *, norm, bounds, steps, restarts, n_targets, search_steps, eps_init, eps_max):
    """Smallest verified adversarial point and its distance per sample, by bisection over the budget."""
    n = x.shape[0]
    best = torch.full((n,), float("inf"), device=x.device)
    lo = torch.zeros(n, device=x.device)
    eps = torch.full((n,), float(eps_init), device=x.device)
    clean_wrong, targets = _clean_pass(module, x, y, n_targets)
    best[clean_wrong] = 0.0
    state = (best, x.clone(), lo, eps, ~clean_wrong)
    ball = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(search_steps):
        idx = state[4].nonzero().flatten()
        if idx.numel() == 0:
            break
        cand, cand_x = _search_round(module, x[idx], y[idx], eps[idx].view(ball), targets[idx], steps=steps,
                                     restarts=restarts, norm=norm, bounds=bounds)
        _update_bracket(state, idx, cand, cand_x, eps_max)
    best_x = state[1]
    _verify(module, x, y, best, best_x, norm)
    return best_x, best


class MinimumNorm(Attack):
    """Minimum-norm adversarial examples: bisection over the budget of a margin attack.

    For each point, the search looks for the smallest ``norm`` perturbation
    that makes the module misclassify it. Each of ``search_steps`` rounds runs
    ``steps`` projected steps of descent on the logit margin
    ``z_y - max_{j != y} z_j`` inside a ball of radius ``eps`` (one run from
    the clean point, ``restarts - 1`` from random points of the ball, and one
    towards each of the ``n_targets`` runner-up classes, descending
    ``z_y - z_t``); every misclassified iterate is a candidate. The smallest
    candidate norm becomes the upper end of the bracket and a round without
    success raises its lower end; the next radius is the bracket's midpoint,
    or twice the radius while nothing was found. The final points are checked
    again, so a reported distance always comes with a misclassified point.

    Unlike the other attacks it has no ``epsilon``: the budget is what it
    measures. The distances are **upper bounds** of the true distance to the
    decision boundary (the attack finds *an* adversarial point, not the
    nearest one), up to the bisection's resolution.

    Parameters
    ----------
    norm : {"linf", "l2"}, default="linf"
        The norm of the perturbation.
    steps : int, default=20
        Descent steps per run (the step length decays from ``eps / 4`` to
        ``eps / 100``).
    restarts : int, default=1
        Runs per round from the clean point (1) and from uniform random points
        of the ball (``restarts - 1``); the smallest success counts.
    n_targets : int, default=3
        Targeted runs per round, towards each of the ``n_targets`` classes with
        the highest clean logits after the true one (as APGD-T does);
        stronger on adversarially trained models, at ``1 + n_targets`` times
        the cost (with ``restarts=1``).
    search_steps : int, default=12
        Bisection rounds; each round after the first success at least halves
        the bracket.
    eps_init : float or None, default=None
        First radius: ``None`` is 0.1 (l_inf) or 1.0 (l_2) times the width of
        ``bounds`` (1 without bounds); at most ``max_epsilon``.
    max_epsilon : float or None, default=None
        Largest radius tried: ``None`` is the diameter of the input box (its
        width for l_inf, width times ``sqrt(n_features)`` for l_2), unbounded
        without bounds. A point with no adversarial example found within this
        radius gets distance ``inf``.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box the adversarial points stay in; ``None`` for unbounded
        features.

    See Also
    --------
    robustfit.metrics.average_robustness : the mean of these distances over a
        data set, ``Rob_d`` of Sehwag et al. (2022).

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import MinimumNorm
    >>> net = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    ...     _ = net.bias.zero_()
    >>> X, y = torch.tensor([[0.5, 0.0], [2.0, 1.0]]), torch.tensor([0, 0])
    >>> X_adv, dist = MinimumNorm(norm="l2", bounds=None).run(net, X, y)
    >>> [round(float(d), 2) for d in dist]
    [0.5, 2.0]
    >>> bool((net(X_adv).argmax(1) != y).all())
    True
    """

    _parameter_constraints = {
        "norm": [Options(NORMS)],
        "steps": [Interval(Integral, 1, None)],
        "restarts": [Interval(Integral, 1, None)],
        "n_targets": [Interval(Integral, 0, None)],
        "search_steps": [Interval(Integral, 1, None)],
        "eps_init": [None, Interval(Real, 0, None, closed="neither")],
        "max_epsilon": [None, Interval(Real, 0, None, closed="neither")],
        "bounds": ["bounds"],
    }

    def __init__(
        self,
        norm="linf",
        steps=20,
        restarts=1,
        n_targets=3,
        search_steps=12,
        eps_init=None,
        max_epsilon=None,
        bounds=(0.0, 1.0),
    ):
        self.norm = norm
        self.steps = steps
        self.restarts = restarts
        self.n_targets = n_targets
        self.search_steps = search_steps
        self.eps_init = eps_init
        self.max_epsilon = max_epsilon
        self.bounds = bounds

    def _radii(self, x):
        """The first and the largest radius of the search for inputs shaped like ``x``."""
        bounds = self._bounds
        width = 1.0 if bounds is None else bounds[1] - bounds[0]
        if self.max_epsilon is not None:
            eps_max = float(self.max_epsilon)
        elif bounds is None:
            eps_max = float("inf")
        else:
            eps_max = width if self.norm == "linf" else width * x[0].numel() ** 0.5
        eps_init = (0.1 if self.norm == "linf" else 1.0) * width if self.eps_init is None else self.eps_init
        return min(eps_init, eps_max), eps_max

    def run(self, module, X, y, check_input=True):
        """Minimum-norm adversarial examples and their distances.

        Parameters
        ----------
        module : torch.nn.Module
            A network that maps a batch of inputs to class logits.
        X : torch.Tensor or numpy.ndarray
            Clean inputs, shape ``(n, ...)``, inside ``bounds``.
        y : torch.Tensor or numpy.ndarray
            Integer class indices, shape ``(n,)``.
        check_input : bool, default=True
            Validate the parameters, convert ``X`` and ``y`` to tensors on the
            module's device and check that ``X`` lies in ``bounds``. ``False``
            trusts the caller to pass such tensors (the path of
            :func:`~robustfit.metrics.average_robustness`, which validates
            once for all batches).

        Returns
        -------
        X_adv : torch.Tensor
            Per point, the smallest verified adversarial point found, or the
            clean point where none was found (and where the clean point is
            already misclassified). Detached.
        distances : torch.Tensor of shape (n,)
            ``norm`` of ``X_adv - X``: 0 where the clean point is misclassified,
            ``inf`` where no adversarial point was found within
            ``max_epsilon`` in ``search_steps`` rounds.
        """
        if check_input:
            self.validate_params()
            X, y = _as_tensors(module, X, y)
            check_in_bounds(X, self._bounds)
        eps_init, eps_max = self._radii(X)
        with eval_mode(module), torch.enable_grad():
            x_adv, distances = _minimum_norm(
                module, X, y, norm=self.norm, bounds=self._bounds, steps=self.steps, restarts=self.restarts,
                n_targets=self.n_targets, search_steps=self.search_steps, eps_init=eps_init, eps_max=eps_max,
            )
        return x_adv.detach(), distances

    def _perturb(self, module, x, y):
        return self.run(module, x, y, check_input=False)[0]
