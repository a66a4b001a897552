"""ARC: robust discrimination between real and synthetic data (Sehwag et al. 2022).

A proxy distribution is close to the real one when even an adversarially
robust classifier cannot tell their samples apart. ARC trains a
real-vs-synthetic discriminator with PGD adversarial training at each budget
``epsilon`` and takes the area under its held-out robust accuracy as a function
of ``epsilon``: lower means the proxy is closer.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from .._evaluation import robust_accuracy
from .._validation import Interval, Options, check_param
from ..attacks import PGD
from ..attacks._base import NORMS
from ..classifier import AdversarialClassifier
from ._transfer import _proxy_samples
from ._wasserstein import conditional_wasserstein_distance


@dataclass
class ARCResult:
    """The result of :func:`arc_score`.

    Attributes
    ----------
    score : float
        Normalized area under ``accuracy`` over ``epsilons`` (trapezoids,
        divided by ``epsilons[-1] - epsilons[0]``): the mean robust
        discrimination accuracy over the range, in [0, 1]. About 0.5 (or
        less: the attack also breaks a chance-level discriminator) when the
        sets are indistinguishable, 1 when they are separable even under the
        largest budget.
    epsilons : numpy.ndarray
        The budgets, sorted.
    accuracy : numpy.ndarray
        Held-out robust accuracy of the discriminator trained and attacked at
        each budget (clean accuracy at 0).
    clean_accuracy : numpy.ndarray
        Held-out clean accuracy of each discriminator.
    norm : str
        Threat model.
    n_train, n_test : int
        Samples (both classes together) used for training and for accuracy.
    """

    score: float
    epsilons: np.ndarray
    accuracy: np.ndarray
    clean_accuracy: np.ndarray
    norm: str
    n_train: int
    n_test: int

    def __float__(self):
        return float(self.score)


def _as_float_array(X, name):
    """``X`` as a float32 array of at least 4 samples with at least 2 dimensions."""
    X = np.asarray(X.detach().cpu() if hasattr(X, "detach") else X, dtype=np.float32)
    if X.ndim < 2 or len(X) < 4:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 4, got {X.shape}")
    return X


def _check_arc_args(epsilons, norm, test_size, max_samples):
    """Validate the arguments of :func:`arc_score` that need no data; return the sorted budgets."""
    check_param(norm, "norm", [Options(NORMS)], "arc_score")
    message = f"epsilons must be a non-empty sequence of finite numbers >= 0, got {epsilons!r}"
    try:
        eps = np.sort(np.asarray(epsilons, dtype=float).ravel())
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if eps.size == 0 or np.any(eps < 0) or not np.all(np.isfinite(eps)):
        raise ValueError(message)
    check_param(test_size, "test_size", [Interval(Real, 0, 1, closed="neither")], "arc_score")
    check_param(max_samples, "max_samples", [None, Interval(Integral, 4, None)], "arc_score")
    return eps


def _discrimination_data(X_real, X_synthetic, test_size, max_samples, random_state):
    """Real (label 0) and synthetic (1) samples of equal number, split stratified, and a training seed."""
    Xr, Xs = _as_float_array(X_real, "X_real"), _as_float_array(X_synthetic, "X_synthetic")
    if Xr.shape[1:] != Xs.shape[1:]:
        raise ValueError(f"X_real and X_synthetic have different sample shapes: {Xr.shape[1:]} and {Xs.shape[1:]}")
    rng = check_random_state(random_state)
    n = min(len(Xr), len(Xs), max_samples or len(Xr))
    Xr = Xr[rng.choice(len(Xr), n, replace=False)]
    Xs = Xs[rng.choice(len(Xs), n, replace=False)]
    X = np.concatenate([Xr, Xs])
    y = np.repeat([0, 1], n)
    seed = int(rng.randint(2**31))
    return train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed), seed


def _fit_discriminator(epsilon, X, y, seed, *, norm, attack_steps, **clf_params):
    """A real (0) vs synthetic (1) discriminator, PGD-trained at ``epsilon`` (standard training at 0)."""
    attack = PGD(epsilon=epsilon, norm=norm, steps=attack_steps) if epsilon > 0 else None
    clf = AdversarialClassifier(attack=attack, train_split=None, random_state=seed, **clf_params)
    return clf.fit(X, y)


def _discriminator_accuracy(epsilon, split, seed, *, norm, attack_steps, eval_attack, **clf_params):
    """Held-out (robust, clean) accuracy of a discriminator adversarially trained at ``epsilon``."""
    X_tr, X_te, y_tr, y_te = split
    clf = _fit_discriminator(epsilon, X_tr, y_tr, seed, norm=norm, attack_steps=attack_steps, **clf_params)
    clean = clf.score(X_te, y_te)
    if epsilon == 0:
        return clean, clean
    return robust_accuracy(clf, X_te, y_te, attack=eval_attack, epsilon=epsilon, norm=norm), clean


def _normalized_area(eps, acc):
    """Trapezoid area under ``acc`` over ``eps`` divided by the range (the mean without a range)."""
    if len(eps) > 1 and eps[-1] > eps[0]:
        return float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(eps)) / (eps[-1] - eps[0]))
    return float(acc.mean())


def arc_score(
    X_real,
    X_synthetic,
    epsilons=(0.0, 0.1, 0.2, 0.3),
    norm="linf",
    *,
    module=None,
    module_params=None,
    max_epochs=5,
    attack_steps=7,
    eval_attack="apgd-ce",
    lr=1e-2,
    batch_size=128,
    test_size=0.25,
    max_samples=None,
    random_state=None,
    device="cpu",
):
    """Area under a robust real-vs-synthetic discriminator's accuracy curve.

    For each ``epsilon``, an :class:`~robustfit.AdversarialClassifier` learns
    to tell real (label 0) from synthetic (label 1) samples with PGD
    adversarial training at that budget (standard training at 0); its robust
    accuracy is measured on a held-out split under ``eval_attack`` at the same
    budget. Class labels of the data play no part.

    Parameters
    ----------
    X_real : array-like of shape (n1, ...)
        Real samples in [0, 1].
    X_synthetic : array-like of shape (n2, ...)
        Synthetic (proxy) samples of the same shape.
    epsilons : sequence of float, default=(0.0, 0.1, 0.2, 0.3)
        Budgets, at least one; two or more for an area.
    norm : {"linf", "l2"}, default="linf"
        Threat model of training and evaluation.
    module : torch.nn.Module class or None, default=None
        The discriminator network (``None``: robustfit's default small CNN
        for images, an MLP for vectors); its size via ``module_params``.
    module_params : dict or None, default=None
        ``module__*`` arguments, e.g. ``{"width": 8}``.
    max_epochs : int, default=5
        Training epochs of each discriminator.
    attack_steps : int, default=7
        PGD steps of adversarial training.
    eval_attack : str or Attack, default="apgd-ce"
        Attack (or name, see :func:`~robustfit.attacks.resolve_attack`) for
        the held-out robust accuracy; its budget is set to each epsilon.
    lr : float, default=1e-2
        Peak learning rate (of the one-cycle schedule).
    batch_size : int, default=128
        Training batch size.
    test_size : float, default=0.25
        Held-out fraction (stratified) for the accuracies.
    max_samples : int or None, default=None
        Use at most this many samples of each set (the two sets are always
        cut to the same size, so chance is 0.5).
    random_state : int or None, default=None
        Seeds subsampling, the split and training.
    device : str, default="cpu"
        Training device.

    Returns
    -------
    result : ARCResult
        ``result.score`` (lower is closer) and the curve.

    Examples
    --------
    >>> import numpy as np
    >>> from robustfit.metrics import arc_score
    >>> rng = np.random.RandomState(0)
    >>> real = rng.rand(200, 1, 8, 8).astype("float32") * 0.5
    >>> fake = real + 0.5
    >>> res = arc_score(real, fake, epsilons=[0.0, 0.1], max_epochs=3, random_state=0)
    >>> res.accuracy.tolist()
    [1.0, 1.0]
    >>> res.score > 0.9
    True
    """
    eps = _check_arc_args(epsilons, norm, test_size, max_samples)
    split, seed = _discrimination_data(X_real, X_synthetic, test_size, max_samples, random_state)
    clf_params = {"module": module, "max_epochs": max_epochs, "lr": lr, "batch_size": batch_size, "device": device,
                  **{f"module__{k}": v for k, v in (module_params or {}).items()}}
    curves = [_discriminator_accuracy(float(e), split, seed, norm=norm, attack_steps=attack_steps,
                                      eval_attack=eval_attack, **clf_params) for e in eps]
    acc = np.asarray([robust for robust, _ in curves])
    return ARCResult(score=_normalized_area(eps, acc), epsilons=eps, accuracy=acc,
                     clean_accuracy=np.asarray([clean for _, clean in curves]), norm=norm,
                     n_train=len(split[0]), n_test=len(split[1]))



def arc_sample_scores(
    X_real,
    X_synthetic,
    epsilon=0.1,
    norm="linf",
    *,
    cv=2,
    module=None,
    module_params=None,
    max_epochs=5,
    attack_steps=7,
    lr=1e-2,
    batch_size=128,
    max_samples=None,
    random_state=None,
    device="cpu",
):
    """Per-sample realism of synthetic data under a robust real-vs-synthetic discriminator.

    The per-sample form of :func:`arc_score` (the "importance" of each
    synthetic sample in Sehwag et al. 2022): a discriminator is PGD-trained at
    ``epsilon`` to tell real (label 0) from synthetic (label 1) samples, the
    same training as :func:`arc_score`'s at that budget, and each synthetic
    sample is scored by the discriminator's probability that it is *real*,
    on the unperturbed sample. Higher means harder to tell from real data.

    Every synthetic sample is scored by a discriminator that did not train on
    it (cross-fitting): the synthetic set is split into ``cv`` folds at random,
    and for each fold a discriminator is trained on the real samples against
    synthetic samples of the other folds (both sides cut to the same size, at
    most ``max_samples``) and scores that fold. Class labels play no part.

    Parameters
    ----------
    X_real : array-like of shape (n1, ...)
        Real samples in [0, 1].
    X_synthetic : array-like of shape (n2, ...)
        Synthetic samples of the same shape, ``n2 >= 2 * cv``.
    epsilon : float, default=0.1
        Budget of the discriminator's adversarial training (0: standard
        training, a non-robust discriminator).
    norm : {"linf", "l2"}, default="linf"
        Threat model of the training attack.
    cv : int, default=2
        Folds of the cross-fitting, at least 2 (one discriminator each).
    module, module_params, max_epochs, attack_steps, lr, batch_size, device
        The discriminator's network and training, as in :func:`arc_score`.
    max_samples : int or None, default=None
        At most this many samples of each side train each discriminator.
    random_state : int or None, default=None
        Seeds the folds, the subsampling and training.

    Returns
    -------
    scores : numpy.ndarray of shape (n2,)
        The probability, in [0, 1], that the discriminator assigns to "real"
        for each synthetic sample, in the order of ``X_synthetic``.

    Examples
    --------
    >>> import numpy as np
    >>> from robustfit.metrics import arc_sample_scores
    >>> rng = np.random.RandomState(0)
    >>> real = rng.rand(100, 1, 8, 8).astype("float32") * 0.5
    >>> fake = np.concatenate([real[:50] + 0.01, real[50:] + 0.5])  # half real-like
    >>> s = arc_sample_scores(real, fake, epsilon=0.05, max_epochs=3, random_state=0)
    >>> bool(s[:50].mean() > s[50:].mean())
    True
    """
    check_param(epsilon, "epsilon", [Interval(Real, 0, None)], "arc_sample_scores")
    check_param(cv, "cv", [Interval(Integral, 2, None)], "arc_sample_scores")
    _check_arc_args([epsilon], norm, 0.5, max_samples)
    Xr, Xs = _as_float_array(X_real, "X_real"), _as_float_array(X_synthetic, "X_synthetic")
    if Xr.shape[1:] != Xs.shape[1:]:
        raise ValueError(f"X_real and X_synthetic have different sample shapes: {Xr.shape[1:]} and {Xs.shape[1:]}")
    if len(Xs) < 2 * cv:
        raise ValueError(f"arc_sample_scores: X_synthetic has {len(Xs)} samples, fewer than 2 * cv = {2 * cv}")
    rng = check_random_state(random_state)
    folds = np.array_split(rng.permutation(len(Xs)), cv)
    clf_params = {"module": module, "max_epochs": max_epochs, "lr": lr, "batch_size": batch_size, "device": device,
                  **{f"module__{k}": v for k, v in (module_params or {}).items()}}
    scores = np.empty(len(Xs))
    for fold in folds:
        rest = np.setdiff1d(np.arange(len(Xs)), fold)
        n = min(len(Xr), len(rest), max_samples or len(Xr))
        X = np.concatenate([Xr[rng.choice(len(Xr), n, replace=False)], Xs[rng.choice(rest, n, replace=False)]])
        y = np.repeat([0, 1], n)
        clf = _fit_discriminator(float(epsilon), X, y, int(rng.randint(2**31)), norm=norm,
                                 attack_steps=attack_steps, **clf_params)
        scores[fold] = np.asarray(clf.predict_proba(Xs[fold]))[:, 0]
    return scores

class ProxyScorer:
    """A scorer ``scorer(proxy, X, y)`` for grid searches over proxy distributions.

    Made by :func:`make_wasserstein_scorer` and :func:`make_arc_scorer`. It
    draws ``n_samples`` samples (default: as many as ``X``) from the fitted
    proxy and returns minus their distance to the held-out real ``(X, y)``,
    so that higher is better, as scikit-learn expects.

    Parameters
    ----------
    kind : {"wasserstein", "arc"}
        Which distance.
    n_samples : int or None
        Samples drawn from the proxy.
    random_state : int
        Seed of the draw and of the distance.
    params : dict
        Keyword arguments of :func:`conditional_wasserstein_distance` or
        :func:`arc_score`.
    """

    def __init__(self, kind, n_samples=None, random_state=0, params=None):
        self.kind = kind
        self.n_samples = n_samples
        self.random_state = random_state
        self.params = params

    def __call__(self, proxy, X, y=None, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("proxy scorers do not support sample_weight")
        X = np.asarray(X, dtype=np.float32)
        Xp, yp = _proxy_samples(proxy, self.n_samples or len(X), self.random_state)
        params = dict(self.params or {})
        params.setdefault("random_state", self.random_state)
        if self.kind == "arc":
            return -float(arc_score(X, Xp, **params).score)
        if y is None:
            raise ValueError("the Wasserstein scorer needs the real labels y")
        return -float(conditional_wasserstein_distance(X, np.asarray(y), Xp, np.asarray(yp), **params).distance)

    def __repr__(self):
        return f"ProxyScorer(kind={self.kind!r}, n_samples={self.n_samples!r}, params={self.params!r})"


def make_wasserstein_scorer(metric="l2", method="auto", *, n_samples=None, max_samples_per_class=None,
                            random_state=0):
    """Scorer: minus the conditional Wasserstein distance of a proxy's samples to real data.

    For :class:`~sklearn.model_selection.GridSearchCV` over the parameters of
    a :class:`~robustfit.proxy.ProxyDistribution`: each candidate is fitted on
    the training folds and scored against the held-out real fold.

    Parameters
    ----------
    metric : {"l2", "linf", "l1"}, default="l2"
        Ground cost (the threat model's norm).
    method : str, default="auto"
        See :func:`conditional_wasserstein_distance`.
    n_samples : int or None, default=None
        Samples drawn from each candidate (``None``: as many as the fold).
    max_samples_per_class : int or None, default=None
        Subsampling of the estimate.
    random_state : int, default=0
        Seed of the draw and of the estimate.

    Returns
    -------
    scorer : ProxyScorer
        ``scorer(proxy, X, y) -> -cwd``.

    Examples
    --------
    >>> from robustfit.metrics import make_wasserstein_scorer
    >>> scorer = make_wasserstein_scorer("linf", max_samples_per_class=200)
    """
    conditional_wasserstein_distance(np.zeros((1, 1)), [0], np.zeros((1, 1)), [0], metric=metric, method=method,
                                     max_samples_per_class=max_samples_per_class)  # validates the arguments
    return ProxyScorer("wasserstein", n_samples=n_samples, random_state=random_state,
                       params={"metric": metric, "method": method, "max_samples_per_class": max_samples_per_class})


def make_arc_scorer(epsilons=(0.0, 0.1, 0.2, 0.3), norm="linf", *, n_samples=None, random_state=0,
                    **arc_params):
    """Scorer: minus the ARC of a proxy's samples against real data.

    Parameters
    ----------
    epsilons : sequence of float, default=(0.0, 0.1, 0.2, 0.3)
        Budgets of :func:`arc_score`.
    norm : {"linf", "l2"}, default="linf"
        Threat model.
    n_samples : int or None, default=None
        Samples drawn from each candidate (``None``: as many as the fold).
    random_state : int, default=0
        Seed of the draw and of the discriminators.
    **arc_params
        Other :func:`arc_score` arguments (``max_epochs``, ``module_params``, ...).

    Returns
    -------
    scorer : ProxyScorer
        ``scorer(proxy, X, y) -> -ARC``; labels are not used.

    Examples
    --------
    >>> from robustfit.metrics import make_arc_scorer
    >>> scorer = make_arc_scorer(epsilons=[0.0, 0.2], max_epochs=2)
    """
    check_param(norm, "norm", [Options(NORMS)], "make_arc_scorer")
    return ProxyScorer("arc", n_samples=n_samples, random_state=random_state,
                       params={"epsilons": epsilons, "norm": norm, **arc_params})
