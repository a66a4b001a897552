"""Robustness metrics and scikit-learn scorers."""

from ._robust import RobustScorer, make_robust_scorer, robust_accuracy

__all__ = ["RobustScorer", "make_robust_scorer", "robust_accuracy"]
