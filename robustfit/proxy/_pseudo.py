"""Pseudo-labelling and confidence filtering of generated samples by a teacher."""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np

from .._utils import clone_keeping_fitted
from .._utils import is_fitted as _is_fitted
from .._validation import HasMethods, Interval, check_array
from ._base import ProxyDistribution, seeded_clone


def top_per_group(scores, fraction, groups):
    """Indices of the ``ceil(fraction * n_g)`` highest ``scores`` of every group
    (ties: the earlier sample), grouped in the order of the sorted group values."""
    keep = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        k = int(np.ceil(fraction * len(idx) - 1e-9))
        keep.append(idx[np.argsort(-scores[idx], kind="stable")[:k]])
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.intp)


class PseudoLabeledProxy(ProxyDistribution):
    """Label a generator's samples with a teacher classifier and keep the most
    confident ones per class.

    Two uses, both from the literature on proxy data for adversarial training:

    * **Pseudo-labelling** of unconditional samples (``relabel=True``, the
      default): each sample gets the teacher's most probable class (Sehwag et
      al. 2022 label their unconditional DDPM samples this way). The generator
      can be unlabeled, e.g. ``ArrayProxy(X_generated)``.
    * **Confidence filtering** (Wang et al., ICML 2023): within each class,
      only the ``keep_fraction`` of the samples with the highest teacher
      probability *of that class* is kept. With ``relabel=False`` the
      generator's own labels are kept (a class-conditional generator) and the
      filter scores each sample by the teacher's probability of its
      conditioning label, which removes samples that do not look like their
      class.

    To draw ``n`` samples, :meth:`sample` asks the generator for about
    ``n / keep_fraction`` candidates (more rounds, doubling, while a class is
    short, at most ``max_rounds``), labels them, and keeps per class the top
    ``n_c`` by confidence out of at least ``n_c / keep_fraction`` candidates of
    that class, so the kept fraction never exceeds ``keep_fraction``.
    :meth:`select` applies the same labelling and filter to given samples.

    The generator is cloned and fitted in :meth:`fit`. The teacher is used as
    given when it is already fitted (any scikit-learn classifier with
    ``predict_proba``, e.g. a fitted :class:`~robustfit.AdversarialClassifier`);
    an unfitted teacher is cloned and fitted on the same training data, so
    inside cross-validation it too sees the training fold only.

    Parameters
    ----------
    generator : ProxyDistribution
        The source of candidates (fitted on the training data in :meth:`fit`).
    teacher : classifier
        Has ``predict_proba`` and ``classes_`` covering the training classes.
    keep_fraction : float, default=1.0
        Fraction of each class's candidates kept, in (0, 1]; 1 only labels.
    relabel : bool, default=True
        Label samples by the teacher's argmax (True) or keep the generator's
        labels and only filter (False).
    max_rounds : int, default=8
        Candidate rounds before giving up on a short class (a warning is issued
        and that class's kept samples are repeated).
    class_distribution : {"balanced", "empirical"}, default="balanced"
        Classes of the samples drawn: evenly split, or in the training
        frequencies.
    n_samples : int or None, default=None
        Synthetic samples added by :meth:`fit_resample` (``None``: as many as
        real ones).
    bounds : (float, float) or None, default=(0.0, 1.0)
        Range of the data.
    random_state : int or None, default=None
        Seed of :meth:`fit_resample`'s draw, and of the generator's and the
        teacher's fits when their own ``random_state`` is None.

    Attributes
    ----------
    generator_ : ProxyDistribution
        The fitted generator.
    teacher_ : classifier
        The teacher used (the given one if it was fitted, else a fitted clone).
        :func:`sklearn.base.clone` keeps a fitted teacher as it is, so a
        teacher fitted once serves every ``fit`` of an
        :class:`~robustfit.AdversarialClassifier` and every cross-validation
        fold; note that a teacher fitted on all the data has seen the
        validation folds (only its labels of synthetic samples reach training).
    kept_fraction_ : float
        Fraction of candidates kept in the last :meth:`sample` call.
    classes_, class_prior_, input_shape_
        See :class:`ProxyDistribution`.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from robustfit.datasets import load_digits_images
    >>> from robustfit.proxy import GaussianMixtureProxy, PseudoLabeledProxy
    >>> X, y = load_digits_images()
    >>> teacher = LogisticRegression(max_iter=500).fit(X.reshape(len(X), -1), y)
    >>> proxy = PseudoLabeledProxy(GaussianMixtureProxy(pca_components=20, random_state=0),
    ...                            teacher, keep_fraction=0.5, relabel=False)
    >>> Xs, ys = proxy.fit(X, y).sample(100, random_state=0)
    >>> Xs.shape, proxy.kept_fraction_ <= 0.5
    ((100, 1, 8, 8), True)
    """

    def __sklearn_clone__(self):
        # a fitted teacher is kept by reference: clone() would replace it by an
        # unfitted copy, and AdversarialClassifier clones its proxy in every fit
        return clone_keeping_fitted(self, ("teacher",))

    def __init__(self, generator, teacher, *, keep_fraction=1.0, relabel=True, max_rounds=8,
                 class_distribution="balanced", n_samples=None, bounds=(0.0, 1.0),
                 random_state=None):
        self.generator = generator
        self.teacher = teacher
        self.keep_fraction = keep_fraction
        self.relabel = relabel
        self.max_rounds = max_rounds
        self.class_distribution = class_distribution
        self.n_samples = n_samples
        self.bounds = bounds
        self.random_state = random_state

    _parameter_constraints = {
        **ProxyDistribution._parameter_constraints,
        "generator": [HasMethods(("fit", "sample"))],
        "teacher": [HasMethods(("predict_proba",))],
        "keep_fraction": [Interval(Real, 0, 1, closed="right")],
        "relabel": ["boolean"],
        "max_rounds": [Interval(Integral, 1, None)],
    }

    def _fit(self, X, y):
        labels = self.classes_[y]
        self.generator_ = seeded_clone(self.generator, self.random_state, 1).fit(X, labels)
        if _is_fitted(self.teacher):
            self.teacher_ = self.teacher
        else:
            self.teacher_ = seeded_clone(self.teacher, self.random_state, 2).fit(
                self._teacher_input(X), labels)
        t_classes = np.asarray(self.teacher_.classes_)
        missing = np.setdiff1d(self.classes_, t_classes)
        if len(missing):
            raise ValueError(f"the teacher does not know the classes {missing.tolist()}")
        self.columns_ = np.searchsorted(t_classes, self.classes_)
        return self

    def _teacher_input(self, X):
        """Images for robustfit classifiers, flat features for other estimators."""
        if X.ndim == 4 and not hasattr(self.teacher, "module"):
            return X.reshape(len(X), -1)
        return X

    def _scores(self, X, y=None):
        """Class indices and the teacher's probability of that class."""
        P = np.asarray(self.teacher_.predict_proba(self._teacher_input(X)))[:, self.columns_]
        if self.relabel or y is None:
            labels = P.argmax(axis=1)
        else:
            labels = np.searchsorted(self.classes_, np.asarray(y))
        return labels, P[np.arange(len(P)), labels]

    def select(self, X, y=None):
        """Label ``X`` and keep the top ``keep_fraction`` of each class.

        Parameters
        ----------
        X : array-like of shape (n, ...)
            Candidate samples.
        y : array-like of shape (n,) or None, default=None
            Their labels, used (and only filtered) when ``relabel=False``.

        Returns
        -------
        X_kept : numpy.ndarray
            The kept samples, grouped by class.
        y_kept : numpy.ndarray
            Their labels (from ``classes_``).
        """
        self._check_fitted()
        self.validate_params()
        X = check_array(X, allow_tensor=False)
        labels, conf = self._scores(X, y)
        keep = top_per_group(conf, self.keep_fraction, labels)
        return X[keep], self.classes_[labels[keep]]

    def _generate(self, counts, rng):
        self.validate_params()
        counts = np.asarray(counts)
        need = np.ceil(counts / self.keep_fraction - 1e-9).astype(int)
        Xs, labels, conf = [], [], []
        m = max(int(need.sum()), 1)
        have = np.zeros(len(counts), dtype=int)
        for _ in range(self.max_rounds):
            if self.relabel:
                Xc, yc = self.generator_.sample_unlabeled(m, random_state=rng), None
            else:
                Xc, yc = self.generator_.sample(m, random_state=rng)
            lab, cf = self._scores(Xc, yc)
            Xs.append(Xc)
            labels.append(lab)
            conf.append(cf)
            have += np.bincount(lab, minlength=len(counts))
            if (have >= need).all():
                break
            m *= 2
        X = np.concatenate(Xs)
        labels, conf = np.concatenate(labels), np.concatenate(conf)
        out, n_cand = [], 0
        for c, n_c in enumerate(counts):
            if n_c == 0:
                continue
            idx = np.flatnonzero(labels == c)
            n_cand += len(idx)
            if len(idx) == 0:
                raise ValueError(
                    f"the teacher labelled none of {len(X)} generated samples as class "
                    f"{self.classes_[c]!r}"
                )
            if len(idx) < need[c]:
                warnings.warn(
                    f"class {self.classes_[c]!r}: only {len(idx)} candidates after "
                    f"{self.max_rounds} rounds, {need[c]} needed; its top "
                    f"{self.keep_fraction:g} is repeated", stacklevel=3)
                k = int(np.ceil(self.keep_fraction * len(idx)))
                top = idx[np.argsort(-conf[idx], kind="stable")[:k]]
                top = np.resize(top, n_c)
            else:
                top = idx[np.argsort(-conf[idx], kind="stable")[:n_c]]
            out.append(top)
        self.kept_fraction_ = float(counts.sum() / max(n_cand, 1))
        return X[np.concatenate(out)] if out else X[:0]
