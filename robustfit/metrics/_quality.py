"""Sample quality of a generator: judge accuracy and a Frechet distance on judge features.

A class-conditional generator is useful as a proxy distribution when its
samples look like the class they were generated for. Two numbers measure
that without a pretrained network: the accuracy on the samples of a
classifier trained on real data (the *judge*), and the Frechet distance
between the judge's penultimate features of real and of synthetic samples
(the FID recipe of Heusel et al. 2017, on a small network trained here
instead of Inception).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from .._validation import HasMethods, Interval, check_array, check_labels, check_param
from ..classifier import AdversarialClassifier
from ..models import penultimate_layer


@dataclass
class SampleQuality:
    """The result of :func:`sample_quality`.

    Attributes
    ----------
    judge_accuracy : float
        Fraction of the synthetic samples the judge assigns to the class they
        were generated for.
    real_accuracy : float
        The judge's accuracy on the real samples used as reference (held out
        from its training when :func:`sample_quality` trained it): what
        ``judge_accuracy`` compares with.
    frechet_distance : float
        Squared Frechet distance between Gaussians fitted to the judge's
        features of the reference real samples and of the synthetic samples:
        ``|mu_r - mu_s|^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2))``. 0 for equal
        feature statistics; biased upwards at small sample sizes, so compare
        values at equal sizes (and with the value between two real sets).
    classes : numpy.ndarray
        The classes of the synthetic samples, sorted.
    per_class_judge_accuracy : numpy.ndarray
        ``judge_accuracy`` within each class of ``classes``.
    per_class_frechet_distance : numpy.ndarray
        The Frechet distance within each class (NaN where either side has
        fewer than 2 samples of it).
    n_synthetic, n_real : int
        Samples on each side of the comparison.
    feature_dim : int
        Dimension of the judge's features.
    feature_layer : str
        Name of the judge's last :class:`torch.nn.Linear` layer, whose input
        is the feature vector.
    judge : object
        The judge (the one passed, or the one trained).
    """

    judge_accuracy: float
    real_accuracy: float
    frechet_distance: float
    classes: np.ndarray
    per_class_judge_accuracy: np.ndarray
    per_class_frechet_distance: np.ndarray
    n_synthetic: int
    n_real: int
    feature_dim: int
    feature_layer: str
    judge: object = field(repr=False)


def frechet_distance(features_a, features_b):
    """Squared Frechet distance between Gaussians fitted to two feature sets.

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with the sample
    means and (unbiased) covariances; the trace of the matrix square root is
    computed from the eigenvalues of the symmetric ``S_a^(1/2) S_b S_a^(1/2)``,
    which needs no complex arithmetic and stays finite for singular
    covariances.

    Parameters
    ----------
    features_a, features_b : array-like of shape (n_a, d) and (n_b, d)
        Feature vectors, at least 2 of each.

    Returns
    -------
    distance : float
        Non-negative.

    Examples
    --------
    >>> import numpy as np
    >>> from robustfit.metrics import frechet_distance
    >>> rng = np.random.RandomState(0)
    >>> a = rng.randn(5000, 2)
    >>> round(frechet_distance(a, a + [3.0, 0.0]), 6)
    9.0
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be two 2-d arrays with the same number of columns, "
                         f"got shapes {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each feature set needs at least 2 rows, got {len(a)} and {len(b)}")
    mu = a.mean(0) - b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root, 0.0))


def _judge_module(judge):
    """The torch module of a fitted judge, or a ValueError saying what a judge must be."""
    module = getattr(judge, "module_", None)
    if not isinstance(module, torch.nn.Module) or not hasattr(judge, "classes_"):
        raise ValueError(
            f"sample_quality: judge must be a fitted classifier with a torch module_ and classes_ "
            f"(a fitted AdversarialClassifier or skorch NeuralNetClassifier), got {type(judge).__name__}; "
            "fit it first, or pass judge=None to train one on the real data")
    return module


