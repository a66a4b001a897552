"""Sanity checks of a robustness evaluation: the symptoms of gradient masking.

A model can look robust because its gradients are useless to the attack (zero,
noisy or shattered), not because no adversarial example exists (Athalye,
Carlini & Wagner 2018, "Obfuscated gradients give a false sense of
security"). The checks here look for the symptoms they list: more attack
iterations do not help, an unbounded attack does not win, a black-box attack
beats the white-box one, and the input gradients vanish.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from numbers import Real

import torch
import torch.nn.functional as F

from .._utils import random_source
from .._validation import Interval, check_bounds, check_in_bounds, check_param
from ..attacks import PGD, AutoAttack, Square
from ..attacks._base import Attack, _as_tensors, eval_mode
from ._accuracy import encode_for, evaluation_copy, evaluation_seed, resolve_estimator, robust_mask

CHECKS = ("steps", "large_epsilon", "blackbox", "gradients")


class RobustnessWarning(UserWarning):
    """A robustness evaluation shows a symptom of gradient masking.

    Issued by :meth:`GradientMaskingReport.warn` for each failed sanity check
    of :func:`check_gradient_masking`. The reported robust accuracy is then
    probably an overestimate.

    Examples
    --------
    >>> import warnings
    >>> from robustfit.metrics import RobustnessWarning
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warnings.warn("input gradients are zero", RobustnessWarning)
    >>> caught[0].category.__name__
    'RobustnessWarning'
    """


@dataclass
class GradientMaskingReport:
    """Results of :func:`check_gradient_masking`.

    Each check has a boolean (``True`` = passed, ``None`` = not run) and the
    figures behind it. The fields are filled by :func:`check_gradient_masking`.

    Parameters
    ----------
    epsilon : float
        The budget checked.
    norm : str
        Norm of the threat model.
    n_samples : int
        Points the checks ran on.
    tolerance : float
        Fraction of points a check may go against before it fails.
    clean_accuracy : float
        Accuracy without attack.
    steps_ok : bool or None
        Robust accuracy did not rise (beyond ``tolerance``) with more PGD
        steps and restarts.
    steps_accuracies : dict of str to float
        Robust accuracy under each PGD configuration, weakest first.
    large_epsilon_ok : bool or None
        At ``large_epsilon`` robust accuracy fell to at most chance level
        (plus ``tolerance``).
    large_epsilon : float or None
        The large budget.
    large_epsilon_accuracy : float or None
        Robust accuracy at ``large_epsilon``.
    chance_level : float or None
        ``1 / n_classes``.
    blackbox_ok : bool or None
        The black-box Square attack broke at most ``tolerance`` of the points
        the white-box attack left robust (``None`` also for inputs that are not
        images, which Square cannot attack).
    whitebox_accuracy : float or None
        Robust accuracy under the white-box attack.
    blackbox_accuracy : float or None
        Robust accuracy after Square also ran on the white-box survivors
        (the worst case of both).
    gradients_ok : bool or None
        At most ``tolerance`` of the points have an exactly zero input
        gradient of the cross-entropy.
    zero_gradient_fraction : float or None
        Fraction of points with a zero input gradient.
    median_gradient_norm : float or None
        Median l2 norm of the input gradients.

    Examples
    --------
    >>> from robustfit.metrics import GradientMaskingReport
    >>> report = GradientMaskingReport(epsilon=0.1, norm="linf", n_samples=10,
    ...                                tolerance=0.02, clean_accuracy=0.9,
    ...                                gradients_ok=False, zero_gradient_fraction=1.0)
    >>> report.passed
    False
    """

    epsilon: float
    norm: str
    n_samples: int
    tolerance: float
    clean_accuracy: float
    steps_ok: bool | None = None
    steps_accuracies: dict = field(default_factory=dict)
    large_epsilon_ok: bool | None = None
    large_epsilon: float | None = None
    large_epsilon_accuracy: float | None = None
    chance_level: float | None = None
    blackbox_ok: bool | None = None
    whitebox_accuracy: float | None = None
    blackbox_accuracy: float | None = None
    gradients_ok: bool | None = None
    zero_gradient_fraction: float | None = None
    median_gradient_norm: float | None = None

    @property
    def passed(self):
        """``True`` when no check that ran failed.

        Examples
        --------
        >>> from robustfit.metrics import GradientMaskingReport
        >>> GradientMaskingReport(0.1, "linf", 10, 0.02, 0.9, gradients_ok=True).passed
        True
        """
        return not self.failures

    @property
    def failures(self):
        """One message per failed check (an empty list when all passed).

        Examples
        --------
        >>> from robustfit.metrics import GradientMaskingReport
        >>> report = GradientMaskingReport(0.1, "linf", 10, 0.02, 0.9, gradients_ok=False,
        ...                                zero_gradient_fraction=1.0)
        >>> report.failures[0][:37]
        'the input gradient of the loss is exa'
        """
        out = []
        if self.steps_ok is False:
            figures = ", ".join(f"{k}: {v:.3f}" for k, v in self.steps_accuracies.items())
            out.append(
                "robust accuracy rises with more attack steps or restarts "
                f"({figures}): the attack does not converge, a sign of gradient "
                "masking or of a randomized model"
            )
        if self.large_epsilon_ok is False:
            out.append(
                f"at the large budget epsilon={self.large_epsilon:g} robust accuracy "
                f"is {self.large_epsilon_accuracy:.3f}, above chance "
                f"({self.chance_level:.3f}): the attack fails where almost any input "
                "is reachable, a sign of gradient masking"
            )
        if self.blackbox_ok is False:
            out.append(
                "the black-box Square attack lowers robust accuracy from "
                f"{self.whitebox_accuracy:.3f} (white-box attack) to "
                f"{self.blackbox_accuracy:.3f}: the white-box attack is too weak "
                "or the model masks its gradients; use a stronger attack (e.g. "
                "AutoAttack), report the combined figure, and try adaptive attacks"
            )
        if self.gradients_ok is False:
            out.append(
                f"the input gradient of the loss is exactly zero on "
                f"{self.zero_gradient_fraction:.0%} of the points: gradient-based "
                "attacks cannot move them (masked gradients, e.g. quantized or "
                "non-differentiable input processing)"
            )
        return out

    def warn(self, stacklevel=2):
        """Issue a :class:`RobustnessWarning` for each failed check.

        Parameters
        ----------
        stacklevel : int, default=2
            Passed to :func:`warnings.warn`.

        Returns
        -------
        report : GradientMaskingReport
            ``self``.

        Examples
        --------
        >>> import warnings
        >>> from robustfit.metrics import GradientMaskingReport
        >>> report = GradientMaskingReport(0.1, "linf", 10, 0.02, 0.9)
        >>> report.warn() is report
        True
        """
        for message in self.failures:
            warnings.warn(f"Robustness evaluation at epsilon={self.epsilon:g} ({self.norm}): "
                          f"{message}.", RobustnessWarning, stacklevel=stacklevel + 1)
        return self

    def __str__(self):
        def mark(ok):
            return {True: "ok", False: "FAILED", None: "not run"}[ok]

        lines = [
            (f"Gradient-masking checks at epsilon={self.epsilon:g} ({self.norm}), "
             f"{self.n_samples} points, clean accuracy {self.clean_accuracy:.3f}"),
            f"  more steps/restarts do not help the model : {mark(self.steps_ok)}"
            + (" (" + ", ".join(f"{k} {v:.3f}" for k, v in self.steps_accuracies.items()) + ")"
               if self.steps_accuracies else ""),
        ]
        lines.append(f"  large epsilon reaches chance level        : {mark(self.large_epsilon_ok)}"
                     + (f" ({self.large_epsilon_accuracy:.3f} at {self.large_epsilon:g}, "
                        f"chance {self.chance_level:.3f})"
                        if self.large_epsilon_accuracy is not None else ""))
        lines.append(f"  black-box does not beat white-box         : {mark(self.blackbox_ok)}"
                     + (f" (white-box {self.whitebox_accuracy:.3f}, with Square "
                        f"{self.blackbox_accuracy:.3f})"
                        if self.whitebox_accuracy is not None else ""))
        lines.append(f"  input gradients are not zero              : {mark(self.gradients_ok)}"
                     + (f" (zero on {self.zero_gradient_fraction:.1%})"
                        if self.zero_gradient_fraction is not None else ""))
        return "\n".join(lines)


def _robust_mask(module, x, y, run, batch_size):
    """Per point: classified correctly both clean and on ``run``'s output
    (sharded over the ranks under torchrun, see :func:`robust_mask`)."""
    return robust_mask(module, x, y, run, batch_size)


def _mean(mask):
    """Fraction of ``True`` in a boolean tensor (0 when empty)."""
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def _default_large_epsilon(epsilon, norm, bounds, x):
    """The budget that reaches every point of the box (``10 * epsilon`` without a box)."""
    if bounds is None:
        return 10.0 * float(epsilon)
    width = bounds[1] - bounds[0]
    if norm == "linf":
        return float(width)
    return float(width * math.sqrt(x[0].numel()))


def _run_of(attack):
    """The trusted run of an Attack (validated first), or a plain callable as is."""
    if isinstance(attack, Attack):
        attack.validate_params()
        return evaluation_copy(attack).perturb
    return attack


def _masking_inputs(estimator, X, y, bounds, max_samples):
    """The module and the (first ``max_samples``) inputs and class indices as tensors, checked in the box."""
    module, X, clf = resolve_estimator(estimator, X)
    y_idx = encode_for(clf, y) if clf is not None else y
    x, y_t = _as_tensors(module, X, y_idx)
    if max_samples is not None:
        x, y_t = x[:max_samples], y_t[:max_samples]
    check_in_bounds(x, bounds)
    return module, x, y_t, clf


def _steps_check(report, module, x, y, epsilon, *, steps, restarts, common, batch_size):
    """Fill the ``"steps"`` check: robust accuracy must not rise with more PGD steps, then restarts."""
    configs = [
        (f"PGD-{steps}", PGD(epsilon=epsilon, steps=steps, **common)),
        (f"PGD-{5 * steps}", PGD(epsilon=epsilon, steps=5 * steps, **common)),
        (f"PGD-{5 * steps}x{restarts}", PGD(epsilon=epsilon, steps=5 * steps, restarts=restarts, **common)),
    ]
    accs = [_mean(_robust_mask(module, x, y, _run_of(a), batch_size)) for _, a in configs]
    report.steps_accuracies = {name: acc for (name, _), acc in zip(configs, accs)}
    report.steps_ok = all(
        accs[j] <= accs[i] + report.tolerance for i in range(len(accs)) for j in range(i + 1, len(accs))
    )


def _large_epsilon_check(report, module, x, y, large, n_classes, *, steps, common, batch_size):
    """Fill the ``"large_epsilon"`` check: PGD at budget ``large`` must reach chance level."""
    pgd = PGD(epsilon=large, steps=5 * steps, **common)
    report.large_epsilon = large
    report.large_epsilon_accuracy = _mean(_robust_mask(module, x, y, _run_of(pgd), batch_size))
    report.chance_level = 1.0 / n_classes
    report.large_epsilon_ok = report.large_epsilon_accuracy <= report.chance_level + report.tolerance


def _blackbox_check(report, module, x, y, attack, *, epsilon, n_queries, common, batch_size):
    """Fill the ``"blackbox"`` check: Square must not break the white-box attack's survivors."""
    robust = _robust_mask(module, x, y, _run_of(attack), batch_size)
    report.whitebox_accuracy = _mean(robust)
    idx = robust.nonzero().flatten()
    report.blackbox_accuracy = report.whitebox_accuracy
    if x.dim() == 4 and idx.numel():
        square = Square(epsilon=epsilon, n_queries=n_queries, **common)
        survived = _robust_mask(module, x[idx], y[idx], _run_of(square), batch_size)
        report.blackbox_accuracy = float(survived.sum()) / len(x)
    if x.dim() == 4:  # Square needs images (n, C, H, W); else not run
        report.blackbox_ok = report.whitebox_accuracy - report.blackbox_accuracy <= report.tolerance


