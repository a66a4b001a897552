"""Robust accuracy, its scorers and the gradient-masking checks.

A private package below :mod:`robustfit.classifier`, which scores itself with
these functions (``robust_score``, per-epoch robust validation). Users import
them from :mod:`robustfit.metrics`, which re-exports every public name here.
"""

from ._accuracy import (
    RobustScorer,
    encode_for,
    make_robust_scorer,
    resolve_estimator,
    robust_accuracy,
)
from ._masking import GradientMaskingReport, RobustnessWarning, check_gradient_masking

__all__ = [
    "GradientMaskingReport",
    "RobustScorer",
    "RobustnessWarning",
    "check_gradient_masking",
    "encode_for",
    "make_robust_scorer",
    "resolve_estimator",
    "robust_accuracy",
]