def _features(module, X, batch_size=500):
    """The input of ``module``'s last linear layer for every row of ``X`` (eval mode, no gradient)."""
    name = penultimate_layer(module)
    layer = module.get_submodule(name)
    captured = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].flatten(1)))
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(X), batch_size):
                module(torch.as_tensor(X[start:start + batch_size], device=device))
    finally:
        hook.remove()
        module.train(was_training)
    return torch.cat(captured).cpu().numpy(), name


def _check_inputs(X_synthetic, y_synthetic, X_real, y_real):
    Xs = check_array(X_synthetic, "X_synthetic", allow_tensor=False)
    Xr = check_array(X_real, "X_real", allow_tensor=False)
    ys = check_labels(y_synthetic, len(Xs), "y_synthetic")
    yr = check_labels(y_real, len(Xr), "y_real")
    if Xs.shape[1:] != Xr.shape[1:]:
        raise ValueError(f"sample_quality: X_synthetic and X_real have different sample shapes: "
                         f"{Xs.shape[1:]} and {Xr.shape[1:]}")
    for name, X in (("X_synthetic", Xs), ("X_real", Xr)):
        if len(X) < 2:
            raise ValueError(f"sample_quality: {name} needs at least 2 samples for a covariance, got {len(X)}")
    return Xs, ys, Xr, yr


def _check_label_set(ys, known, what):
    unknown = np.setdiff1d(np.unique(ys), known)
    if unknown.size:
        raise ValueError(f"sample_quality: y_synthetic has labels {unknown[:5].tolist()} that are not "
                         f"among {what} {np.asarray(known)[:20].tolist()}; the judge can only recognise "
                         "classes it was trained on")


