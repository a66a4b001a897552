"""Robustness metrics and scikit-learn scorers."""

from ._curves import RobustnessCurve, plot_robustness_curve, robustness_curve
from ._robust import RobustScorer, make_robust_scorer, robust_accuracy
from ._sanity import GradientMaskingReport, RobustnessWarning, check_gradient_masking
from ._wasserstein import WassersteinResult, conditional_wasserstein_distance

__all__ = [
    "GradientMaskingReport",
    "RobustScorer",
    "RobustnessCurve",
    "RobustnessWarning",
    "WassersteinResult",
    "check_gradient_masking",
    "conditional_wasserstein_distance",
    "make_robust_scorer",
    "plot_robustness_curve",
    "robust_accuracy",
    "robustness_curve",
]
