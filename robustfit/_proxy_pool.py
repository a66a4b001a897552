"""The pool of proxy samples mixed into training (Sehwag et al. 2022).

:class:`~robustfit.AdversarialClassifier` calls :func:`build_proxy_pool` once
per ``fit`` on the training part of the data (after ``train_split``), and
:class:`~robustfit._loader.MixedLoader` draws every batch's proxy share from
the pool. :func:`proxy_per_batch` is the one place that decides how a batch is
split between real and proxy samples.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import joblib
import numpy as np
import torch
from sklearn.base import clone

from ._persist import (
    UnsupportedValue,
    decode,
    encode,
    load_payload,
    save_payload,
)
from ._validation import check_array, check_in_bounds, dataset_arrays, encode_labels

#: What ``proxy_data`` may be, as :func:`proxy_kind` names it.
PROXY_KINDS = (None, "distribution", "dataset", "arrays")


def proxy_kind(proxy):
    """Classify ``proxy_data``: None, "distribution", "dataset" or "arrays".

    Raises
    ------
    ValueError
        For anything else, naming what is accepted.
    """
    if proxy is None:
        return None
    if hasattr(proxy, "fit") and hasattr(proxy, "sample"):
        return "distribution"
    if isinstance(proxy, torch.utils.data.Dataset):
        return "dataset"
    if isinstance(proxy, (tuple, list)) and len(proxy) == 2:
        return "arrays"
    raise ValueError(
        "proxy_data must be None, a ProxyDistribution (with fit and sample), an (X, y) "
        f"pair or a torch Dataset, got {type(proxy).__name__}"
    )


#: How ``proxy_mixing`` places the proxy samples of a batch.
PROXY_MIXINGS = ("split", "append")


def proxy_per_batch(batch_size, proxy_ratio, mixing="split"):
    """Proxy samples in a full batch (at least one of each kind).

    Parameters
    ----------
    batch_size : int
        ``"split"``: real and proxy samples together; ``"append"``: the real
        samples, to which the proxy samples are added.
    proxy_ratio : float
        Fraction of the (combined) batch from the proxy pool, in ``[0, 1)``.
    mixing : {"split", "append"}, default="split"
        ``"split"`` takes the proxy samples out of ``batch_size``;
        ``"append"`` adds them to a full real batch, so the batch grows to
        ``batch_size + n_proxy`` (twice ``batch_size`` at ``proxy_ratio=0.5``).

    Returns
    -------
    n_proxy : int
        ``"split"``: ``round(batch_size * proxy_ratio)``, kept in
        ``[1, batch_size - 1]`` when ``proxy_ratio > 0`` (0 when it is 0, or
        when a batch has room for one sample only). ``"append"``:
        ``round(batch_size * proxy_ratio / (1 - proxy_ratio))``, at least 1
        when ``proxy_ratio > 0``.
    """
    if proxy_ratio <= 0:
        return 0
    if mixing == "append":
        return max(int(round(batch_size * proxy_ratio / (1 - proxy_ratio))), 1)
    if batch_size < 2:
        return 0
    return min(max(int(round(batch_size * proxy_ratio)), 1), batch_size - 1)


def real_per_batch(batch_size, proxy_ratio, mixing="split"):
    """Real samples in a full batch: ``batch_size`` minus the proxy share
    (``"split"``), or ``batch_size`` itself (``"append"``)."""
    if mixing == "append":
        return batch_size
    return batch_size - proxy_per_batch(batch_size, proxy_ratio, mixing)


def proxy_per_epoch(n_real, batch_size, proxy_ratio, mixing="split"):
    """Proxy samples one epoch over ``n_real`` real samples consumes.

    Parameters
    ----------
    n_real : int
        Real training samples.
    batch_size : int
        Batch size (see :func:`proxy_per_batch`); ``-1`` or anything below 1
        means one batch of all real samples.
    proxy_ratio : float
        Proxy fraction of each batch.
    mixing : {"split", "append"}, default="split"
        See :func:`proxy_per_batch`.

    Returns
    -------
    n : int
    """
    b = batch_size if batch_size > 0 else n_real
    n_proxy = proxy_per_batch(b, proxy_ratio, mixing)
    n_batches = -(-n_real // max(real_per_batch(b, proxy_ratio, mixing), 1))
    return n_batches * n_proxy


def fit_and_sample(proxy, X, y, n, seed):
    """Clone and fit ``proxy`` on (X, y), then draw ``n`` samples.

    A proxy whose own ``random_state`` is None gets ``seed``, so that the
    classifier's ``random_state`` makes the proxy's fit repeatable too.

    Returns
    -------
    proxy, X_proxy, y_proxy
    """
    proxy = clone(proxy)
    params = proxy.get_params(deep=False)
    if seed is not None and "random_state" in params and params["random_state"] is None:
        proxy.set_params(random_state=seed)
    proxy.fit(X, y)
    Xp, yp = proxy.sample(n, random_state=seed)
    return proxy, Xp, yp


#: Sub-folder of ``proxy_memory`` that holds robustfit's cache entries.
CACHE_FOLDER = "robustfit-proxy-cache"


def cache_folder(memory):
    """The folder of the proxy cache for a ``proxy_memory`` value (None: no cache).

    A :class:`joblib.Memory` contributes its ``location`` only: robustfit never
    lets joblib read the cache, since joblib unpickles what it reads.
    """
    if memory is None:
        return None
    if isinstance(memory, (str, os.PathLike)):
        location = memory
    elif hasattr(memory, "location"):
        location = memory.location
    else:
        raise ValueError(
            f"proxy_memory must be a folder (str or os.PathLike), a joblib.Memory or None, got {memory!r}"
        )
    return None if location is None else os.path.join(os.fspath(location), CACHE_FOLDER)


def cache_key(proxy, X, y, n, seed):
    """Hex digest naming the cache entry of fitting ``proxy`` on (X, y) and drawing ``n`` samples.

    The proxy's class and parameters, the data, ``n`` and ``seed`` enter the
    key (hashed with :func:`joblib.hash`, which reads nothing from disk).
    """
    params = proxy.get_params(deep=False) if hasattr(proxy, "get_params") else proxy
    kind = f"{type(proxy).__module__}.{type(proxy).__qualname__}"
    what = [1, kind, params, np.asarray(X), np.asarray(y), int(n), seed]
    return hashlib.sha256(joblib.hash(what).encode()).hexdigest()[:40]


def cached_fit_and_sample(folder, proxy, X, y, n, seed):
    """:func:`fit_and_sample` through the cache in ``folder``.

    An entry is one file read with ``torch.load(weights_only=True)``: the
    samples as tensors, the fitted proxy as class, parameters and fitted state
    (no pickle). A proxy whose fitted state has no such description (e.g. one
    holding a torch module instance) is fitted every time, with a warning.

    Raises
    ------
    ValueError
        When an entry holds anything but tensors and plain values (a planted
        pickle is refused, not run), or is corrupt.
    """
    path = os.path.join(folder, cache_key(proxy, X, y, n, seed) + ".pt")
    if os.path.exists(path):
        try:
            spec, tensors = load_payload(path, "proxy_cache", "proxy_memory cache entry")
            value = decode(spec, tensors, "proxy_memory cache entry")
            fitted, Xp, yp = value["proxy"], value["X"], value["y"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the proxy_memory cache entry {path} is malformed ({exc}); delete it") from None
        return fitted, Xp, yp
    fitted, Xp, yp = fit_and_sample(proxy, X, y, n, seed)
    tensors = {}
    try:
        spec = encode({"proxy": fitted, "X": np.asarray(Xp, dtype=np.float32), "y": np.asarray(yp)},
                      tensors, "the fitted proxy")
    except UnsupportedValue as exc:
        warnings.warn(f"proxy_memory: not cached, {exc}", UserWarning, stacklevel=3)
        return fitted, Xp, yp
    save_payload("proxy_cache", spec, tensors, path)
    return fitted, Xp, yp


def materialize(dataset):
    """Stack a Dataset of ``(x, y)`` items into two arrays."""
    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError("a proxy Dataset must yield (x, y) pairs")
        xs.append(torch.as_tensor(item[0], dtype=torch.float32))
        label = item[1]
        # the labels as given (class names of any type, as in y); encode_labels checks them
        ys.append(label.item() if torch.is_tensor(label) or isinstance(label, np.ndarray) else label)
    if not xs:
        raise ValueError("the proxy Dataset is empty")
    return torch.stack(xs).numpy(), np.asarray(ys)


def _training_arrays(dataset_train, classes):
    arrays = dataset_arrays(dataset_train)
    if arrays is None or arrays[1] is None:
        raise ValueError(
            "proxy_data as a ProxyDistribution needs array training data (X, y), "
            "not a Dataset of another kind"
        )
    X, y = arrays
    X = X.detach().cpu().numpy() if torch.is_tensor(X) else np.asarray(X)
    y = y.detach().cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
    return X, classes[y]


def build_proxy_pool(proxy_data, dataset_train, *, classes, input_shape, bounds, batch_size,
                     proxy_ratio, proxy_samples=None, memory=None, seed=None, mixing="split"):
    """Fit (if needed) and sample the proxy data of one ``fit``.

    Parameters
    ----------
    proxy_data : ProxyDistribution, (X, y) pair or Dataset
        The classifier's ``proxy_data``.
    dataset_train : Dataset
        The training part of the data (labels encoded as class indices).
    classes : numpy.ndarray
        The classifier's ``classes_``.
    input_shape : tuple of int
        Shape of one training sample.
    bounds : tuple of float or None
        The attack's input box.
    batch_size, proxy_ratio : int, float
        For the default number of samples: one epoch's worth.
    proxy_samples : int or None, default=None
        Samples to draw from a ProxyDistribution.
    memory : str, joblib.Memory or None, default=None
        Cache of the fit and the draw (see :func:`cached_fit_and_sample`).
    seed : int or None, default=None
        Seed of the proxy's fit and draw.
    mixing : {"split", "append"}, default="split"
        The classifier's ``proxy_mixing`` (for the default number of samples).

    Returns
    -------
    proxy : ProxyDistribution or None
        The fitted clone, when ``proxy_data`` is a distribution.
    X_pool : torch.Tensor of float32
    y_pool : torch.Tensor of int64
        Labels as class indices.
    """
    kind = proxy_kind(proxy_data)
    proxy = None
    if kind == "distribution":
        X_tr, y_tr = _training_arrays(dataset_train, classes)
        n = proxy_samples or max(proxy_per_epoch(len(X_tr), batch_size, proxy_ratio, mixing), 1)
        folder = cache_folder(memory)
        if folder is None:
            proxy, Xp, yp = fit_and_sample(proxy_data, X_tr, y_tr, int(n), seed)
        else:
            proxy, Xp, yp = cached_fit_and_sample(folder, proxy_data, X_tr, y_tr, int(n), seed)
    elif kind == "dataset":
        Xp, yp = materialize(proxy_data)
    else:
        Xp, yp = proxy_data
    Xp = check_array(Xp, "proxy X")
    check_in_bounds(Xp, bounds, "proxy X")
    if tuple(Xp.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"proxy samples have shape {tuple(Xp.shape[1:])}, but the training data "
            f"has {tuple(input_shape)}"
        )
    yp = np.asarray(yp.detach().cpu() if torch.is_tensor(yp) else yp)
    if len(yp) != len(Xp):
        raise ValueError(f"proxy X and y have different lengths: {len(Xp)} and {len(yp)}")
    try:
        yp = encode_labels(classes, yp)
    except ValueError as exc:
        raise ValueError(f"proxy labels: {exc}") from None
    return proxy, torch.as_tensor(Xp, dtype=torch.float32), torch.as_tensor(yp, dtype=torch.long)
