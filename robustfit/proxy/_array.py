"""Pre-generated samples (arrays or an .npz file) as a proxy distribution."""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from .._validation import Interval, InvalidParameterError, check_bounds, check_labels, check_param
from ._base import ProxyDistribution

_X_KEYS = ("image", "images", "X", "x", "data")
_Y_KEYS = ("label", "labels", "y")


def _pick(keys, wanted, default_keys, what, path):
    if wanted is not None:
        if wanted not in keys:
            raise ValueError(f"{path} has no array {wanted!r} ({what}); it holds {sorted(keys)}")
        return wanted
    for k in default_keys:
        if k in keys:
            return k
    return None


class ArrayProxy(ProxyDistribution):
    """Pre-generated synthetic samples, from arrays or an ``.npz`` file.

    The form in which the papers release their generated sets (Sehwag et al.
    2022; Wang et al. 2023: 1M to 50M images as ``image``/``label`` arrays,
    ``uint8``, channels last). :meth:`fit` loads and validates the samples
    against the real training data; :meth:`sample` draws from them without
    replacement (cycling through a fresh permutation when more are asked for
    than there are), with the classes set by ``class_distribution``.

    Loading is safe: ``numpy.load(path, allow_pickle=False)``, so a file with
    pickled objects is refused instead of executing code. Validation, each with
    its own error: the samples must be 2-D or 4-D, have the training data's
    sample shape (channels-last ``(n, H, W, C)`` is transposed when that
    matches), be ``uint8`` (scaled from [0, 255] to ``bounds``) or floating
    point, finite, inside ``bounds``, and their labels must be among the
    training classes; every training class must have samples.

    Parameters
    ----------
    X : array-like or None, default=None
        The samples (give ``X`` or ``path``).
    y : array-like or None, default=None
        Their labels. ``None`` (or an ``.npz`` without labels) makes an
        unlabeled source, usable through :class:`PseudoLabeledProxy` only.
    path : str or os.PathLike or None, default=None
        An ``.npz`` file holding the samples (and labels).
    x_key, y_key : str or None, default=None
        Array names in the file; ``None`` tries ``image``, ``images``, ``X``,
        ``x``, ``data`` and ``label``, ``labels``, ``y``.
    class_distribution : {"balanced", "empirical"}, default="balanced"
        Classes of the samples drawn: evenly split, or in the training
        frequencies.
    n_samples : int or None, default=None
        Synthetic samples added by :meth:`fit_resample` (``None``: as many as
        real ones).
    bounds : (float, float) or None, default=(0.0, 1.0)
        Range of the data.
    random_state : int or None, default=None
        Seed of :meth:`fit_resample`'s draw.

    Attributes
    ----------
    X_ : numpy.ndarray
        The validated samples, float32, in the training data's shape.
    y_ : numpy.ndarray or None
        Their labels as class indices into ``classes_`` (None if unlabeled).
    classes_, class_prior_, input_shape_
        See :class:`ProxyDistribution`.

    Examples
    --------
    >>> import numpy as np
    >>> from robustfit.proxy import ArrayProxy
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(20, 1, 4, 4).astype("float32"), np.arange(20) % 2
    >>> images = (rng.rand(50, 4, 4, 1) * 255).astype("uint8")  # channels last
    >>> proxy = ArrayProxy(images, np.arange(50) % 2).fit(X, y)
    >>> Xs, ys = proxy.sample(10, random_state=0)
    >>> Xs.shape, Xs.dtype.name
    ((10, 1, 4, 4), 'float32')
    """

    def __init__(self, X=None, y=None, *, path=None, x_key=None, y_key=None,
                 class_distribution="balanced", n_samples=None, bounds=(0.0, 1.0),
                 random_state=None):
        self.X = X
        self.y = y
        self.path = path
        self.x_key = x_key
        self.y_key = y_key
        self.class_distribution = class_distribution
        self.n_samples = n_samples
        self.bounds = bounds
        self.random_state = random_state

    _parameter_constraints = {
        **ProxyDistribution._parameter_constraints,
        "X": "no_validation",
        "y": "no_validation",
        "path": [None, str, os.PathLike],
        "x_key": [None, str],
        "y_key": [None, str],
    }

    def _validate_params_extra(self):
        if (self.X is None) == (self.path is None):
            raise InvalidParameterError(
                "ArrayProxy: give exactly one of X (the samples as an array) and path (an .npz "
                f"file), got X={'None' if self.X is None else 'an array'} and path={self.path!r}"
            )

    def _load(self):
        if self.X is not None:
            return np.asarray(self.X), None if self.y is None else np.asarray(self.y)
        try:
            f = np.load(self.path, allow_pickle=False)
            if isinstance(f, np.ndarray):
                raise ValueError(
                    f"ArrayProxy: path={self.path!r} holds a single array (.npy), not an .npz "
                    "archive of samples and labels; pass ArrayProxy(X=numpy.load(path), y=labels), "
                    "or save both with numpy.savez(path, image=X, label=y)"
                )
            with f:
                keys = set(f.files)
                xk = _pick(keys, self.x_key, _X_KEYS, "samples", self.path)
                if xk is None:
                    raise ValueError(
                        f"{self.path} holds no samples under {_X_KEYS}; set x_key "
                        f"(arrays in the file: {sorted(keys)})"
                    )
                yk = _pick(keys, self.y_key, _Y_KEYS, "labels", self.path)
                return f[xk], (None if yk is None else f[yk])
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise ValueError(
                    f"{self.path} holds pickled objects, which are not loaded "
                    "(allow_pickle=False); save plain numeric arrays"
                ) from None
            raise

    def _fit(self, X_real, y_real):
        bounds = check_bounds(self.bounds)
        Xp, yp = self._load()
        shape = self.input_shape_
        if Xp.ndim not in (2, 4):
            raise ValueError(f"proxy samples must be 2-D or 4-D, got shape {Xp.shape}")
        if Xp.ndim == 4 and tuple(Xp.shape[1:]) != shape and len(shape) == 3 \
                and tuple(Xp.shape[1:]) == (shape[1], shape[2], shape[0]):
            Xp = Xp.transpose(0, 3, 1, 2)  # channels last, as released sets are stored
        if tuple(Xp.shape[1:]) != shape:
            raise ValueError(
                f"proxy samples have shape {tuple(Xp.shape[1:])} per sample, but the "
                f"training data has {shape}"
            )
        if len(Xp) == 0:
            raise ValueError("the proxy holds 0 samples")
        if Xp.dtype == np.uint8:
            lo, hi = bounds if bounds is not None else (0.0, 1.0)
            Xp = (Xp.astype(np.float32) / 255.0) * (hi - lo) + lo
        elif np.issubdtype(Xp.dtype, np.floating):
            Xp = Xp.astype(np.float32)
            if not np.isfinite(Xp).all():
                raise ValueError("proxy samples contain NaN or infinite values")
        else:
            raise ValueError(
                f"proxy samples must be uint8 (scaled from [0, 255]) or floating point, "
                f"got dtype {Xp.dtype}"
            )
        if bounds is not None:
            lo, hi = float(Xp.min()), float(Xp.max())
            if lo < bounds[0] - 1e-6 or hi > bounds[1] + 1e-6:
                raise ValueError(
                    f"proxy samples have values in [{lo:.4g}, {hi:.4g}], outside "
                    f"bounds={bounds}; rescale them (uint8 images are scaled automatically)"
                )
        self.X_ = np.ascontiguousarray(Xp)
        self.y_ = None
        if yp is not None:
            yp = check_labels(yp, len(Xp), name="proxy y")
            unknown = np.setdiff1d(np.unique(yp), self.classes_)
            if len(unknown):
                raise ValueError(
                    f"proxy labels {unknown.tolist()[:10]} are not among the training classes "
                    f"{self.classes_.tolist()}"
                )
            self.y_ = np.searchsorted(self.classes_, yp)
            missing = np.setdiff1d(np.arange(len(self.classes_)), self.y_)
            if len(missing):
                raise ValueError(
                    f"the proxy has no samples of classes {self.classes_[missing].tolist()}"
                )
        return self

    @staticmethod
    def _draw(pool, m, rng):
        """``m`` indices from ``pool``, without replacement while it lasts."""
        reps = [rng.permutation(pool) for _ in range(-(-m // len(pool)))]
        return np.concatenate(reps)[:m] if reps else pool[:0]

    def _generate(self, counts, rng):
        if self.y_ is None:
            raise ValueError(
                "this ArrayProxy has no labels: give y, or wrap it in "
                "PseudoLabeledProxy(ArrayProxy(...), teacher=...) to label it"
            )
        idx = [self._draw(np.flatnonzero(self.y_ == c), int(m), rng)
               for c, m in enumerate(counts) if m]
        idx = np.concatenate(idx) if idx else np.empty(0, dtype=int)
        return self.X_[idx]

    def sample_unlabeled(self, n, random_state=None):
        """Draw ``n`` samples, ignoring labels (the only draw when unlabeled).

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
        self._check_fitted()
        check_param(n, "n", [Interval(Integral, 1, None)], "ArrayProxy.sample_unlabeled")
        rng = check_random_state(random_state)
        return self.X_[self._draw(np.arange(len(self.X_)), int(n), rng)]
