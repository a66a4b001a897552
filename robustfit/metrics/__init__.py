"""Robustness metrics and scikit-learn scorers."""

from ._arc import ARCResult, ProxyScorer, arc_score, make_arc_scorer, make_wasserstein_scorer
from ._curves import RobustnessCurve, plot_robustness_curve, robustness_curve
from ._robust import RobustScorer, make_robust_scorer, robust_accuracy
from ._sanity import GradientMaskingReport, RobustnessWarning, check_gradient_masking
from ._transfer import (
    AverageRobustness,
    TransferBound,
    TransferBoundResult,
    average_robustness,
    robustness_transfer_bound,
)
from ._wasserstein import WassersteinResult, conditional_wasserstein_distance

__all__ = [
    "ARCResult",
    "AverageRobustness",
    "GradientMaskingReport",
    "ProxyScorer",
    "RobustScorer",
    "RobustnessCurve",
    "RobustnessWarning",
    "TransferBound",
    "TransferBoundResult",
    "WassersteinResult",
    "arc_score",
    "average_robustness",
    "check_gradient_masking",
    "conditional_wasserstein_distance",
    "make_arc_scorer",
    "make_robust_scorer",
    "make_wasserstein_scorer",
    "plot_robustness_curve",
    "robust_accuracy",
    "robustness_curve",
    "robustness_transfer_bound",
]
