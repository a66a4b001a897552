"""The ProxyDistribution base: fit on real data, sample synthetic data."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state

from .._validation import (
    Interval,
    Options,
    ParamsValidationMixin,
    check_array,
    check_bounds,
    check_in_bounds,
    check_labels,
    check_param,
)
from ..metrics import conditional_wasserstein_distance

_CLASS_DISTRIBUTIONS = ("balanced", "empirical")

#: samples per class that :meth:`ProxyDistribution.score` compares
SCORE_SAMPLES_PER_CLASS = 100


def seeded_clone(estimator, random_state, salt):
    """``clone(estimator)``, its ``random_state`` seeded from ``random_state``
    when it has that parameter and it is None.

    A proxy that fits other estimators (a generator, a teacher) passes its
    own ``random_state`` and a different ``salt`` for each, so that its seed
    makes their fits repeatable too. An integer seed is mixed with ``salt``
    (the proxy's own draws are not consumed); a ``RandomState`` gives a draw;
    ``None`` leaves the clone unseeded.
    """
    est = clone(estimator)
    if random_state is None or "random_state" not in est.get_params(deep=False) \
            or est.get_params(deep=False)["random_state"] is not None:
        return est
    if isinstance(random_state, Integral):
        seed = int(np.random.SeedSequence([int(random_state), salt]).generate_state(1)[0] % 2**31)
    else:
        seed = int(check_random_state(random_state).randint(2**31))
    return est.set_params(random_state=seed)


def class_counts(n, priors, rng):
    """Split ``n`` samples over classes with probabilities ``priors``.

    Largest-remainder rounding; ties among the remainders are broken at random
    with ``rng`` so that no class is favoured systematically.
    """
    priors = np.asarray(priors, dtype=float)
    exact = n * priors / priors.sum()
    counts = np.floor(exact).astype(int)
    rest = n - counts.sum()
    if rest:
        order = np.lexsort((rng.random_sample(len(priors)), -(exact - counts)))
        counts[order[:rest]] += 1
    return counts


class ProxyDistribution(ParamsValidationMixin, BaseEstimator):
    """Base class of the proxy distributions (Sehwag et al., ICLR 2022).

    A proxy distribution is a generative model fitted on the real training data
    whose samples serve as additional training data. Subclasses implement
    ``_fit(X, y_idx)`` (labels are class indices into ``classes_``) and
    ``_generate(counts, rng) -> X``, which draws ``counts[k]`` samples of class
    ``k`` in that order; this base class validates data, chooses how many
    samples of each class to draw, and provides :meth:`sample`,
    :meth:`fit_resample` and :meth:`score`.

    How many samples of each class :meth:`sample` draws is set by the
    ``class_distribution`` parameter of every subclass: ``"balanced"`` splits
    ``n`` evenly over the classes (the remainder goes to classes chosen at
    random), ``"empirical"`` follows the class frequencies of the data given to
    :meth:`fit`.

    Attributes
    ----------
    classes_ : numpy.ndarray
        The class labels seen in :meth:`fit`.
    class_prior_ : numpy.ndarray
        Their frequencies in the training data.
    input_shape_ : tuple of int
        Shape of one sample.
    """

    #: Constraints of the parameters every proxy shares; subclasses extend the table.
    _parameter_constraints = {
        "class_distribution": [Options(_CLASS_DISTRIBUTIONS)],
        "n_samples": [None, Interval(Integral, 1, None)],
        "bounds": ["bounds"],
        "random_state": ["random_state"],
    }

    # ------------------------------------------------------------- hooks
    def _fit(self, X, y):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement _fit(X, y_idx)")

    def _generate(self, counts, rng):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement _generate(counts, rng)")

    # ------------------------------------------------------------- helpers
    def _check_fitted(self):
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' first."
            )

    def _priors(self):
        if getattr(self, "class_distribution", "balanced") == "empirical":
            return self.class_prior_
        return np.full(len(self.classes_), 1.0 / len(self.classes_))

    def _clip(self, X):
        bounds = check_bounds(getattr(self, "bounds", None))
        if bounds is not None:
            np.clip(X, bounds[0], bounds[1], out=X)
        return X

    # ------------------------------------------------------------- API
    def fit(self, X, y):
        """Fit the generative model on real data.

        Parameters
        ----------
        X : array-like of shape (n, d) or (n, C, H, W)
            Real samples, inside ``bounds``.
        y : array-like of shape (n,)
            Their labels.

        Returns
        -------
        self : ProxyDistribution
        """
        self.validate_params()
        bounds = check_bounds(getattr(self, "bounds", None))
        X = check_array(X, allow_tensor=False)
        y = check_labels(y, len(X))
        check_in_bounds(X, bounds, owner=f"{type(self).__name__}'s")
        self.classes_, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
        self.class_prior_ = counts / counts.sum()
        self.input_shape_ = tuple(X.shape[1:])
        self._fit(X, y_idx)
        return self

    def sample(self, n, random_state=None):
        """Draw ``n`` labelled synthetic samples.

        Parameters
        ----------
        n : int
            Number of samples.
        random_state : int, RandomState or None, default=None
            Seed of the draw.

        Returns
        -------
        X : numpy.ndarray of shape ``(n, *input_shape_)``, float32
            Samples inside ``bounds``, in random order.
        y : numpy.ndarray of shape (n,)
            Their labels, from ``classes_``.
        """
        self._check_fitted()
        check_param(n, "n", [Interval(Integral, 1, None)], f"{type(self).__name__}.sample")
        rng = check_random_state(random_state)
        counts = class_counts(int(n), self._priors(), rng)
        X = np.asarray(self._generate(counts, rng), dtype=np.float32)
        y = np.repeat(np.arange(len(counts)), counts)
        perm = rng.permutation(len(y))
        return self._clip(X[perm]), self.classes_[y[perm]]

    def sample_unlabeled(self, n, random_state=None):
        """Draw ``n`` samples without their labels.

        The input of :class:`PseudoLabeledProxy` when it relabels samples.

        Parameters
        ----------
        n : int
            Number of samples.
        random_state : int, RandomState or None, default=None
            Seed of the draw.

        Returns
        -------
        X : numpy.ndarray of shape ``(n, *input_shape_)``, float32
        """
        return self.sample(n, random_state=random_state)[0]

    def fit_resample(self, X, y):
        """Fit on ``(X, y)`` and return it with synthetic samples appended.

        The interface of imbalanced-learn's samplers, so a proxy can stand in an
        ``imblearn.pipeline.Pipeline``. Unlike imbalanced-learn's
        ``sampling_strategy``, the number of synthetic samples is the
        ``n_samples`` parameter (``None``: as many as real ones), and their
        classes follow ``class_distribution``.

        Parameters
        ----------
        X : array-like of shape (n, ...)
            Real samples.
        y : array-like of shape (n,)
            Their labels.

        Returns
        -------
        X_resampled : numpy.ndarray of shape (n + n_samples, ...)
            The real samples first, then the synthetic ones.
        y_resampled : numpy.ndarray of shape (n + n_samples,)
        """
        self.fit(X, y)
        X = check_array(X, allow_tensor=False)
        n = self.n_samples if getattr(self, "n_samples", None) is not None else len(X)
        Xs, ys = self.sample(n, random_state=getattr(self, "random_state", None))
        y = np.asarray(y)
        return np.concatenate([X, Xs]), np.concatenate([y, ys.astype(y.dtype, copy=False)])

    def score(self, X, y):
        """Minus the conditional Wasserstein distance from held-out real data.

        Draws samples in the class proportions of ``y`` (at most
        ``SCORE_SAMPLES_PER_CLASS`` = 100 per class, seed 0) and compares them
        with ``(X, y)`` (subsampled to as many per class) by
        :func:`robustfit.metrics.conditional_wasserstein_distance` (exact
        optimal transport, l2 ground metric), the quantity that bounds how much
        robustness transfers from the proxy to the real distribution (Sehwag
        et al. 2022, theorem 1). Higher is better, so ``GridSearchCV`` on a
        proxy picks the generator closest to the real data.

        Parameters
        ----------
        X : array-like of shape (n, ...)
            Held-out real samples.
        y : array-like of shape (n,)
            Their labels.

        Returns
        -------
        score : float
            ``-distance``.
        """
        self._check_fitted()
        X = check_array(X, allow_tensor=False)
        y = check_labels(y, len(X))
        labels, counts = np.unique(y, return_counts=True)
        unknown = np.setdiff1d(labels, self.classes_)
        if len(unknown):
            raise ValueError(f"y has labels the proxy was not fitted on: {unknown.tolist()}")
        per_class = np.minimum(counts, SCORE_SAMPLES_PER_CLASS)
        rng = check_random_state(0)
        idx = np.searchsorted(self.classes_, labels)
        full = np.zeros(len(self.classes_), dtype=int)
        full[idx] = per_class
        Xs = np.asarray(self._generate(full, rng), dtype=np.float32)
        ys = self.classes_[np.repeat(np.arange(len(full)), full)]
        result = conditional_wasserstein_distance(
            X.reshape(len(X), -1), y, self._clip(Xs).reshape(len(Xs), -1), ys,
            metric="l2", method="exact", max_samples_per_class=SCORE_SAMPLES_PER_CLASS,
            random_state=0,
        )
        return -float(result.distance)
