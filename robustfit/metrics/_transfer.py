"""Average robustness and the robustness-transfer bound of Sehwag et al. (2022).

Theorem 1 of "Robust Learning Meets Generative Models: Can Proxy Distributions
Improve Adversarial Robustness?" (ICLR 2022): for any classifier ``h``,

    | Rob_d(h, D) - Rob_d(h, D~) | <= cwd_d(D, D~)

where ``Rob_d(h, D) = E_{(x, y) ~ D}[ inf { d(x, x') : h(x') != y } ]`` is the
expected distance to the nearest misclassified point (0 for points already
misclassified) and ``cwd_d`` the conditional Wasserstein distance with ground
cost ``d``. The proof: for a fixed label, ``x -> dist(x, {h != y})`` is
1-Lipschitz in ``d``, so Kantorovich-Rubinstein duality bounds the difference
of its means under the two class-conditionals by their W_1 distance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from scipy.stats import norm as scipy_norm
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state

from .._evaluation import encode_for, resolve_estimator
from .._utils import clone_keeping_fitted
from .._validation import (
    HasMethods,
    InstanceOf,
    Interval,
    Options,
    ParamsValidationMixin,
    check_bounds,
    check_labels,
    check_param,
    validate_parameter_constraints,
)
from ..attacks import MinimumNorm
from ..attacks._base import NORMS, _as_tensors, eval_mode
from ._wasserstein import conditional_wasserstein_distance


@dataclass
class AverageRobustness:
    """The result of :func:`average_robustness`.

    Attributes
    ----------
    mean : float
        ``Rob_d``: the (weighted) mean of ``distances`` over **every** sample.
    distances : numpy.ndarray of shape (n,)
        Per sample, the ``norm`` of the smallest verified adversarial
        perturbation found (0 where the clean point is misclassified), or
        ``upper_limit`` where the search found none. Each value where
        ``found`` is an **upper bound** of the true distance to the decision
        boundary; the others are censored at the search's limit.
    found : numpy.ndarray of bool, shape (n,)
        Where an adversarial point (or a clean misclassification) was found.
    upper_limit : float
        The value counted for a sample without an adversarial point: the
        largest budget the search can reach, the diameter of ``bounds`` in
        ``norm`` (``width`` for l_inf, ``width * sqrt(d)`` for l_2), or
        without bounds ``eps_init * 2 ** (search_steps - 1)``.
    ci : tuple of float
        ``(low, high)``: normal interval of ``mean`` from the per-sample
        standard deviation (class-stratified when weighted).
    norm : str
        The norm of the distances.
    misclassified : float
        Fraction of samples misclassified without attack, weighted as
        ``mean`` is (by the class weights of a reweighted side of the bound).
    """

    mean: float
    distances: np.ndarray
    found: np.ndarray
    ci: tuple
    norm: str
    misclassified: float
    upper_limit: float = float("inf")

    def __float__(self):
        return float(self.mean)


#: What each argument of :func:`average_robustness` may be: the search's own
#: parameters (those of :class:`~robustfit.attacks.MinimumNorm`) and the batching.
_ROBUSTNESS_CONSTRAINTS = {
    **{k: v for k, v in MinimumNorm._parameter_constraints.items() if k != "max_epsilon"},
    "batch_size": [Interval(Integral, 1, None)],
    "confidence": [Interval(Real, 0, 1, closed="neither")],
}


def _boundary_distances(module, x, y, attack, batch_size):
    """Per-sample minimum-norm distances (float64 numpy), ``batch_size`` samples at a time."""
    out = []
    with eval_mode(module), torch.enable_grad():
        for s in range(0, len(x), batch_size):
            out.append(attack.run(module, x[s:s + batch_size], y[s:s + batch_size], check_input=False)[1])
    return torch.cat(out).cpu().numpy().astype(np.float64) if out else np.zeros(0)


def _upper_limit(norm, bounds, eps_init, search_steps, n_features):
    """The largest radius the minimum-norm search reaches: the box's diameter in
    ``norm``, or without a box the last radius of the doubling phase."""
    bounds = check_bounds(bounds)
    width = 1.0 if bounds is None else bounds[1] - bounds[0]
    if bounds is not None:
        return float(width if norm == "linf" else width * n_features ** 0.5)
    first = (0.1 if norm == "linf" else 1.0) * width if eps_init is None else float(eps_init)
    return first * 2.0 ** (search_steps - 1)


def _summarize(d, w, norm, confidence, upper_limit):
    """Weighted mean of the distances ``d`` over every sample, those without an
    adversarial point counted at ``upper_limit`` (with a warning), and its normal interval."""
    found = np.isfinite(d)
    if not found.all():
        warnings.warn(
            f"average_robustness: no adversarial point found for {int((~found).sum())} of {len(d)} "
            f"samples; they count at the search's upper limit {upper_limit:.4g}", RuntimeWarning,
            stacklevel=3,
        )
        d = np.where(found, d, upper_limit)
    wn = w / w.sum() if len(d) else w
    mean = float(np.sum(wn * d))
    # standard error of a weighted mean of independent samples
    se = float(np.sqrt(np.sum(wn ** 2 * (d - mean) ** 2)))
    half = float(scipy_norm.ppf(0.5 + confidence / 2)) * se
    return AverageRobustness(
        mean=mean, distances=d, found=found, ci=(mean - half, mean + half), norm=norm,
        misclassified=float(np.sum(wn * (d == 0))) if len(d) else 0.0,
        upper_limit=float(upper_limit),
    )


def average_robustness(
    estimator,
    X,
    y,
    norm="linf",
    *,
    steps=20,
    restarts=1,
    n_targets=3,
    search_steps=12,
    eps_init=None,
    bounds=(0.0, 1.0),
    batch_size=256,
    sample_weight=None,
    confidence=0.95,
):
    """Average distance to the decision boundary, ``Rob_d`` of Sehwag et al. (2022).

    For each sample, the ``norm`` of the smallest perturbation found that
    makes the classifier err (0 if it errs on the clean point), from the
    minimum-norm attack :class:`~robustfit.attacks.MinimumNorm`: bisection
    over the budget with a margin-loss PGD of ``steps`` steps in each round
    (doubling the budget until a first success, then halving the bracket).
    Every iterate the classifier misclassifies is kept as a candidate, and the
    final adversarial points are re-checked: a reported distance always comes
    with a point that is really misclassified.

    Every sample counts in the mean: one for which the search found no
    adversarial point counts at the search's upper limit
    (``result.upper_limit``: the diameter of ``bounds`` in ``norm``, or
    ``eps_init * 2 ** (search_steps - 1)`` without bounds), with a
    ``RuntimeWarning`` saying how many. So the mean is over the samples given,
    with their weights unchanged, and both sides of the transfer bound are
    computed on the same samples.

    Parameters
    ----------
    estimator : AdversarialClassifier, Pipeline or torch.nn.Module
        A fitted classifier (or a module returning logits).
    X : array-like of shape (n, ...)
        Inputs.
    y : array-like of shape (n,)
        Labels (class indices for a bare module).
    norm : {"linf", "l2"}, default="linf"
        The threat model's norm.
    steps : int, default=20
        PGD steps per bisection round (the step decays from ``eps / 4`` to
        ``eps / 100``).
    restarts : int, default=1
        PGD runs per round: one from the clean point, ``restarts - 1`` more
        from uniform random points of the ball; the smallest success counts.
    n_targets : int, default=3
        Targeted runs per round, descending ``z_y - z_t`` towards each of the
        ``n_targets`` classes with the highest clean logits after ``y`` (as
        APGD-T does); stronger on adversarially trained models, at
        ``1 + n_targets`` times the cost (with ``restarts=1``).
    search_steps : int, default=12
        Bisection rounds. Each finished round at least halves the bracket.
    eps_init : float or None, default=None
        First budget: ``None`` is 0.1 (l_inf) or 1.0 (l_2) times the width of
        ``bounds`` (1 without bounds).
    bounds : tuple or None, default=(0.0, 1.0)
        Input box the adversarial points stay in (``None``: unbounded). The
        search stops growing a budget at the box's diameter.
    batch_size : int, default=256
        Samples attacked at once.
    sample_weight : array-like of shape (n,) or None, default=None
        Weights of the mean (used to give a proxy set the real class
        frequencies).
    confidence : float, default=0.95
        Level of the normal interval ``ci`` of the mean.

    Returns
    -------
    result : AverageRobustness
        ``result.mean`` is ``Rob_d``; ``result.distances`` the per-sample
        distances.

    Notes
    -----
    The attack finds *an* adversarial point, so each distance is an upper
    bound of the true distance to the boundary, and ``mean`` an upper bound of
    the true ``Rob_d`` (up to the bisection's resolution). Both sides of the
    transfer bound are estimated the same way, so the error mostly cancels in
    the gap, but not exactly: a gap computed from upper bounds can be larger
    or smaller than the true gap.

    Examples
    --------
    >>> import torch
    >>> from robustfit.metrics import average_robustness
    >>> net = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    ...     _ = net.bias.zero_()
    >>> X, y = torch.tensor([[0.5, 0.0], [2.0, 1.0]]), torch.tensor([0, 0])
    >>> res = average_robustness(net, X, y, norm="l2", bounds=None)
    >>> [round(float(d), 2) for d in res.distances]
    [0.5, 2.0]
    """
    params = {"norm": norm, "steps": steps, "restarts": restarts, "n_targets": n_targets,
              "search_steps": search_steps, "eps_init": eps_init, "bounds": bounds}
    validate_parameter_constraints(
        _ROBUSTNESS_CONSTRAINTS, {**params, "batch_size": batch_size, "confidence": confidence}, "average_robustness"
    )
    module, X, clf = resolve_estimator(estimator, X)
    x, y_t = _as_tensors(module, X, encode_for(clf, y) if clf is not None else y)
    w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if w.shape != (len(x),):
        raise ValueError(f"sample_weight must have shape {(len(x),)}, got {w.shape}")
    d = _boundary_distances(module, x, y_t, MinimumNorm(**params), batch_size)
    limit = _upper_limit(norm, bounds, eps_init, search_steps, x[0].numel() if len(x) else 1)
    return _summarize(d, w, norm, confidence, limit)


@dataclass
class TransferBoundResult:
    """The result of :func:`robustness_transfer_bound`.

    Attributes
    ----------
    rob_real, rob_proxy : AverageRobustness
        ``Rob_d`` on the real and on the proxy samples (proxy samples weighted
        to the real class frequencies).
    gap : float
        ``|rob_real.mean - rob_proxy.mean|``.
    gap_ci : tuple of float
        Normal interval of the gap (independent samples).
    cwd : WassersteinResult
        The conditional Wasserstein distance with the threat model's norm as
        ground cost, the theorem's upper bound of ``gap``.
    holds : bool
        ``gap <= cwd.distance``.
    holds_within_ci : bool
        The lower end of ``gap_ci`` is at most the upper end of ``cwd.ci``
        (``cwd.distance`` when it has no interval): the data do not show a
        violation beyond the estimates' sampling error.
    slack : float
        ``cwd.distance - gap``; the bound's looseness.
    """

    rob_real: AverageRobustness
    rob_proxy: AverageRobustness
    gap: float
    gap_ci: tuple
    cwd: object
    holds: bool
    holds_within_ci: bool
    slack: float


def _bound_result(rob_r, rob_p, cwd):
    gap = abs(rob_r.mean - rob_p.mean)
    half = float(np.hypot(rob_r.ci[1] - rob_r.mean, rob_p.ci[1] - rob_p.mean))
    gap_ci = (max(gap - half, 0.0), gap + half)
    cwd_high = cwd.ci[1] if cwd.ci is not None else cwd.distance
    return TransferBoundResult(
        rob_real=rob_r, rob_proxy=rob_p, gap=gap, gap_ci=gap_ci, cwd=cwd,
        holds=bool(gap <= cwd.distance), holds_within_ci=bool(gap_ci[0] <= cwd_high),
        slack=float(cwd.distance - gap),
    )


def _class_reweighting(y_real, y_proxy):
    """Weights that give the proxy samples the real class frequencies."""
    classes, counts = np.unique(y_real, return_counts=True)
    pc = dict(zip(*np.unique(y_proxy, return_counts=True)))
    freq = dict(zip(classes, counts / counts.sum()))
    return np.array([freq.get(c, 0.0) / pc[c] for c in y_proxy])


def robustness_transfer_bound(
    estimator,
    X_real,
    y_real,
    X_proxy,
    y_proxy,
    norm="linf",
    *,
    method="auto",
    max_samples_per_class=None,
    n_bootstrap=20,
    random_state=None,
    confidence=0.95,
    **robustness_params,
):
    """Check Theorem 1 of Sehwag et al. (2022) for one classifier and one proxy.

    Estimates ``Rob_d`` on real and proxy samples with
    :func:`average_robustness`, and ``cwd_d`` between them with
    :func:`conditional_wasserstein_distance` (ground cost the same ``norm``).
    The theorem says ``|Rob_d(h, D) - Rob_d(h, D~)| <= cwd_d(D, D~)``.

    Parameters
    ----------
    estimator : AdversarialClassifier, Pipeline or torch.nn.Module
        A fitted classifier.
    X_real, y_real : array-like
        Real samples and labels.
    X_proxy, y_proxy : array-like
        Proxy samples and labels (every real class must occur).
    norm : {"linf", "l2"}, default="linf"
        The threat model's norm: distance of ``Rob_d`` and ground cost of the
        cwd.
    method : str, default="auto"
        Transport method of :func:`conditional_wasserstein_distance`. Use an
        exact method for the check: ``"sinkhorn"`` over-estimates the cwd
        (safe for the bound), ``"sliced"`` under-estimates it by two orders of
        magnitude on images and is refused here.
    max_samples_per_class : int or None, default=None
        Subsampling of the cwd estimate (Rob uses all samples).
    n_bootstrap : int, default=20
        Bootstrap replicates of the cwd interval.
    random_state : int, RandomState or None, default=None
        Seeds the cwd's subsampling and bootstrap.
    confidence : float, default=0.95
        Level of the intervals.
    **robustness_params
        Passed to :func:`average_robustness` (``steps``, ``search_steps``,
        ``bounds``, ``batch_size``).

    Returns
    -------
    result : TransferBoundResult

    Notes
    -----
    Applied to the two *empirical* distributions, the theorem is exact: with
    exact optimal transport, the real set's class weights on both sides and
    exact boundary distances, ``gap <= cwd`` holds for every sample. The
    remaining slack comes from the attack, whose distances are upper bounds.
    Read the bound's *tightness* with care: in input space, the empirical W_1
    of two finite samples is dominated by their sampling distance (two halves
    of real MNIST are 6.3 apart in l_2), so the bound is loose.

    Examples
    --------
    >>> import torch
    >>> from robustfit.metrics import robustness_transfer_bound
    >>> net = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    ...     _ = net.bias.copy_(torch.tensor([-0.5, 0.5]))
    >>> X = torch.rand(40, 2, generator=torch.Generator().manual_seed(0))
    >>> y = (X[:, 0] < 0.5).long()
    >>> res = robustness_transfer_bound(net, X, y, X * 0.9, y, norm="l2", n_bootstrap=0)
    >>> bool(res.holds), round(res.gap, 3) <= round(res.cwd.distance, 3)
    (True, True)
    """
    check_param(norm, "norm", [Options(NORMS)], "robustness_transfer_bound")
    if method == "sliced":
        raise ValueError("method='sliced' under-estimates W_1 and cannot serve as the upper bound; "
                         "use 'auto', 'exact' or 'sinkhorn'")
    y_real_arr = np.asarray(y_real.cpu() if torch.is_tensor(y_real) else y_real)
    y_proxy_arr = np.asarray(y_proxy.cpu() if torch.is_tensor(y_proxy) else y_proxy)
    cwd = conditional_wasserstein_distance(
        X_real, y_real_arr, X_proxy, y_proxy_arr, metric=norm, method=method,
        max_samples_per_class=max_samples_per_class, n_bootstrap=n_bootstrap,
        random_state=random_state, confidence=confidence,
    )
    rob_r = average_robustness(estimator, X_real, y_real, norm, confidence=confidence, **robustness_params)
    rob_p = average_robustness(
        estimator, X_proxy, y_proxy, norm, confidence=confidence,
        sample_weight=_class_reweighting(y_real_arr, y_proxy_arr), **robustness_params,
    )
    return _bound_result(rob_r, rob_p, cwd)


def _proxy_samples(proxy, n, random_state):
    """``(X, y)`` from a fitted ProxyDistribution (``n`` samples) or a pair."""
    if hasattr(proxy, "sample"):
        return proxy.sample(n, random_state=random_state)
    if isinstance(proxy, (tuple, list)) and len(proxy) == 2:
        return proxy
    raise TypeError(
        f"proxy must be a fitted ProxyDistribution (with sample) or an (X, y) pair, got {type(proxy).__name__}"
    )


class TransferBound(ParamsValidationMixin, BaseEstimator):
    """Robustness-transfer diagnostics of proxies against one real data set.

    ``fit`` stores the real data (and, with an ``estimator``, its average
    robustness on them); then, for any proxy (a fitted
    :class:`~robustfit.proxy.ProxyDistribution` or an ``(X, y)`` pair),
    :meth:`distance` gives the conditional Wasserstein distance and
    :meth:`bound` the full check of Theorem 1 of Sehwag et al. (2022).
    :meth:`score` is minus the distance, so higher means closer.

    Parameters
    ----------
    estimator : fitted classifier, torch.nn.Module or None, default=None
        The classifier whose robustness transfer :meth:`bound` checks (used as
        it is, not refitted). ``None``: only distances.
    norm : {"linf", "l2", "l1"}, default="linf"
        Threat model's norm, ground cost of the cwd (``"l1"`` for distances
        only).
    method : str, default="auto"
        Transport method (see :func:`conditional_wasserstein_distance`).
    n_samples : int or None, default=None
        Samples drawn from a ProxyDistribution; ``None`` as many as the real
        data.
    max_samples_per_class : int or None, default=None
        Subsampling of the cwd estimate.
    n_bootstrap : int, default=0
        Bootstrap replicates of the cwd interval.
    random_state : int or None, default=None
        Seeds sampling from proxies and the cwd's resampling.
    robustness_params : dict or None, default=None
        Passed to :func:`average_robustness`.

    Attributes
    ----------
    X_real_, y_real_ : numpy.ndarray
        The real data.
    rob_real_ : AverageRobustness or None
        Average robustness of ``estimator`` on the real data.

    Examples
    --------
    >>> import numpy as np
    >>> from robustfit.metrics import TransferBound
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(40, 4).astype("float32"), np.arange(40) % 2
    >>> tb = TransferBound(norm="l2").fit(X, y)
    >>> tb.distance((X, y)).distance
    0.0
    """

    def __sklearn_clone__(self):
        # the classifier under study is used, never refitted: clone() keeps it
        return clone_keeping_fitted(self, ("estimator",))

    def __init__(self, estimator=None, norm="linf", method="auto", n_samples=None, max_samples_per_class=None,
                 n_bootstrap=0, random_state=None, robustness_params=None):
        self.estimator = estimator
        self.norm = norm
        self.method = method
        self.n_samples = n_samples
        self.max_samples_per_class = max_samples_per_class
        self.n_bootstrap = n_bootstrap
        self.random_state = random_state
        self.robustness_params = robustness_params

    _parameter_constraints = {
        "estimator": [None, torch.nn.Module, HasMethods(("predict_proba",))],
        "norm": [Options(("linf", "l2", "l1"))],
        "method": [Options(("auto", "exact", "sinkhorn", "sliced"))],
        "n_samples": [None, Interval(Integral, 1, None)],
        "max_samples_per_class": [None, Interval(Integral, 1, None)],
        "n_bootstrap": [Interval(Integral, 0, None)],
        "random_state": ["random_state"],
        "robustness_params": [None, InstanceOf(dict, "a dict of average_robustness arguments")],
    }

    def _validate_params_extra(self):
        if self.estimator is not None and self.norm == "l1":
            raise self._param_error(
                "norm", "'l1' has no attack for average_robustness; use 'linf' or 'l2' with an "
                "estimator (or estimator=None for distances only)")
        if self.method == "sliced" and self.norm != "l2":
            raise self._param_error("method", f"'sliced' needs norm='l2' (norm is {self.norm!r})")

    def fit(self, X, y):
        """Store the real data; compute ``Rob_d`` of ``estimator`` on it.

        Parameters
        ----------
        X : array-like of shape (n, ...)
            Real samples.
        y : array-like of shape (n,)
            Their labels.

        Returns
        -------
        self : TransferBound
        """
        self.validate_params()
        try:
            X = np.asarray(X.detach().cpu() if torch.is_tensor(X) else X, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"TransferBound: X must be a numeric array: {exc}") from None
        if X.ndim < 2 or X.shape[0] == 0 or X[0].size == 0:
            raise ValueError(f"TransferBound: X must have shape (n_samples, ...) with n >= 1 and "
                             f"at least one feature, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("TransferBound: X contains NaN or infinite values")
        self.y_real_ = check_labels(y, len(X))
        self.X_real_ = X
        self.rob_real_ = None
        if self.estimator is not None:
            self.rob_real_ = average_robustness(self.estimator, self.X_real_, self.y_real_, self.norm,
                                                **(self.robustness_params or {}))
        return self

    def _check_fitted(self):
        if not hasattr(self, "X_real_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("TransferBound is not fitted; call fit(X_real, y_real) first")

    def _samples(self, proxy):
        self._check_fitted()
        n = self.n_samples or len(self.X_real_)
        seed = check_random_state(self.random_state).randint(2**31)
        return _proxy_samples(proxy, n, seed)

    def distance(self, proxy):
        """Conditional Wasserstein distance from the real data to ``proxy``.

        Parameters
        ----------
        proxy : ProxyDistribution or (X, y) pair
            A fitted proxy (``n_samples`` samples are drawn) or samples.

        Returns
        -------
        result : WassersteinResult
        """
        Xp, yp = self._samples(proxy)
        return conditional_wasserstein_distance(
            self.X_real_, self.y_real_, Xp, yp, metric=self.norm, method=self.method,
            max_samples_per_class=self.max_samples_per_class, n_bootstrap=self.n_bootstrap,
            random_state=self.random_state,
        )

    def bound(self, proxy):
        """Average robustness on both sides, their gap and the cwd bound.

        Parameters
        ----------
        proxy : ProxyDistribution or (X, y) pair
            A fitted proxy or samples.

        Returns
        -------
        result : TransferBoundResult
        """
        self._check_fitted()
        if self.estimator is None:
            raise ValueError("bound needs an estimator; TransferBound(estimator=None) gives distances only")
        Xp, yp = self._samples(proxy)
        yp = np.asarray(yp)
        cwd = self.distance((Xp, yp))
        params = self.robustness_params or {}
        rob_p = average_robustness(self.estimator, Xp, yp, self.norm,
                                   sample_weight=_class_reweighting(self.y_real_, yp), **params)
        return _bound_result(self.rob_real_, rob_p, cwd)

    def score(self, X, y):
        """Minus the cwd between the real data and the samples ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n, ...)
            Proxy samples.
        y : array-like of shape (n,)
            Their labels.

        Returns
        -------
        score : float
        """
        return -float(self.distance((X, y)).distance)
