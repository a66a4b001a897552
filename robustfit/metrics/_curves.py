"""Robust accuracy as a function of the perturbation budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from .._evaluation import robust_accuracy
from .._utils import optional_import
from ..attacks import APGD
from ..attacks._base import Attack


@dataclass(frozen=True)
class RobustnessCurve:
    """Robust accuracy at several perturbation budgets.

    Made by :func:`robustness_curve`; drawn by :func:`plot_robustness_curve`.

    Parameters
    ----------
    epsilons : numpy.ndarray of shape (k,)
        The budgets, in the order given.
    accuracies : numpy.ndarray of shape (k,)
        Robust accuracy at each budget (clean accuracy at ``epsilon=0``).
    norm : str, default="linf"
        Norm of the threat model, for the axis label.
    label : str or None, default=None
        Name of the model, for the legend.
    attack : str or None, default=None
        Description of the attack template.

    Examples
    --------
    >>> import numpy as np
    >>> from robustfit.metrics import RobustnessCurve
    >>> curve = RobustnessCurve(np.array([0.0, 0.1, 0.2]), np.array([0.9, 0.6, 0.2]))
    >>> round(curve.area, 3)
    0.575
    """

    epsilons: np.ndarray
    accuracies: np.ndarray
    norm: str = "linf"
    label: str | None = None
    attack: str | None = None

    @property
    def area(self):
        """Mean robust accuracy over the budget range.

        The trapezoidal area under the curve divided by the width of the
        range; the accuracy itself for a single budget.

        Examples
        --------
        >>> from robustfit.metrics import RobustnessCurve
        >>> RobustnessCurve([0.0, 0.2], [1.0, 0.0]).area
        0.5
        """
        eps, acc = np.asarray(self.epsilons, float), np.asarray(self.accuracies, float)
        order = np.argsort(eps)
        eps, acc = eps[order], acc[order]
        width = eps[-1] - eps[0]
        if width == 0:
            return float(acc.mean())
        return float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(eps)) / width)


def _final_estimator(estimator):
    return estimator[-1] if isinstance(estimator, Pipeline) else estimator


def _default_template(estimator):
    """APGD-CE in the estimator's training threat model (norm and box); l_inf
    on (0, 1) when it trained without one (no attack, or an attack without an
    ``epsilon`` such as noise augmentation, whose ``bounds=None`` means "do
    not check the inputs", not "unbounded")."""
    trained = getattr(_final_estimator(estimator), "attack", None)
    if trained is None or not hasattr(trained, "epsilon"):
        return APGD(norm="linf", bounds=(0.0, 1.0))
    return APGD(
        norm=getattr(trained, "norm", "linf"),
        bounds=getattr(trained, "bounds", (0.0, 1.0)),
    )


def robustness_curve(estimator, X, y, epsilons, attack=None, *, batch_size=256, label=None,
                     random_state=None):
    """Robust accuracy of ``estimator`` at each budget of ``epsilons``.

    For each epsilon, a clone of the ``attack`` template with that epsilon
    (``clone(attack).set_params(epsilon=eps)``) is run through
    :func:`~robustfit.metrics.robust_accuracy`. Each budget is attacked
    independently, so a curve that *rises* somewhere is itself a warning sign:
    a larger ball contains the smaller one, and a working attack can only do
    better in it. Under ``torchrun`` every point of the curve is evaluated
    across the ranks (see :func:`~robustfit.metrics.robust_accuracy`): every
    rank must call it, with the same points, and gets the one-process curve.

    Parameters
    ----------
    estimator : AdversarialClassifier, Pipeline or torch.nn.Module
        A fitted classifier, a pipeline ending in one, or a module returning
        logits (then ``y`` holds class indices).
    X : array-like or torch.Tensor
        Inputs inside the attack's box.
    y : array-like
        Labels.
    epsilons : array-like of float
        Budgets, non-negative; include 0 to get the clean accuracy.
    attack : robustfit.attacks.Attack, default=None
        The template: any attack with an ``epsilon`` parameter; its other
        parameters are kept. ``None`` uses :class:`~robustfit.attacks.APGD`
        (cross-entropy, 100 steps) in the norm and box of the estimator's
        training attack, or l_inf on (0, 1) when it has none (standard
        training; noise augmentation, :class:`~robustfit.attacks.GaussianNoise`,
        whose model you will rather want to attack in l_2:
        ``attack=APGD(norm="l2")``).
    batch_size : int, default=256
        Samples attacked at once.
    label : str, default=None
        Stored on the curve, for plot legends.
    random_state : int, numpy RandomState or None, default=None
        Seeds every point's attack (see :func:`robust_accuracy`); ``None``
        uses the estimator's ``random_state``.

    Returns
    -------
    curve : RobustnessCurve
        ``curve.epsilons`` and ``curve.accuracies`` as arrays.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import PGD
    >>> from robustfit.metrics import robustness_curve
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> X, y = torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,))
    >>> curve = robustness_curve(net, X, y, [0.0, 0.1, 0.5], attack=PGD(steps=5))
    >>> curve.accuracies.shape
    (3,)
    """
    eps = np.asarray(epsilons, dtype=float)
    if eps.ndim != 1 or eps.size == 0 or not np.all(np.isfinite(eps)) or np.any(eps < 0):
        raise ValueError(
            f"epsilons must be a non-empty 1-d sequence of finite numbers >= 0, got {epsilons!r}"
        )
    template = _default_template(estimator) if attack is None else attack
    if not isinstance(template, Attack) or "epsilon" not in template.get_params():
        raise TypeError(
            "attack must be a robustfit Attack with an epsilon parameter (a template "
            f"whose epsilon is set per point), got {attack!r}"
        )
    accuracies = np.array([
        robust_accuracy(
            estimator, X, y,
            attack=clone(template).set_params(epsilon=float(e)),
            batch_size=batch_size, random_state=random_state,
        )
        for e in eps
    ])
    return RobustnessCurve(
        epsilons=eps, accuracies=accuracies, norm=getattr(template, "norm", "linf"),
        label=label, attack=repr(template),
    )


def labelled_curves(curves, kind, x_name):
    """``[(label, curve)]`` from one curve of class ``kind``, a list of them, or a
    dict mapping labels to curves or to ``(x, accuracies)`` pairs (``x_name``
    names ``x`` in messages)."""
    name = kind.__name__
    if isinstance(curves, kind):
        return [(curves.label, curves)]
    if isinstance(curves, dict):
        items = []
        for label, curve in curves.items():
            if not isinstance(curve, kind):
                try:
                    x, a = curve
                except (TypeError, ValueError):
                    raise TypeError(
                        f"curves[{label!r}] must be a {name} or a pair ({x_name}, accuracies), "
                        f"got {curve!r}"
                    ) from None
                curve = kind(np.asarray(x, float), np.asarray(a, float))
            items.append((str(label), curve))
        return items
    if isinstance(curves, (list, tuple)) and all(isinstance(c, kind) for c in curves):
        return [(c.label, c) for c in curves]
    raise TypeError(
        f"curves must be a {name}, a list of them, or a dict mapping labels to curves; "
        f"got {type(curves).__name__}"
    )


def draw_curves(items, x_of, ax, feature, *, xlabel, ylabel, **plot_kwargs):
    """Plot accuracy against ``x_of(curve)`` for each ``(label, curve)`` on ``ax``
    (a new figure when None; matplotlib through the ``plot`` extra)."""
    if ax is None:
        plt = optional_import("matplotlib.pyplot", feature)
        _, ax = plt.subplots(figsize=(5, 3.5))
    for label, curve in items:
        ax.plot(np.asarray(x_of(curve), float), np.asarray(curve.accuracies, float),
                label=label, **plot_kwargs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if any(label for label, _ in items):
        ax.legend()
    return ax


def plot_robustness_curve(curves, ax=None, **plot_kwargs):
    """Plot robust accuracy against epsilon for one or several models.

    Parameters
    ----------
    curves : RobustnessCurve, list of RobustnessCurve, or dict
        One curve, several (labelled by their ``label``), or a dict mapping
        legend labels to curves or to ``(epsilons, accuracies)`` pairs.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` creates a new figure.
    **plot_kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for every curve.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The axes drawn on.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from robustfit.metrics import RobustnessCurve, plot_robustness_curve
    >>> a = RobustnessCurve([0, 0.1, 0.2], [0.95, 0.7, 0.3], label="standard")
    >>> b = RobustnessCurve([0, 0.1, 0.2], [0.9, 0.8, 0.6], label="PGD-trained")
    >>> ax = plot_robustness_curve([a, b])
    >>> len(ax.get_lines())
    2
    """
    items = labelled_curves(curves, RobustnessCurve, "epsilons")
    kwargs = {"marker": "o"}
    kwargs.update(plot_kwargs)
    norms = {curve.norm for _, curve in items}
    norm = norms.pop() if len(norms) == 1 else None
    xlabel = {"linf": r"$\epsilon$ ($\ell_\infty$)", "l2": r"$\epsilon$ ($\ell_2$)"}.get(norm, r"$\epsilon$")
    return draw_curves(items, lambda c: c.epsilons, ax, "plot_robustness_curve", xlabel=xlabel,
                       ylabel="robust accuracy", **kwargs)
