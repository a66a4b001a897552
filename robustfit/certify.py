"""Certified l_2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter 2019).

A base classifier ``f`` becomes the *smoothed* classifier

.. math::

    g(x) = \\arg\\max_c \\; P\\big(f(x + \\eta) = c\\big), \\qquad \\eta \\sim N(0, \\sigma^2 I).

If the top class has probability at least ``p_A`` under the noise, then
``g(x + delta) = g(x)`` for every ``||delta||_2 < sigma * Phi^-1(p_A)``. The
probabilities are estimated by Monte Carlo, so the guarantee holds with
probability at least ``1 - alpha`` over the noise draws:
:meth:`SmoothedClassifier.certify` is Cohen et al.'s CERTIFY (a class picked
from ``n0`` draws, its probability bounded below from ``n`` separate draws by
an exact Clopper-Pearson interval), :meth:`SmoothedClassifier.predict` their
PREDICT (a two-sided binomial test between the top two classes, abstaining
when it fails).

The statistics use SciPy's current API (``scipy.stats.beta`` quantiles for
the Clopper-Pearson bound, ``scipy.stats.binom`` for the test's p-value);
the tests check both against ``scipy.stats.binomtest``.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from scipy.stats import beta, binom, norm
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state

from ._utils import clone_keeping_fitted, is_fitted
from ._validation import (
    Interval,
    Options,
    ParamsValidationMixin,
    check_array,
    check_labels,
    check_param,
)
from .attacks import GaussianNoise
from .attacks._base import _module_device, eval_mode
from .classifier import AdversarialClassifier
from .metrics._curves import draw_curves, labelled_curves

__all__ = [
    "CertifiedAccuracyCurve",
    "CertifiedScorer",
    "SmoothedClassifier",
    "certified_accuracy_curve",
    "certified_radius",
    "lower_confidence_bound",
    "make_certified_scorer",
    "plot_certified_accuracy",
]

_ALPHA = [Interval(Real, 0, 1, closed="neither")]


# --------------------------------------------------------------------------- statistics
def lower_confidence_bound(k, n, alpha):
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound on a binomial proportion.

    The exact bound ``Beta(alpha; k, n - k + 1)`` (the ``alpha`` quantile of
    that Beta distribution), and 0 for ``k = 0``. It equals the lower end of
    ``scipy.stats.binomtest(k, n).proportion_ci(1 - 2 * alpha, "exact")``.

    Parameters
    ----------
    k : int or array-like of int
        Successes, ``0 <= k <= n``.
    n : int or array-like of int
        Trials, ``>= 1``.
    alpha : float
        Probability, in (0, 1), that the true proportion lies below the bound.

    Returns
    -------
    p_lower : float or numpy.ndarray
        The bound, shaped like ``k``.

    Examples
    --------
    >>> from robustfit.certify import lower_confidence_bound
    >>> round(float(lower_confidence_bound(100, 100, 0.001)), 4)   # 0.001 ** (1 / 100)
    0.9333
    """
    check_param(alpha, "alpha", _ALPHA, "lower_confidence_bound")
    k, n = np.asarray(k), np.asarray(n)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"lower_confidence_bound needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    bound = np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
    return float(bound) if bound.ndim == 0 else bound


def certified_radius(p_lower, sigma):
    """The l_2 radius ``sigma * Phi^-1(p_lower)`` of Cohen et al.'s Theorem 1.

    Parameters
    ----------
    p_lower : float or array-like
        Lower bound on the top class's probability under the noise.
    sigma : float
        Standard deviation of the smoothing noise, ``> 0``.

    Returns
    -------
    radius : float or numpy.ndarray
        ``sigma * Phi^-1(p_lower)``; NaN where ``p_lower < 0.5`` (no
        certificate: CERTIFY abstains there).

    Examples
    --------
    >>> from robustfit.certify import certified_radius
    >>> round(float(certified_radius(0.975, sigma=0.5)), 3)
    0.98
    """
    check_param(sigma, "sigma", [Interval(Real, 0, None, closed="neither")], "certified_radius")
    p = np.asarray(p_lower, dtype=float)
    radius = np.where(p >= 0.5, sigma * norm.ppf(np.clip(p, 0.5, 1.0)), np.nan)
    return float(radius) if radius.ndim == 0 else radius


