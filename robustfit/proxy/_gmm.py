"""Per-class Gaussian mixtures, optionally in a PCA space: the cheap proxy."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from .._validation import Interval, Options
from ._base import ProxyDistribution

_COVARIANCES = ("full", "tied", "diag", "spherical")


class GaussianMixtureProxy(ProxyDistribution):
    """One Gaussian mixture per class, fitted in a PCA space of the data.

    The cheap baseline of the proxy distributions: a PCA with
    ``pca_components`` components is fitted on the training data of all
    classes, then a :class:`sklearn.mixture.GaussianMixture` with
    ``mixture_components`` components on each class's projections. Samples are
    drawn in the PCA space, mapped back, and clipped to ``bounds``. PCA helps
    with images: a full covariance over 784 pixels is both slow and poorly
    estimated from a few hundred samples per class.

    Parameters
    ----------
    mixture_components : int, default=10
        Components per class (reduced to the class's sample count if larger).
    pca_components : int, float or None, default=50
        Components of the shared PCA (an int, or a float in (0, 1) for the
        fraction of variance kept); ``None`` fits the mixtures on the raw
        features.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        Covariance of each component.
    reg_covar : float, default=1e-4
        Added to the covariances' diagonals.
    class_distribution : {"balanced", "empirical"}, default="balanced"
        Classes of the samples: evenly split, or in the training frequencies.
    n_samples : int or None, default=None
        Synthetic samples added by :meth:`fit_resample` (``None``: as many as
        real ones).
    bounds : (float, float) or None, default=(0.0, 1.0)
        Samples are clipped to this box.
    random_state : int, RandomState or None, default=None
        Seeds the PCA and the mixtures' initialization.

    Attributes
    ----------
    pca_ : sklearn.decomposition.PCA or None
        The fitted PCA.
    mixtures_ : list of sklearn.mixture.GaussianMixture
        One per class, in the order of ``classes_``.
    classes_, class_prior_, input_shape_
        See :class:`ProxyDistribution`.

    Examples
    --------
    >>> from robustfit.datasets import load_digits_images
    >>> from robustfit.proxy import GaussianMixtureProxy
    >>> X, y = load_digits_images()
    >>> proxy = GaussianMixtureProxy(pca_components=20, random_state=0).fit(X, y)
    >>> Xs, ys = proxy.sample(30, random_state=0)
    >>> Xs.shape, float(Xs.min()) >= 0.0
    ((30, 1, 8, 8), True)
    """

    def __init__(
        self,
        *,
        mixture_components=10,
        pca_components=50,
        covariance_type="full",
        reg_covar=1e-4,
        class_distribution="balanced",
        n_samples=None,
        bounds=(0.0, 1.0),
        random_state=None,
    ):
        self.mixture_components = mixture_components
        self.pca_components = pca_components
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.class_distribution = class_distribution
        self.n_samples = n_samples
        self.bounds = bounds
        self.random_state = random_state

    _parameter_constraints = {
        **ProxyDistribution._parameter_constraints,
        "mixture_components": [Interval(Integral, 1, None)],
        "pca_components": [None, Interval(Integral, 1, None), Interval(Real, 0, 1, closed="neither")],
        "covariance_type": [Options(_COVARIANCES)],
        "reg_covar": [Interval(Real, 0, None)],
    }

    def _fit(self, X, y):
        k = self.mixture_components
        flat = X.reshape(len(X), -1).astype(np.float64)
        self.pca_ = None
        n_comp = self.pca_components
        if n_comp is not None:
            most = min(flat.shape)
            if isinstance(n_comp, Integral) and n_comp > most:
                raise ValueError(
                    f"GaussianMixtureProxy: pca_components={n_comp} is more than the "
                    f"{flat.shape[0]} training samples of {flat.shape[1]} features allow "
                    f"(at most {most}); lower pca_components, pass a fraction of variance such "
                    "as 0.95, or None for no PCA"
                )
            self.pca_ = PCA(n_components=n_comp, random_state=self.random_state)
            flat = self.pca_.fit_transform(flat)
        self.mixtures_ = []
        for c in range(len(self.classes_)):
            Z = flat[y == c]
            gm = GaussianMixture(
                n_components=min(k, len(Z)), covariance_type=self.covariance_type,
                reg_covar=self.reg_covar, random_state=self.random_state,
            )
            try:
                self.mixtures_.append(gm.fit(Z))
            except ValueError as exc:
                raise ValueError(
                    f"GaussianMixtureProxy: the mixture of class {self.classes_[c:c + 1].tolist()[0]!r} "
                    f"({len(Z)} samples, {Z.shape[1]} dimensions after PCA, "
                    f"mixture_components={k}, covariance_type={self.covariance_type!r}) "
                    f"could not be fitted: {str(exc).rstrip('.')}. Give the class more samples, or lower "
                    "mixture_components or pca_components"
                ) from None
        return self

    def _generate(self, counts, rng):
        parts = []
        for gm, m in zip(self.mixtures_, counts):
            if m == 0:
                continue
            # GaussianMixture.sample draws from its own random_state: seed it per call
            gm.random_state = int(rng.randint(2**31))
            Z, _ = gm.sample(int(m))
            parts.append(Z[rng.permutation(len(Z))])  # sample() groups by component
        if not parts:
            return np.empty((0, *self.input_shape_), dtype=np.float32)
        Z = np.concatenate(parts)
        if self.pca_ is not None:
            Z = self.pca_.inverse_transform(Z)
        return self._clip(Z.astype(np.float32).reshape(len(Z), *self.input_shape_))
