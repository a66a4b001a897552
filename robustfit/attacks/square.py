"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a
query-efficient black-box adversarial attack via random search", ECCV 2020).

A score-based black-box attack: it reads the logits only, never a gradient.
Random search proposes a change of the current perturbation on one random
square window of the image and keeps it when the margin loss drops. Because it
does not use gradients it is blind to gradient masking, which makes it the
natural cross-check of gradient-based attacks: if Square breaks points that
APGD could not, the white-box evaluation is not to be trusted.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from .._utils import rand, randint
from .._validation import Interval
from ._base import Attack, normalize_gradient, project, project_box
from ._steps import best_of_restarts, margin


def _p_schedule(p_init, it, n_queries, rescale=True):
    """Fraction of pixels changed at iteration ``it`` (Andriushchenko et al.);
    the schedule is written for 10,000 queries, and ``rescale`` stretches it
    to ``n_queries``."""
    if rescale:
        it = int(it / n_queries * 10000)
    for limit, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16),
                       (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if it <= limit:
            return p_init / div
    return p_init / 512


def _eta_rectangles(a, b, device):
    """Sum of nested rectangles with weights 1/k^2, centred, unit l2 norm."""
    delta = torch.zeros(a, b, device=device)
    r0, r1 = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        delta[max(r0, 0):min(r0 + 2 * k + 1, a), max(r1, 0):min(r1 + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
        r0 -= 1
        r1 -= 1
    return delta / (delta.norm() + 1e-12)


def _eta(s, device):
    """The l_2 update pattern of Square: two opposite-signed halves of
    nested rectangles, randomly transposed; unit l2 norm."""
    delta = torch.zeros(s, s, device=device)
    delta[: s // 2] = _eta_rectangles(s // 2, s, device)
    delta[s // 2:] = -_eta_rectangles(s - s // 2, s, device)
    delta = delta / (delta.norm() + 1e-12)
    if rand(()) > 0.5:
        delta = delta.t()
    return delta


def _random_sign(shape, device):
    return randint(0, 2, shape, device=device).float() * 2 - 1


def _window(h, w, s):
    """A uniformly random top-left corner for an ``s`` x ``s`` window."""
    vh = int(randint(0, h - s + 1, ()))
    vw = int(randint(0, w - s + 1, ()))
    return slice(vh, vh + s), slice(vw, vw + s)


class Square(Attack):
    """Square Attack: score-based black-box random search.

    The attack of Andriushchenko et al., ECCV 2020.
    Each query changes the current perturbation on one random ``s`` x ``s``
    window, shared by all images of the batch, with ``s`` shrinking over the
    queries (the fraction of pixels changed starts at ``p_init``); a change
    is kept for an image when it lowers the margin
    ``z_y - max_{i != y} z_i``, and an image is no longer queried once it is
    misclassified.

    * l_inf: the start is random vertical stripes of ``+-epsilon``; a query
      sets the window to ``+-epsilon`` (one random sign per channel).
    * l_2: the start is a grid of the attack's pattern (nested rectangles of
      opposite signs); a query moves perturbation mass into the window and out
      of a second random window, keeping the perturbation on the sphere of
      radius ``epsilon`` before clipping to the box.

    The attack reads only the module's outputs, never a gradient, so it is
    unaffected by gradient masking. Inputs must be images ``(n, C, H, W)``.

    Parameters
    ----------
    epsilon : float, default=0.3
        Radius of the threat model's ball.
    norm : {"linf", "l2"}, default="linf"
        Norm of the threat model.
    n_queries : int, default=5000
        Queries (forward passes) per image and run; 5000 in the paper's
        evaluation and in AutoAttack.
    p_init : float, default=0.8
        Initial fraction of pixels a query changes (AutoAttack's value).
    restarts : int, default=1
        Independent runs; later runs only attack points still classified
        correctly.
    rescale_schedule : bool, default=True
        Stretch the window-size schedule, written for 10,000 queries, to
        ``n_queries``. AutoAttack's reference implementation runs its 5,000
        queries on the unstretched schedule (``False``), so windows stay
        larger; :class:`AutoAttack` does the same.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box adversarial inputs are clipped to; ``None`` for
        unbounded inputs.

    See Also
    --------
    AutoAttack : Runs Square after the white-box APGD attacks.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import Square
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> X, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = Square(epsilon=0.1, n_queries=50)(net, X, y)
    >>> bool((X_adv - X).abs().max() <= 0.1 + 1e-6)
    True
    """

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "n_queries": [Interval(Integral, 1, None)],
        "p_init": [Interval(Real, 0, 1, closed="right")],
        "restarts": [Interval(Integral, 1, None)],
        "rescale_schedule": ["boolean"],
    }

    def __init__(
        self,
        epsilon=0.3,
        norm="linf",
        n_queries=5000,
        p_init=0.8,
        restarts=1,
        rescale_schedule=True,
        bounds=(0.0, 1.0),
    ):
        self.epsilon = epsilon
        self.norm = norm
        self.n_queries = n_queries
        self.p_init = p_init
        self.restarts = restarts
        self.rescale_schedule = rescale_schedule
        self.bounds = bounds


    def _perturb(self, module, x, y):
        if x.dim() != 4:
            raise ValueError(
                "Square needs image inputs of shape (n, C, H, W), got X of shape "
                f"{tuple(x.shape)}"
            )
        if self.epsilon == 0:
            return x.clone()
        with torch.no_grad():
            return best_of_restarts(module, x, y, self._single_run, self.restarts)

    def _init(self, x):
        eps, bounds = float(self.epsilon), self._bounds
        n, c, h, w = x.shape
        if self.norm == "linf":
            delta = eps * _random_sign((n, c, 1, w), x.device).expand_as(x)
            return x + project_box(x, delta, bounds)
        delta = torch.zeros_like(x)
        s = max(h // 5, 1)
        start_h, start_w = (h - 5 * s) // 2, (w - 5 * s) // 2
        for vh in range(max(start_h, 0), h - s + 1, s):
            for vw in range(max(start_w, 0), w - s + 1, s):
                pattern = _eta(s, x.device) * _random_sign((n, c, 1, 1), x.device)
                delta[:, :, vh:vh + s, vw:vw + s] += pattern
        return x + project_box(x, eps * normalize_gradient(delta, "l2"), bounds)

    def _propose(self, x, x_best, it):
        """One candidate for each row of ``x`` from its current best point."""
        eps, bounds = float(self.epsilon), self._bounds
        m, c, h, w = x.shape
        p = _p_schedule(float(self.p_init), it, self.n_queries, self.rescale_schedule)
        s = round(math.sqrt(p * h * w))
        delta = x_best - x
        if self.norm == "linf":
            s = min(max(s, 1), h, w)
            rows, cols = _window(h, w, s)
            delta[:, :, rows, cols] = eps * _random_sign((m, c, 1, 1), x.device)
            return x + project(x, delta, eps, "linf", bounds)
        s = max(s, 3)
        s += 1 - s % 2  # odd
        s = min(s, h, w)
        rows, cols = _window(h, w, s)
        rows2, cols2 = _window(h, w, s)
        mask = torch.zeros_like(x[:1])
        mask[:, :, rows, cols] = 1
        mask[:, :, rows2, cols2] = 1

        def l2(t, dims):
            return (t ** 2).sum(dim=dims, keepdim=True).sqrt()

        old = delta[:, :, rows, cols]
        norm_image = l2(delta, (1, 2, 3))
        norm_windows = l2(delta * mask, (1, 2, 3))
        new = _eta(s, x.device) * _random_sign((m, c, 1, 1), x.device)
        new = new + old / (l2(old, (2, 3)) + 1e-12)
        budget = ((eps ** 2 - norm_image ** 2).clamp_min(0) / c + norm_windows ** 2).sqrt()
        new = new / (l2(new, (2, 3)) + 1e-12) * budget
        delta[:, :, rows2, cols2] = 0
        delta[:, :, rows, cols] = new
        return x + project_box(x, eps * normalize_gradient(delta, "l2"), bounds)

    def _single_run(self, module, x, y):
        x_best = self._init(x)
        margin_best = margin(module(x_best), y)
        for it in range(self.n_queries):
            todo = (margin_best > 0).nonzero().flatten()
            if todo.numel() == 0:
                break
            candidate = self._propose(x[todo], x_best[todo], it)
            m = margin(module(candidate), y[todo])
            better = m < margin_best[todo]
            idx = todo[better]
            x_best[idx] = candidate[better]
            margin_best[idx] = m[better]
        return x_best
