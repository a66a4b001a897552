"""robustfit: adversarially robust neural networks through the scikit-learn API."""

from .classifier import AdversarialClassifier

__version__ = "0.1.0"

__all__ = ["AdversarialClassifier", "__version__"]