def _gradients_check(report, module, x, y, batch_size):
    """Fill the ``"gradients"`` check: the input gradient of the cross-entropy must not vanish."""
    norms = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(module(xb), y[start:start + batch_size], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
        norms.append(grad.reshape(len(xb), -1).norm(dim=1))
    norms = torch.cat(norms)
    report.zero_gradient_fraction = _mean(norms == 0)
    report.median_gradient_norm = float(norms.median()) if norms.numel() else 0.0
    report.gradients_ok = report.zero_gradient_fraction <= report.tolerance


def check_gradient_masking(
    estimator, X, y, epsilon, norm="linf", *, bounds=(0.0, 1.0), attack=None,
    steps=10, restarts=5, large_epsilon=None, n_queries=1000, tolerance=0.02,
    checks=CHECKS, max_samples=None, batch_size=256, random_state=None,
):
    """Look for the symptoms of gradient masking in a robustness evaluation.

    Four checks (Athalye et al. 2018; Carlini et al. 2019, "On evaluating
    adversarial robustness"; Croce & Hein 2020), each allowed to go against
    its expectation on a fraction ``tolerance`` of the points:

    ``"steps"``
        Robust accuracy does not rise when PGD gets more steps (``steps``,
        then ``5 * steps``) and then restarts (``5 * steps`` x ``restarts``).
    ``"large_epsilon"``
        At ``large_epsilon``, by default the whole input box, robust accuracy
        (PGD, ``5 * steps`` steps) falls to chance level ``1 / n_classes``.
    ``"blackbox"``
        The black-box :class:`~robustfit.attacks.Square` attack
        (``n_queries`` queries) breaks no more than ``tolerance`` of the
        points that the white-box ``attack`` left robust.
    ``"gradients"``
        The input gradient of the cross-entropy is not exactly zero on more
        than ``tolerance`` of the points.

    Parameters
    ----------
    estimator : AdversarialClassifier, Pipeline or torch.nn.Module
        A fitted classifier, a pipeline ending in one, or a module returning
        logits (then ``y`` holds class indices).
    X : array-like or torch.Tensor
        Inputs inside ``bounds``.
    y : array-like
        Labels.
    epsilon : float
        The budget of the evaluation being checked.
    norm : {"linf", "l2"}, default="linf"
        Norm of the threat model.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box; ``None`` for unbounded features.
    attack : robustfit.attacks.Attack, default=None
        The white-box attack of the ``"blackbox"`` check, i.e. the evaluation
        being checked. ``None`` uses
        ``AutoAttack(epsilon, norm, bounds=bounds)`` (APGD-CE and APGD-T).
    steps : int, default=10
        PGD steps of the weakest configuration of the ``"steps"`` check.
    restarts : int, default=5
        Restarts of the strongest configuration.
    large_epsilon : float, default=None
        Budget of the ``"large_epsilon"`` check. ``None``: the box width for
        l_inf, the box diagonal for l_2 (every point of the box is then
        reachable), ``10 * epsilon`` without bounds.
    n_queries : int, default=1000
        Queries of the Square attack.
    tolerance : float, default=0.02
        Fraction of points a check may go against before it fails.
    checks : sequence of str, default=("steps", "large_epsilon", "blackbox", "gradients")
        The checks to run; the others are reported as ``None``.
    max_samples : int, default=None
        Run on the first ``max_samples`` points only.
    batch_size : int, default=256
        Samples attacked at once.
    random_state : int, numpy RandomState or None, default=None
        Seeds the attacks' random draws through a source private to this call
        (see :func:`~robustfit.metrics.robust_accuracy`); ``None`` uses the
        estimator's ``random_state``. ``attack`` is never changed (a copy runs).

    Returns
    -------
    report : GradientMaskingReport
        Booleans per check and the figures; ``report.passed``,
        ``report.failures`` and ``report.warn()`` (one
        :class:`RobustnessWarning` per failed check).

    Examples
    --------
    >>> import torch
    >>> from robustfit.metrics import check_gradient_masking
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> X, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    >>> report = check_gradient_masking(net, X, y, epsilon=0.1, checks=["gradients"])
    >>> report.gradients_ok
    True
    """
    unknown = [c for c in checks if c not in CHECKS]
    if isinstance(checks, str) or unknown:
        raise ValueError(f"checks must be a sequence of names among {CHECKS}, got {checks!r}")
    check_param(tolerance, "tolerance", [Interval(Real, 0, 1, closed="left")], "check_gradient_masking")
    bounds = check_bounds(bounds)
    module, x, y_t, clf = _masking_inputs(estimator, X, y, bounds, max_samples)
    if attack is None:
        attack = AutoAttack(epsilon=epsilon, norm=norm, bounds=bounds)
    if isinstance(attack, Attack):
        attack.validate_params()
    common = {"norm": norm, "bounds": bounds}
    with eval_mode(module), random_source(evaluation_seed(random_state, clf)):
        with torch.no_grad():
            logits = module(x)
        report = GradientMaskingReport(
            epsilon=float(epsilon), norm=norm, n_samples=len(x), tolerance=float(tolerance),
            clean_accuracy=_mean(logits.argmax(1) == y_t),
        )
        if "steps" in checks:
            _steps_check(report, module, x, y_t, epsilon, steps=steps, restarts=restarts, common=common,
                         batch_size=batch_size)
        if "large_epsilon" in checks:
            large = (_default_large_epsilon(epsilon, norm, bounds, x)
                     if large_epsilon is None else float(large_epsilon))
            _large_epsilon_check(report, module, x, y_t, large, logits.shape[1], steps=steps, common=common,
                                 batch_size=batch_size)
        if "blackbox" in checks:
            _blackbox_check(report, module, x, y_t, attack, epsilon=epsilon, n_queries=n_queries, common=common,
                            batch_size=batch_size)
        if "gradients" in checks:
            _gradients_check(report, module, x, y_t, batch_size)
    return report
