"""Proxy distributions: generative models fitted on the training data whose
samples serve as additional adversarial-training data (Sehwag et al., ICLR 2022).

Every proxy is a scikit-learn estimator with ``fit(X, y)``, ``sample(n,
random_state)``, ``fit_resample(X, y)`` and ``score(X, y)`` (minus the
conditional Wasserstein distance to held-out real data); pass one as
``AdversarialClassifier(proxy_data=...)``.
"""

from ._array import ArrayProxy
from ._base import ProxyDistribution
from ._diffusion import DiffusionProxy
from ._gmm import GaussianMixtureProxy
from ._pseudo import PseudoLabeledProxy
from ._select import SelectedProxy

__all__ = [
    "ArrayProxy",
    "DiffusionProxy",
    "GaussianMixtureProxy",
    "ProxyDistribution",
    "PseudoLabeledProxy",
    "SelectedProxy",
]