def _two_sided_pvalue(n_a, n_b):
    """p-value of the exact two-sided binomial test of ``n_a`` successes in
    ``n_a + n_b`` trials against ``p = 1/2`` (``binomtest(...).pvalue``)."""
    n_a, n_b = np.asarray(n_a), np.asarray(n_b)
    return np.minimum(1.0, 2.0 * binom.cdf(np.minimum(n_a, n_b), n_a + n_b, 0.5))


# --------------------------------------------------------------------------- the estimator
class SmoothedClassifier(ParamsValidationMixin, ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """Randomized smoothing of a classifier, with certified l_2 radii.

    A scikit-learn meta-estimator around a base classifier ``f``: a
    :class:`~robustfit.AdversarialClassifier`, any skorch classifier, or a
    torch module returning logits. Its prediction is the class ``f`` returns
    most often under Gaussian noise of standard deviation ``sigma``
    (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
    Randomized Smoothing", ICML 2019), and :meth:`certify` proves, for each
    point, an l_2 radius within which that prediction cannot change.

    **Training.** ``fit`` clones the base and trains it under Gaussian noise at
    ``sigma`` (fresh noise each time a sample is seen), by setting its
    ``attack`` to :class:`~robustfit.attacks.GaussianNoise` ``(sigma)`` when it
    has none, or by setting the ``sigma`` of a noise-based attack it has
    (:class:`~robustfit.attacks.SmoothAdv`). With ``prefit=True`` the base is
    used as it is, and ``fit`` only records its classes.

    **Abstentions.** When the noise votes do not separate the top class from
    the runner-up with confidence ``1 - alpha``, :meth:`predict` and
    :meth:`certify` return ``abstain_label_`` instead of a class. An
    abstention is never counted as correct; it is the smoothed classifier
    saying "not sure" (usually near a decision boundary, or when ``sigma`` is
    too large for the base network).

    Parameters
    ----------
    estimator : AdversarialClassifier, skorch classifier, torch.nn.Module or None, default=None
        The base classifier. ``None`` uses ``AdversarialClassifier()`` (a small
        CNN or MLP built from the data). Without ``prefit``, it must be a
        robustfit classifier (something with an ``attack`` parameter).
    sigma : float, default=0.25
        Standard deviation of the smoothing noise, ``> 0``. Larger values
        certify larger radii (up to 3.8 ``sigma`` at ``n = 100,000``) at
        the cost of clean accuracy.
    n0 : int, default=100
        Noise draws that select the class to certify (CERTIFY's first step).
    n : int, default=10_000
        Noise draws that estimate the class's probability (CERTIFY) or the
        votes (PREDICT). The largest radius that can be certified is
        ``sigma * Phi^-1(alpha ** (1 / n))``: 3.2 sigma at 10,000 and 3.8 sigma
        at 100,000 (``alpha = 0.001``), see :attr:`max_radius`. The cost grows
        linearly with ``n``.
    alpha : float, default=0.001
        Failure probability of each certificate and prediction, in (0, 1).
    batch_size : int, default=1000
        Noisy inputs per forward pass. Noise is drawn on the base network's
        device, this many at a time, across points.
    prefit : bool, default=False
        Use ``estimator`` as it is (it must be fitted, or be a torch module);
        ``fit`` then trains nothing.
    abstain_label : object, default="auto"
        The label returned for abstentions. ``"auto"`` is ``-1`` when the
        classes are numbers and the string ``"abstain"`` otherwise (so string
        labels keep a string output). It must not be one of the classes.
    random_state : int, numpy RandomState or None, default=None
        Seeds the noise of :meth:`certify`, :meth:`predict` and
        :meth:`vote_counts` (an integer gives the same draws on every call) and,
        when the base's own ``random_state`` is None, the base's training.
    amp : {"auto", "bf16", None}, default="auto"
        Mixed precision of the forward passes on noisy inputs: ``"auto"`` uses
        bfloat16 autocast on CUDA and full precision on the CPU. The
        certificate is for the network as it runs, so certify and predict
        with the same setting.

    Attributes
    ----------
    estimator_ : object
        The fitted base classifier (the ``estimator`` itself with ``prefit``).
    classes_ : numpy.ndarray
        Class labels, in the order of the base network's logits.
    abstain_label_ : object
        The resolved abstain label.
    n_features_in_ : int
        Number of input values per sample.
    input_shape_ : tuple of int
        Shape of one input sample.

    See Also
    --------
    robustfit.attacks.GaussianNoise : the noise training.
    robustfit.attacks.SmoothAdv : adversarial training of the smoothed classifier.
    make_certified_scorer : certified accuracy as a grid-search score.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.certify import SmoothedClassifier
    >>> from robustfit.datasets import load_digits_images
    >>> X, y = load_digits_images()
    >>> smooth = SmoothedClassifier(AdversarialClassifier(max_epochs=5), sigma=0.25,
    ...                             n=1000, random_state=0).fit(X[:1000], y[:1000])
    >>> classes, radii = smooth.certify(X[-5:])
    >>> classes.shape, radii.shape
    ((5,), (5,))
    >>> 0.0 <= smooth.certified_accuracy(X[-50:], y[-50:], radii=0.25) <= 1.0
    True
    """

    _parameter_constraints = {
        "estimator": "no_validation",  # checked in _validate_params_extra
        "sigma": [Interval(Real, 0, None, closed="neither")],
        "n0": [Interval(Integral, 1, None)],
        "n": [Interval(Integral, 1, None)],
        "alpha": _ALPHA,
        "batch_size": [Interval(Integral, 1, None)],
        "prefit": ["boolean"],
        "abstain_label": "no_validation",  # checked against classes_ in fit
        "random_state": ["random_state"],
        "amp": [None, Options(("auto", "bf16"))],
    }

    def __init__(
        self,
        estimator=None,
        *,
        sigma=0.25,
        n0=100,
        n=10_000,
        alpha=0.001,
        batch_size=1000,
        prefit=False,
        abstain_label="auto",
        random_state=None,
        amp="auto",
    ):
        self.estimator = estimator
        self.sigma = sigma
        self.n0 = n0
        self.n = n
        self.alpha = alpha
        self.batch_size = batch_size
        self.prefit = prefit
        self.abstain_label = abstain_label
        self.random_state = random_state
        self.amp = amp

    def _validate_params_extra(self):
        est = self.estimator
        if isinstance(est, type):
            raise self._param_error("estimator", f"must be an instance, not a class: pass {est.__name__}(...)")
        ok = est is None or isinstance(est, torch.nn.Module) or (
            hasattr(est, "fit") and hasattr(est, "get_params"))
        if not ok:
            raise self._param_error(
                "estimator", "must be None, a robustfit/skorch classifier or a torch.nn.Module")
        if self.prefit and est is None:
            raise self._param_error("estimator", "must be a fitted classifier or a torch module when "
                                    "prefit=True")

    def __sklearn_clone__(self):
        # A prefitted base is what the smoothed classifier *uses*: a clone (as
        # in a grid search over sigma) keeps it instead of an unfitted copy.
        if self.prefit:
            return clone_keeping_fitted(self, ("estimator",))
        return super().__sklearn_clone__()

    @property
    def max_radius(self):
        """The largest radius :meth:`certify` can return with these ``sigma``,
        ``n`` and ``alpha``: ``sigma * Phi^-1(alpha ** (1 / n))``, reached when
        all ``n`` votes go to one class."""
        self.validate_params()
        return float(self.sigma * norm.ppf(self.alpha ** (1.0 / self.n)))

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, **fit_params):
        """Train the base classifier under Gaussian noise (unless ``prefit``).

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, d) or (n, C, H, W)
            Training inputs.
        y : array-like of shape (n,), default=None
            Labels; may be None only with ``prefit=True``.
        **fit_params
            Passed to the base's ``fit``.

        Returns
        -------
        self : SmoothedClassifier
        """
        self.validate_params()
        X = check_array(X)
        if self.prefit:
            est = self.estimator
            if not isinstance(est, torch.nn.Module) and not is_fitted(est):
                raise NotFittedError(
                    f"SmoothedClassifier: estimator={type(est).__name__}(...) is not fitted, but "
                    "prefit=True; fit it first, or pass prefit=False to train it under noise here"
                )
        else:
            if y is None:
                raise ValueError("SmoothedClassifier.fit needs labels y to train the base classifier")
            est = self._noise_trained_estimator()
            est.fit(X, y, **fit_params)
        module = est if isinstance(est, torch.nn.Module) else getattr(est, "module_", None)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"SmoothedClassifier: estimator {type(est).__name__} has no torch module (module_); "
                "use a robustfit/skorch classifier or a torch.nn.Module"
            )
        self.estimator_ = est
        self.input_shape_ = tuple(X.shape[1:])
        self.n_features_in_ = int(np.prod(self.input_shape_))
        n_out = self._n_logits(module, X)
        classes = getattr(est, "classes_", None)
        classes = np.arange(n_out) if classes is None else np.asarray(classes)
        if len(classes) != n_out:
            raise ValueError(
                f"the base network returns {n_out} logits but has {len(classes)} classes"
            )
        self.classes_ = classes
        self.abstain_label_ = self._resolve_abstain(classes)
        return self

    def _noise_trained_estimator(self):
        seed = self._seed()
        if isinstance(self.estimator, torch.nn.Module):
            raise ValueError(
                "SmoothedClassifier cannot train a bare torch module: wrap it as "
                "AdversarialClassifier(module=...), or pass prefit=True to smooth it as it is"
            )
        est = AdversarialClassifier() if self.estimator is None else clone(self.estimator)
        params = est.get_params(deep=False)
        if "attack" not in params:
            raise ValueError(
                f"SmoothedClassifier trains the base under noise through its 'attack' parameter, "
                f"which {type(est).__name__} lacks: use robustfit.AdversarialClassifier, or fit "
                "the base yourself and pass prefit=True"
            )
        attack = params["attack"]
        if attack is None:
            est.set_params(attack=GaussianNoise(sigma=self.sigma))
        elif hasattr(attack, "get_params") and "sigma" in attack.get_params():
            est.set_params(attack=clone(attack).set_params(sigma=self.sigma))
        else:
            raise ValueError(
                f"the base's attack {attack!r} does not train under Gaussian noise; use "
                "attack=None (Gaussian noise at sigma), SmoothAdv(...), or fit the base "
                "yourself and pass prefit=True"
            )
        if params.get("random_state", 0) is None and seed is not None:
            est.set_params(random_state=seed)
        return est

    def _resolve_abstain(self, classes):
        value = self.abstain_label
        if isinstance(value, str) and value == "auto":
            value = -1 if classes.dtype.kind in "iuf" else "abstain"
        if any(_same_label(value, c) for c in classes):
            raise ValueError(
                f"abstain_label={value!r} is one of the classes {classes[:10].tolist()}; "
                "pass abstain_label=<a value that is not a class>"
            )
        return value

    # ----------------------------------------------------------- sampling
    def _check_fitted(self):
        if not hasattr(self, "estimator_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' (with "
                "prefit=True for a base that is already trained) before using this estimator."
            )

    def _module(self):
        est = self.estimator_
        return est if isinstance(est, torch.nn.Module) else est.module_

    def _seed(self):
        rs = self.random_state
        if rs is None:
            return None
        if isinstance(rs, numbers.Integral):
            return int(rs)
        return int(check_random_state(rs).randint(2**31))

    def _generator(self, device):
        gen = torch.Generator(device=device)
        seed = self._seed()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        return gen

    def _autocast(self, device):
        kind = torch.device(device).type
        if self.amp == "bf16" or (self.amp == "auto" and kind == "cuda"):
            return torch.autocast(device_type=kind, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _n_logits(self, module, X):
        x = torch.as_tensor(np.asarray(X[:1]) if not torch.is_tensor(X) else X[:1])
        x = x.to(_module_device(module), dtype=torch.float32)
        with eval_mode(module), torch.inference_mode():
            return int(module(x).shape[1])

    def _inputs(self, X):
        self._check_fitted()
        X = check_array(X)
        if tuple(X.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"X has samples of shape {tuple(X.shape[1:])}, but {type(self).__name__} was "
                f"fitted on {self.input_shape_}"
            )
        module = self._module()
        x = X if torch.is_tensor(X) else torch.from_numpy(np.ascontiguousarray(X))
        return module, x.to(_module_device(module), dtype=torch.float32)

    def _counts(self, module, x, num, gen):
        """Votes of the base network over ``num`` noise draws per point, as
        an int64 array (n_points, n_classes). The (point, draw) pairs are
        processed ``batch_size`` at a time, so a batch may span points."""
        n_points, n_classes = x.shape[0], len(self.classes_)
        counts = torch.zeros(n_points * n_classes, dtype=torch.long, device=x.device)
        total, step = n_points * num, self.batch_size
        ones = torch.ones(min(step, total), dtype=torch.long, device=x.device)
        with eval_mode(module), torch.inference_mode(), self._autocast(x.device):
            for start in range(0, total, step):
                stop = min(start + step, total)
                point = torch.arange(start, stop, device=x.device) // num
                noisy = torch.randn((stop - start, *x.shape[1:]), generator=gen,
                                    device=x.device, dtype=x.dtype)
                noisy.mul_(float(self.sigma)).add_(x[point])
                pred = module(noisy).argmax(dim=1)
                counts.index_add_(0, point * n_classes + pred, ones[: stop - start])
        return counts.view(n_points, n_classes).cpu().numpy()

    def _labels(self, index):
        """Class labels for indices, ``abstain_label_`` where the index is -1."""
        labels = self.classes_[np.maximum(index, 0)]
        try:
            dtype = np.result_type(labels.dtype, np.asarray(self.abstain_label_).dtype)
        except TypeError:
            dtype = object
        out = labels.astype(dtype)
        out[index < 0] = self.abstain_label_
        return out

    # ------------------------------------------------------------ public
    def vote_counts(self, X, n=None):
        """How often the base network predicts each class under the noise.

        Parameters
        ----------
        X : array-like or torch.Tensor
            Inputs, shaped as in ``fit``.
        n : int or None, default=None
            Noise draws per point; ``None`` uses the ``n`` parameter.

        Returns
        -------
        counts : numpy.ndarray of int64, shape (n_samples, n_classes)
            Columns follow ``classes_``; every row sums to ``n``.
        """
        n = self.n if n is None else check_param(n, "n", [Interval(Integral, 1, None)], "vote_counts")
        module, x = self._inputs(X)
        return self._counts(module, x, n, self._generator(x.device))

    def predict_proba(self, X):
        """Vote frequencies: the Monte Carlo estimate of ``P(f(X + eta) = c)``.

        These are the smoothed classifier's class probabilities estimated from
        ``n`` draws, without a confidence statement: :meth:`predict` may abstain
        where their argmax is not significant.

        Parameters
        ----------
        X : array-like or torch.Tensor
            Inputs.

        Returns
        -------
        proba : numpy.ndarray of shape (n_samples, n_classes)
            Columns follow ``classes_``; rows sum to 1.
        """
        return self.vote_counts(X) / float(self.n)

    def predict(self, X):
        """The smoothed class, or ``abstain_label_`` (Cohen et al.'s PREDICT).

        ``n`` noise draws vote; the top class is returned when an exact
        two-sided binomial test rejects, at level ``alpha``, that it is as
        likely as the runner-up (``binomtest(n_A, n_A + n_B, 0.5).pvalue <=
        alpha``), and the point is abstained on otherwise. A returned class is
        then the smoothed classifier's with probability at least
        ``1 - alpha``.

        Parameters
        ----------
        X : array-like or torch.Tensor
            Inputs.

        Returns
        -------
        y_pred : numpy.ndarray of shape (n_samples,)
            Labels from ``classes_``, or ``abstain_label_``.
        """
        counts = self.vote_counts(X)
        order = np.argsort(-counts, axis=1, kind="stable")
        rows = np.arange(len(counts))
        n_a = counts[rows, order[:, 0]]
        n_b = counts[rows, order[:, 1]] if counts.shape[1] > 1 else np.zeros_like(n_a)
        confident = _two_sided_pvalue(n_a, n_b) <= self.alpha
        return self._labels(np.where(confident, order[:, 0], -1))

    def certify(self, X):
        """Certified class and l_2 radius of each point (Cohen et al.'s CERTIFY).

        For every point: the class ``c_A`` most voted in ``n0`` noise draws is
        selected; ``n`` *separate* draws count its votes ``n_A``; the exact
        one-sided Clopper-Pearson bound ``p_A`` at level ``1 - alpha``
        (:func:`lower_confidence_bound`) gives the radius
        ``sigma * Phi^-1(p_A)`` if ``p_A >= 1/2``, and an abstention
        otherwise. With probability at least ``1 - alpha`` (over the noise),
        the smoothed classifier returns ``c_A`` at every point within the
        radius.

        Parameters
        ----------
        X : array-like or torch.Tensor
            Inputs.

        Returns
        -------
        y_pred : numpy.ndarray of shape (n_samples,)
            The certified classes, or ``abstain_label_``.
        radius : numpy.ndarray of float, shape (n_samples,)
            Certified l_2 radii; 0.0 where the point is abstained on.
        """
        module, x = self._inputs(X)
        gen = self._generator(x.device)
        selected = self._counts(module, x, self.n0, gen).argmax(axis=1)
        counts = self._counts(module, x, self.n, gen)
        n_a = counts[np.arange(len(counts)), selected]
        p_lower = lower_confidence_bound(n_a, self.n, self.alpha)
        ok = p_lower >= 0.5
        radius = np.where(ok, self.sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
        return self._labels(np.where(ok, selected, -1)), radius

    def certified_accuracy(self, X, y, radii=0.0):
        """Fraction of points certified correct at each radius.

        A point counts at radius ``r`` when :meth:`certify` returns its true
        label with a radius ``>= r``. One certification serves all radii.

        Parameters
        ----------
        X : array-like or torch.Tensor
            Inputs.
        y : array-like of shape (n_samples,)
            True labels.
        radii : float or array-like of float, default=0.0
            Radii, ``>= 0``.

        Returns
        -------
        accuracy : float or numpy.ndarray
            A float for a single radius, else one value per radius.
        """
        r = _check_radii(radii)
        y = check_labels(y, len(X))
        y_pred, radius = self.certify(X)
        correct = _equal_labels(y_pred, y)
        acc = np.array([np.mean(correct & (radius >= ri)) for ri in r.ravel()])
        return float(acc[0]) if r.ndim == 0 else acc

    def score(self, X, y, sample_weight=None):
        """Certified accuracy at radius 0: the fraction of points whose true
        label :meth:`certify` returns (abstentions count as errors).

        Parameters
        ----------
        X : array-like or torch.Tensor
            Inputs.
        y : array-like of shape (n_samples,)
            True labels.
        sample_weight : None
            Not supported.

        Returns
        -------
        score : float
        """
        if sample_weight is not None:
            raise ValueError("SmoothedClassifier.score does not support sample_weight")
        return self.certified_accuracy(X, y, 0.0)


def _same_label(a, b):
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _equal_labels(y_pred, y):
    y = np.asarray(y)
    try:
        eq = np.asarray(y_pred == y)
    except (TypeError, ValueError):
        eq = None
    if eq is None or eq.shape != y.shape:
        eq = np.array([_same_label(a, b) for a, b in zip(y_pred, y)])
    return eq.astype(bool)


def _check_radii(radii):
    r = np.asarray(radii, dtype=float)
    if r.ndim > 1 or r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"radii must be a number or a 1-d sequence of finite numbers >= 0, got {radii!r}")
    return r


# --------------------------------------------------------------------------- curves and scorers
@dataclass(frozen=True)
class CertifiedAccuracyCurve:
    """Certified accuracy as a function of the l_2 radius.

    Made by :func:`certified_accuracy_curve`; drawn by
    :func:`plot_certified_accuracy`.

    Parameters
    ----------
    radii : numpy.ndarray of shape (k,)
        The radii.
    accuracies : numpy.ndarray of shape (k,)
        Certified accuracy at each radius.
    label : str or None, default=None
        Name of the model, for plot legends.
    sigma : float or None, default=None
        The smoothing noise.
    average_radius : float or None, default=None
        Mean certified radius over all points, counting 0 for points that are
        abstained on or certified wrong (the "ACR" of Zhai et al. 2020).
    abstained : float or None, default=None
        Fraction of points abstained on.

    Examples
    --------
    >>> import numpy as np
    >>> from robustfit.certify import CertifiedAccuracyCurve
    >>> curve = CertifiedAccuracyCurve(np.array([0.0, 0.5]), np.array([0.9, 0.6]), sigma=0.25)
    >>> curve.at(0.5)
    0.6
    """

    radii: np.ndarray
    accuracies: np.ndarray
    label: str | None = None
    sigma: float | None = None
    average_radius: float | None = None
    abstained: float | None = None

    def at(self, radius):
        """Certified accuracy at one of the curve's radii.

        Parameters
        ----------
        radius : float
            A radius in ``radii``.

        Returns
        -------
        accuracy : float
        """
        radii = np.asarray(self.radii, float)
        hit = np.flatnonzero(np.isclose(radii, radius))
        if hit.size == 0:
            raise ValueError(f"radius {radius} is not among the curve's radii {radii.tolist()}")
        return float(np.asarray(self.accuracies)[hit[0]])


def certified_accuracy_curve(estimator, X, y, radii=None, *, label=None):
    """Certify ``X`` once and read the certified accuracy at each radius.

    Parameters
    ----------
    estimator : SmoothedClassifier
        A fitted smoothed classifier.
    X : array-like or torch.Tensor
        Inputs.
    y : array-like of shape (n_samples,)
        True labels.
    radii : array-like of float or None, default=None
        Radii, ``>= 0``. ``None`` takes 101 radii evenly from 0 to
        ``estimator.max_radius``.
    label : str or None, default=None
        Stored on the curve, for legends.

    Returns
    -------
    curve : CertifiedAccuracyCurve

    Examples
    --------
    >>> import torch
    >>> from robustfit.certify import SmoothedClassifier, certified_accuracy_curve
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> X, y = torch.rand(6, 1, 2, 2), torch.randint(0, 2, (6,)).numpy()
    >>> smooth = SmoothedClassifier(net, prefit=True, n=200, random_state=0).fit(X)
    >>> curve = certified_accuracy_curve(smooth, X, y, radii=[0.0, 0.25])
    >>> curve.accuracies.shape
    (2,)
    """
    if not isinstance(estimator, SmoothedClassifier):
        raise TypeError(f"estimator must be a fitted SmoothedClassifier, got {type(estimator).__name__}")
    r = np.linspace(0.0, estimator.max_radius, 101) if radii is None else _check_radii(radii)
    r = np.atleast_1d(r)
    y = check_labels(y, len(X))
    y_pred, radius = estimator.certify(X)
    correct = _equal_labels(y_pred, y)
    abstained = np.array([_same_label(p, estimator.abstain_label_) for p in y_pred])
    return CertifiedAccuracyCurve(
        radii=r,
        accuracies=np.array([np.mean(correct & (radius >= ri)) for ri in r]),
        label=label,
        sigma=float(estimator.sigma),
        average_radius=float(np.mean(np.where(correct, radius, 0.0))),
        abstained=float(np.mean(abstained)),
    )


def plot_certified_accuracy(curves, ax=None, **plot_kwargs):
    """Plot certified accuracy against the l_2 radius.

    Parameters
    ----------
    curves : CertifiedAccuracyCurve, list of them, or dict
        One curve, several (labelled by their ``label``), or a dict mapping
        legend labels to curves or to ``(radii, accuracies)`` pairs.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` creates a new figure.
    **plot_kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for every curve.

    Returns
    -------
    ax : matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from robustfit.certify import CertifiedAccuracyCurve, plot_certified_accuracy
    >>> a = CertifiedAccuracyCurve([0, 0.5, 1.0], [0.95, 0.8, 0.0], label="sigma=0.25")
    >>> b = CertifiedAccuracyCurve([0, 0.5, 1.0], [0.9, 0.75, 0.5], label="sigma=0.5")
    >>> len(plot_certified_accuracy([a, b]).get_lines())
    2
    """
    items = labelled_curves(curves, CertifiedAccuracyCurve, "radii")
    return draw_curves(items, lambda c: c.radii, ax, "plot_certified_accuracy",
                       xlabel=r"radius ($\ell_2$)", ylabel="certified accuracy", **plot_kwargs)


class CertifiedScorer:
    """A scikit-learn scorer returning certified accuracy at one radius.

    Made by :func:`make_certified_scorer`; called as
    ``scorer(estimator, X, y)`` on a fitted :class:`SmoothedClassifier` (or a
    pipeline ending in one).

    In a pipeline the noise is added, and the radius certified, in the space
    the smoothed classifier sees: after the pipeline's transformers. A radius
    in input units needs transformers that do not rescale (or a radius
    converted by their Lipschitz constant: ``StandardScaler`` multiplies
    distances by up to ``1 / min(scale_)``).

    Parameters
    ----------
    radius : float
        The l_2 radius.
    """

    def __init__(self, radius=0.0):
        self.radius = radius

    def __call__(self, estimator, X, y, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("CertifiedScorer does not support sample_weight")
        if isinstance(estimator, Pipeline):
            if len(estimator.steps) > 1:
                X = estimator[:-1].transform(X)
            estimator = estimator[-1]
        if not isinstance(estimator, SmoothedClassifier):
            raise TypeError(
                "make_certified_scorer scores a SmoothedClassifier (or a Pipeline ending in one), "
                f"got {type(estimator).__name__}"
            )
        return estimator.certified_accuracy(X, y, self.radius)

    def __repr__(self):
        return f"make_certified_scorer(radius={self.radius!r})"


def make_certified_scorer(radius=0.0):
    """Make a scorer of certified accuracy at ``radius`` for grid searches.

    With it, :class:`~sklearn.model_selection.GridSearchCV` over ``sigma`` or
    over the base's training settings picks the model with the highest
    certified accuracy at that radius.

    Parameters
    ----------
    radius : float, default=0.0
        The l_2 radius, ``>= 0``.

    Returns
    -------
    scorer : CertifiedScorer
        A callable ``scorer(estimator, X, y) -> float``; higher is better.

    Examples
    --------
    >>> from sklearn.model_selection import GridSearchCV
    >>> from robustfit.certify import SmoothedClassifier, make_certified_scorer
    >>> search = GridSearchCV(SmoothedClassifier(n=1000), {"sigma": [0.25, 0.5]},
    ...                       scoring=make_certified_scorer(0.5), cv=3)
    """
    check_param(radius, "radius", [Interval(Real, 0, None)], "make_certified_scorer")
    return CertifiedScorer(radius)
