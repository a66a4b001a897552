"""Robustness metrics and scikit-learn scorers.

Robust accuracy, its scorers and the gradient-masking checks are implemented
in :mod:`robustfit._evaluation` (below the classifier, which scores itself
with them) and re-exported here; the conditional Wasserstein distance, the
transfer bound, ARC, sample quality and robustness curves live in this package.
"""

from .._evaluation import (
    GradientMaskingReport,
    RobustnessWarning,
    RobustScorer,
    check_gradient_masking,
    make_robust_scorer,
    robust_accuracy,
)
from ._arc import (
    ARCResult,
    ProxyScorer,
    arc_sample_scores,
    arc_score,
    make_arc_scorer,
    make_wasserstein_scorer,
)
from ._curves import RobustnessCurve, plot_robustness_curve, robustness_curve
from ._quality import SampleQuality, frechet_distance, sample_quality
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
    "SampleQuality",
    "TransferBound",
    "TransferBoundResult",
    "WassersteinResult",
    "arc_sample_scores",
    "arc_score",
    "average_robustness",
    "check_gradient_masking",
    "conditional_wasserstein_distance",
    "frechet_distance",
    "make_arc_scorer",
    "make_robust_scorer",
    "make_wasserstein_scorer",
    "plot_robustness_curve",
    "robust_accuracy",
    "robustness_curve",
    "robustness_transfer_bound",
    "sample_quality",
]