def sample_quality(
    X_synthetic,
    y_synthetic,
    X_real,
    y_real,
    *,
    judge=None,
    module=None,
    module_params=None,
    max_epochs=30,
    lr=1e-2,
    batch_size=128,
    test_size=0.5,
    random_state=None,
    device="cpu",
):
    """Judge accuracy and Frechet distance of class-conditional synthetic samples.

    Two measures of how much generated samples look like real ones of their
    class:

    * **judge accuracy**: the accuracy, on the synthetic samples labelled
      with the class they were generated for, of a classifier trained on real
      data only (the *judge*);
    * **Frechet distance**: the squared Frechet distance (as in FID, Heusel et
      al. 2017) between Gaussians fitted to the judge's *penultimate
      features* of real and of synthetic samples. The features are the input
      of the judge's last :class:`torch.nn.Linear` layer
      (:func:`robustfit.models.penultimate_layer`), taken in eval mode: for
      the default judge on images, robustfit's :class:`~robustfit.models.SmallCNN`,
      the ``hidden`` (100) ReLU outputs of its fully connected layer; for
      vectors, the last hidden layer of :class:`~robustfit.models.MLP`.

    Both come overall and per class.

    With ``judge=None`` a standard (not adversarially trained)
    :class:`~robustfit.AdversarialClassifier` is trained, seeded by
    ``random_state``, on a stratified ``1 - test_size`` part of the real data,
    and the real side of both figures uses the other part, which the judge
    never saw. A fitted ``judge`` (trained on other real data) uses all of
    ``X_real`` as reference.

    Parameters
    ----------
    X_synthetic : array-like of shape (n_s, C, H, W) or (n_s, d)
        Generated samples, in the range of the real data.
    y_synthetic : array-like of shape (n_s,)
        The class each sample was generated for; all among the real (or the
        judge's) classes.
    X_real : array-like of shape (n_r, C, H, W) or (n_r, d)
        Real samples of the same shape.
    y_real : array-like of shape (n_r,)
        Their labels.
    judge : fitted classifier or None, default=None
        A fitted :class:`~robustfit.AdversarialClassifier` (or skorch
        ``NeuralNetClassifier``) with a torch ``module_`` that ends in a
        linear layer. ``None`` trains one as described above.
    module : torch.nn.Module class or None, default=None
        The trained judge's network (``None``: robustfit's default network
        for the data); ignored with a given ``judge``.
    module_params : dict or None, default=None
        ``module__*`` arguments of the trained judge, e.g. ``{"width": 32}``.
    max_epochs : int, default=30
        Training epochs of the trained judge.
    lr : float, default=1e-2
        Peak learning rate of the trained judge (Adam, one-cycle schedule).
    batch_size : int, default=128
        Training batch size of the trained judge.
    test_size : float, default=0.5
        Fraction of the real data held out from the trained judge as the
        reference; ignored with a given ``judge``.
    random_state : int or None, default=None
        Seeds the split and the judge's training.
    device : str, default="cpu"
        Device of the trained judge.

    Returns
    -------
    result : SampleQuality
        ``judge_accuracy``, ``real_accuracy``, ``frechet_distance``, the
        per-class figures and the judge.

    Raises
    ------
    ValueError
        For arrays of different sample shapes, labels that do not match the
        samples, synthetic labels outside the real (or judge's) classes, fewer
        than 2 samples on a side, or a judge that is not fitted.

    See Also
    --------
    conditional_wasserstein_distance : the distance in Sehwag et al.'s bound, in input space.
    arc_score : robust real-vs-synthetic discrimination.

    Examples
    --------
    >>> from robustfit.datasets import load_digits_images
    >>> from robustfit.metrics import sample_quality
    >>> X, y = load_digits_images()
    >>> q = sample_quality(X[:300], y[:300], X[300:900], y[300:900], random_state=0)
    >>> q.judge_accuracy > 0.8, q.per_class_judge_accuracy.shape
    (True, (10,))
    """
    Xs, ys, Xr, yr = _check_inputs(X_synthetic, y_synthetic, X_real, y_real)
    check_param(test_size, "test_size", [Interval(Real, 0, 1, closed="neither")], "sample_quality")
    check_param(max_epochs, "max_epochs", [Interval(Integral, 1, None)], "sample_quality")
    check_param(judge, "judge", [None, HasMethods(["predict"])], "sample_quality")
    if judge is not None:
        _judge_module(judge)
        _check_label_set(ys, judge.classes_, "the judge's classes")
    else:
        _check_label_set(ys, np.unique(yr), "the real labels")
        rng = check_random_state(random_state)
        seed = int(rng.randint(2**31))
        counts = np.unique(yr, return_counts=True)[1]
        stratify = yr if counts.min() >= 2 else None  # a class with one sample cannot be split
        X_fit, Xr, y_fit, yr = train_test_split(Xr, yr, test_size=test_size, stratify=stratify,
                                                random_state=seed)
        if len(Xr) < 2:
            raise ValueError(f"sample_quality: test_size={test_size} leaves {len(Xr)} real sample(s) as "
                             "the reference; at least 2 are needed")
        judge = AdversarialClassifier(
            module, attack=None, max_epochs=max_epochs, lr=lr, batch_size=batch_size, train_split=None,
            random_state=seed, device=device, **{f"module__{k}": v for k, v in (module_params or {}).items()})
        judge.fit(X_fit, y_fit)
    net = _judge_module(judge)
    feat_s, layer = _features(net, Xs)
    feat_r, _ = _features(net, Xr)
    hit_s = np.asarray(judge.predict(Xs)) == ys
    real_acc = float(np.mean(np.asarray(judge.predict(Xr)) == yr))
    classes = np.unique(ys)
    per_acc = np.array([hit_s[ys == c].mean() for c in classes])
    per_fd = np.array([frechet_distance(feat_r[yr == c], feat_s[ys == c])
                       if (yr == c).sum() >= 2 and (ys == c).sum() >= 2 else np.nan for c in classes])
    return SampleQuality(
        judge_accuracy=float(hit_s.mean()), real_accuracy=real_acc,
        frechet_distance=frechet_distance(feat_r, feat_s), classes=classes,
        per_class_judge_accuracy=per_acc, per_class_frechet_distance=per_fd,
        n_synthetic=len(Xs), n_real=len(Xr), feature_dim=feat_s.shape[1], feature_layer=layer, judge=judge)
