"""Selecting synthetic samples: by a robust discriminator (ARC), by a teacher's confidence, or at random."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state

from .._utils import clone_keeping_fitted
from .._validation import HasMethods, Interval, Options
from ..attacks._base import NORMS
from ..metrics import arc_sample_scores
from ._array import ArrayProxy
from ._base import ProxyDistribution, seeded_clone
from ._pseudo import PseudoLabeledProxy, top_per_group

#: The values of ``SelectedProxy(selection=...)``.
SELECTIONS = ("arc", "confidence", "random")


class SelectedProxy(ProxyDistribution):
    """Keep the synthetic samples of a generator that look most like real data.

    :meth:`fit` fits ``generator`` on the real data, takes candidate samples
    from it, scores every candidate and keeps the ``keep_fraction`` with the
    highest scores (in every class when ``per_class=True``, so the classes
    keep their proportions); :meth:`sample` then draws from the kept samples.
    ``selection`` chooses the score:

    * ``"arc"``: the probability of "real" that an adversarially robust
      real-vs-synthetic discriminator gives the sample, from
      :func:`robustfit.metrics.arc_sample_scores` (PGD training at
      ``epsilon``, the ARC discriminator of Sehwag et al. 2022 at one budget;
      cross-fitted over ``cv`` folds, so no candidate is scored by a
      discriminator that trained on it). The samples kept are those the robust
      discriminator finds hardest to tell from the real data: the paper's
      per-sample "importance".
    * ``"confidence"``: the probability a ``teacher`` classifier gives the
      sample's own label, the filter of :class:`PseudoLabeledProxy` with
      ``relabel=False`` (Wang et al., ICML 2023).
    * ``"random"``: a uniform random score, i.e. a random subset of the same
      size, the baseline both others must beat.

    At the same ``keep_fraction`` the three keep exactly as many samples of
    every class, so they compare at equal counts.

    Parameters
    ----------
    generator : ProxyDistribution
        The source of labelled candidates, e.g. ``ArrayProxy(X_gen, y_gen)``
        or a :class:`DiffusionProxy`; cloned and fitted on the real data.
    selection : {"arc", "confidence", "random"}, default="arc"
        The score by which candidates are kept.
    keep_fraction : float, default=0.5
        Fraction of the candidates kept, in (0, 1] (per class:
        ``ceil(keep_fraction * n_c)`` of the ``n_c`` candidates of class c).
    n_candidates : int or None, default=None
        Candidates drawn from the generator. ``None``: every sample of an
        :class:`ArrayProxy`; for other generators, as many as real samples.
    per_class : bool, default=True
        Keep the top fraction of every class (True) or of all candidates
        together (False, the classes may then drift).
    teacher : classifier or None, default=None
        Required by ``selection="confidence"``: any classifier with
        ``predict_proba``; an unfitted one is cloned and fitted on the real data.
    epsilon : float, default=0.1
        ``"arc"``: the discriminator's training budget.
    norm : {"linf", "l2"}, default="linf"
        ``"arc"``: its threat model.
    cv : int, default=2
        ``"arc"``: cross-fitting folds (discriminators trained).
    arc_params : dict or None, default=None
        ``"arc"``: other :func:`~robustfit.metrics.arc_sample_scores`
        arguments (``max_epochs``, ``attack_steps``, ``module``,
        ``module_params``, ``lr``, ``batch_size``, ``max_samples``, ``device``).
    class_distribution : {"balanced", "empirical"}, default="balanced"
        Classes of the samples drawn: evenly split, or in the training
        frequencies.
    n_samples : int or None, default=None
        Synthetic samples added by :meth:`fit_resample` (``None``: as many as
        real ones).
    bounds : (float, float) or None, default=(0.0, 1.0)
        Range of the data.
    random_state : int or None, default=None
        Seeds the generator's fit and the teacher's (when their own
        ``random_state`` is None), the candidates' draw, the scores
        (discriminators, random selection) and :meth:`fit_resample`'s draw.

    Attributes
    ----------
    generator_ : ProxyDistribution
        The fitted generator.
    scores_ : numpy.ndarray of shape (n_candidates,)
        Every candidate's score (higher is kept first).
    support_ : numpy.ndarray of int
        Indices of the kept candidates (sorted).
    X_selected_ : numpy.ndarray
        The kept samples, float32.
    y_selected_ : numpy.ndarray
        Their labels, from ``classes_``.
    teacher_ : classifier or None
        The teacher used by ``"confidence"``.
    classes_, class_prior_, input_shape_
        See :class:`ProxyDistribution`.

    Examples
    --------
    >>> import numpy as np
    >>> from robustfit.proxy import ArrayProxy, SelectedProxy
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(80, 1, 8, 8).astype("float32") * 0.5
    >>> y = np.arange(80) % 2
    >>> good, noise = X + 0.02, rng.rand(80, 1, 8, 8).astype("float32")  # real-like, obvious noise
    >>> gen = ArrayProxy(np.concatenate([good, noise]), np.concatenate([y, y]))
    >>> proxy = SelectedProxy(gen, keep_fraction=0.5, epsilon=0.05,
    ...                       arc_params={"max_epochs": 3}, random_state=0).fit(X, y)
    >>> proxy.X_selected_.shape, bool((proxy.support_ < 80).mean() > 0.9)
    ((80, 1, 8, 8), True)
    >>> Xs, ys = proxy.sample(10, random_state=0)  # drawn from the kept samples
    """

    def __sklearn_clone__(self):
        # a fitted teacher is kept by reference, as in PseudoLabeledProxy
        return clone_keeping_fitted(self, ("teacher",))

    def __init__(self, generator, *, selection="arc", keep_fraction=0.5, n_candidates=None, per_class=True,
                 teacher=None, epsilon=0.1, norm="linf", cv=2, arc_params=None,
                 class_distribution="balanced", n_samples=None, bounds=(0.0, 1.0), random_state=None):
        self.generator = generator
        self.selection = selection
        self.keep_fraction = keep_fraction
        self.n_candidates = n_candidates
        self.per_class = per_class
        self.teacher = teacher
        self.epsilon = epsilon
        self.norm = norm
        self.cv = cv
        self.arc_params = arc_params
        self.class_distribution = class_distribution
        self.n_samples = n_samples
        self.bounds = bounds
        self.random_state = random_state

    _parameter_constraints = {
        **ProxyDistribution._parameter_constraints,
        "generator": [HasMethods(("fit", "sample"))],
        "selection": [Options(SELECTIONS)],
        "keep_fraction": [Interval(Real, 0, 1, closed="right")],
        "n_candidates": [None, Interval(Integral, 1, None)],
        "per_class": ["boolean"],
        "teacher": [None, HasMethods(("predict_proba",))],
        "epsilon": [Interval(Real, 0, None)],
        "norm": [Options(NORMS)],
        "cv": [Interval(Integral, 2, None)],
        "arc_params": [None, dict],
    }

    def _validate_params_extra(self):
        if self.selection == "confidence" and self.teacher is None:
            raise self._param_error("teacher", "selection='confidence' needs a teacher classifier "
                                               "with predict_proba")
        reserved = {"X_real", "X_synthetic", "epsilon", "norm", "cv", "random_state"}
        bad = sorted(reserved & set(self.arc_params or {}))
        if bad:
            raise self._param_error("arc_params", f"must not set {bad}: they are parameters of "
                                                  "SelectedProxy itself")

    def _candidates(self, n_real, rng):
        """Candidate samples and their class indices."""
        gen = self.generator_
        if self.n_candidates is None and getattr(gen, "X_", None) is not None \
                and getattr(gen, "y_", None) is not None:
            return gen.X_, np.asarray(gen.y_)
        n = self.n_candidates if self.n_candidates is not None else n_real
        Xc, yc = gen.sample(n, random_state=rng)
        return np.asarray(Xc, dtype=np.float32), np.searchsorted(self.classes_, yc)

    def _scores(self, X, y, Xc, yc, rng):
        if self.selection == "arc":
            return arc_sample_scores(X, Xc, self.epsilon, self.norm, cv=self.cv,
                                     random_state=int(rng.randint(2**31)), **(self.arc_params or {}))
        if self.selection == "confidence":
            # the same teacher probabilities as PseudoLabeledProxy's filter, its own labels kept
            filt = PseudoLabeledProxy(ArrayProxy(Xc, self.classes_[yc]), self.teacher, relabel=False,
                                      bounds=self.bounds, random_state=self.random_state)
            filt.fit(X, self.classes_[y])
            self.teacher_ = filt.teacher_
            return filt._scores(Xc, self.classes_[yc])[1]
        return rng.random_sample(len(Xc))

    def _fit(self, X, y):
        rng = check_random_state(self.random_state)
        self.generator_ = seeded_clone(self.generator, self.random_state, 1).fit(X, self.classes_[y])
        Xc, yc = self._candidates(len(X), rng)
        self.teacher_ = None
        self.scores_ = np.asarray(self._scores(X, y, Xc, yc, rng), dtype=float)
        groups = yc if self.per_class else np.zeros(len(yc), dtype=int)
        self.support_ = np.sort(top_per_group(self.scores_, self.keep_fraction, groups))
        self.X_selected_ = np.ascontiguousarray(Xc[self.support_], dtype=np.float32)
        self.y_selected_ = self.classes_[yc[self.support_]]
        return self

    def _generate(self, counts, rng):
        y_idx = np.searchsorted(self.classes_, self.y_selected_)
        pools = [np.flatnonzero(y_idx == c) for c in range(len(counts))]
        missing = [self.classes_[c] for c, m in enumerate(counts) if m and not len(pools[c])]
        if missing:
            raise ValueError(f"SelectedProxy kept no samples of classes {np.asarray(missing).tolist()}; "
                             "use per_class=True or a larger keep_fraction")
        idx = [ArrayProxy._draw(pools[c], int(m), rng) for c, m in enumerate(counts) if m]
        return self.X_selected_[np.concatenate(idx) if idx else np.empty(0, dtype=int)]
