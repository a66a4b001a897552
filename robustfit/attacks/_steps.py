"""Steps shared by several attacks: potentials, the projected ascent loop,
per-point scores, restarts and the logit margin.

PGD, FGSM and Langevin run :func:`ascent_steps`; APGD, Square and AutoAttack
keep the best of several runs with :func:`best_of_restarts` and
:func:`attack_score`; Square and MinimumNorm (and through it the transfer
bound) use :func:`margin`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._utils import randn_like
from ._base import normalize_gradient, project, random_init
from ._graph import cuda_graphs, run_graphed


def ce_potential(logits, y):
    """Summed cross-entropy: the quantity PGD ascends (per-sample gradients do
    not depend on the batch size)."""
    return F.cross_entropy(logits, y, reduction="sum")


def kl_potential(module, x):
    """Summed ``KL(p(x) || p(x + delta))`` against the clean prediction, fixed
    once (the inner maximization of TRADES, Zhang et al. 2019)."""
    with torch.no_grad():
        log_p_clean = F.log_softmax(module(x).float(), dim=1)

    def potential(logits, y):
        log_p_adv = F.log_softmax(logits.float(), dim=1)
        return F.kl_div(log_p_adv, log_p_clean, reduction="sum", log_target=True)

    return potential


def start(x, epsilon, norm, bounds, random_start, scale=1e-3):
    """The first iterate: uniform in the ball (then fit to the box) for
    ``True``/``"uniform"``, ``scale * N(0, I)`` projected onto the ball and
    the box for ``"normal"`` (the near-zero start of the DALE and TRADES
    authors' code), or zero for ``False``."""
    if isinstance(random_start, str) and random_start == "normal":
        return project(x, float(scale) * randn_like(x), epsilon, norm, bounds)
    if random_start:
        return random_init(x, epsilon, norm, bounds)
    return torch.zeros_like(x)


def multistep_size(step_size, epsilon, steps):
    """``step_size``, or the default ``2.5 * epsilon / steps`` of Madry et al."""
    if step_size is not None:
        return float(step_size)
    return 2.5 * float(epsilon) / steps


def ascent_steps(module, x, y, delta, *, steps, step_size, epsilon, norm, bounds,
                 potential=ce_potential, grad_noise=None, step_noise=None):
    """Run ``steps`` projected (noisy) ascent steps on ``potential`` from ``delta``.

    One step, for the steepest-ascent direction ``dir`` of the norm (``sign``
    for l_inf, the l_2-normalized vector for l_2)::

        g     = grad potential(module(x + delta), y)      (+ grad_noise(g))
        delta = delta + step_size * dir(g)                (+ step_noise(delta))
        delta = project(delta)                            # ball, then box

    With both noise functions ``None`` this is PGD. The iterate is projected
    onto the ball and the box after every step, and the forward pass sees
    ``x + delta`` unclamped, so every coordinate gets a gradient (clamping only
    inside the forward pass would zero the gradient of every coordinate pushed
    outside the box).

    Parameters
    ----------
    potential : callable
        ``potential(logits, y) -> scalar``, summed over the batch.
    grad_noise, step_noise : callable or None
        ``f(t) -> tensor shaped like t``: noise added to the gradient before
        the direction is taken (Laplace-in-the-sign sampler), or to the
        iterate after the step (Gaussian Langevin sampler).
    """
    if grad_noise is None and step_noise is None and potential is ce_potential:
        # inside a cuda_graphs() block on CUDA: one replay of a recorded loop
        out = run_graphed(module, x, y, delta, _ascent_loop,
                          dict(steps=steps, norm=norm, bounds=bounds),
                          dict(step_size=step_size, epsilon=epsilon))
        if out is not None:
            return out
    return _ascent_loop(module, x, y, delta, steps=steps, step_size=step_size, epsilon=epsilon,
                        norm=norm, bounds=bounds, potential=potential, grad_noise=grad_noise,
                        step_noise=step_noise)


def _ascent_loop(module, x, y, delta, *, steps, step_size, epsilon, norm, bounds,
                 potential=ce_potential, grad_noise=None, step_noise=None):
    """The loop of :func:`ascent_steps` (the one a CUDA graph records)."""
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = potential(module(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if grad_noise is not None:
                grad = grad + grad_noise(grad)
            delta = delta + step_size * normalize_gradient(grad, norm)
            if step_noise is not None:
                delta = delta + step_noise(delta)
            delta = project(x, delta, epsilon, norm, bounds)
    return delta.detach()


@torch.no_grad()
def attack_score(module, x_adv, y):
    """Per-sample attack score: +inf where misclassified, else the loss."""
    logits = module(x_adv)
    loss = F.cross_entropy(logits, y, reduction="none").float()
    return torch.where(logits.argmax(1) != y, torch.full_like(loss, float("inf")), loss)


def best_of_restarts(module, x, y, run, restarts):
    """Keep, per point, the best of ``restarts`` independent runs of ``run``.

    "Best" means misclassified if any run misclassified the point, and
    otherwise highest loss. Points already misclassified are not attacked
    again, so restarts cost little once most points are broken.
    """
    best = run(module, x, y)
    best_score = attack_score(module, best, y)
    for _ in range(restarts - 1):
        todo = torch.isfinite(best_score).nonzero().flatten()
        if todo.numel() == 0:
            break
        with cuda_graphs(False):  # subsets of data-dependent size: not worth a graph each
            cand = run(module, x[todo], y[todo])
        cand_score = attack_score(module, cand, y[todo])
        better = cand_score > best_score[todo]
        idx = todo[better]
        best[idx] = cand[better]
        best_score[idx] = cand_score[better]
    return best


def margin(logits, y):
    """Per-sample margin ``z_y - max_{i != y} z_i`` of a batch of logits.

    Negative exactly where the sample is misclassified (ties aside).

    Parameters
    ----------
    logits : torch.Tensor of shape (n, n_classes)
        Class logits.
    y : torch.Tensor of shape (n,)
        True class indices.

    Returns
    -------
    margin : torch.Tensor of shape (n,)
        The margin of each sample.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import margin
    >>> margin(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([1]))
    tensor([1.])
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return z_y - others.amax(dim=1)
