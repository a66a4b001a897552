"""Degenerate input, case by case (the "silently wrong" and "unclear errors" lists of the
reliability issue): each gets an error naming the parameter or input, the value and the fix,
or a documented behaviour (max_epochs=0 with warm_start; the small-data validation split)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.metrics import conditional_wasserstein_distance, robust_accuracy
from robustfit.proxy import ArrayProxy, GaussianMixtureProxy


@pytest.fixture(scope="module")
def data(digits):
    X, y = digits
    return X[:120].copy(), y[:120].copy()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


def _clf(**kw):
    params = dict(max_epochs=1, batch_size=32, random_state=0, device="cpu")
    params.update(kw)
    return AdversarialClassifier(**params)


# ----------------------------------------------------------------- silently wrong before
@pytest.mark.parametrize("value, pattern", [
    (0, r"max_epochs = 0 trains nothing.*warm_start=True"),
    (-1, r"max_epochs must be an integer >= 0, got -1"),
])
def test_max_epochs_zero_or_negative(data, value, pattern):
    X, y = data
    with pytest.raises(ValueError, match=pattern):
        _clf(max_epochs=value).fit(X, y)


def test_max_epochs_zero_with_warm_start_keeps_a_fitted_model(data):
    X, y = data
    clf = _clf(warm_start=True).fit(X, y)
    before = clf.predict_proba(X[:10])
    clf.set_params(max_epochs=0).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X[:10]), before)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_attack_warmup_inf_or_nan(data, value):
    X, y = data
    with pytest.raises(ValueError, match=r"attack_warmup must be .*'auto' or a number >= 0, got (inf|nan)"):
        _clf(attack=PGD(epsilon=0.1, steps=1), attack_warmup=value).fit(X, y)


def test_x_without_features():
    with pytest.raises(ValueError, match=r"X has 0 feature\(s\) \(shape=\(12, 0\)\)"):
        _clf().fit(np.zeros((12, 0), np.float32), np.arange(12) % 2)


def test_complex_x(data):
    X, y = data
    with pytest.raises(ValueError, match="X is complex: Complex data not supported"):
        _clf().fit(X.reshape(len(X), -1).astype(complex), y)


def test_continuous_y_is_not_turned_into_classes(data):
    X, y = data
    with pytest.raises(ValueError, match="non-integer float labels.*not continuous targets"):
        _clf(train_split=None).fit(X, np.random.RandomState(0).rand(len(X)))


def test_float_labels_are_not_truncated(data):
    X, y = data
    with pytest.raises(ValueError, match=r"non-integer float labels such as \[0\.7"):
        _clf().fit(X, np.where(y > 4, 0.7, 1.0))


def test_proxy_pair_covering_one_class_is_refused_like_array_proxy(data):
    X, y = data
    pair = (X[:50], np.zeros(50, dtype=int))
    with pytest.raises(ValueError, match=r"proxy_data \(an \(X, y\) pair\) has no samples of classes \[1, 2"):
        _clf(proxy_data=pair).fit(X, y)
    with pytest.raises(ValueError, match=r"no samples of classes \[1, 2"):
        _clf(proxy_data=ArrayProxy(*pair)).fit(X, y)
    # labels the classifier does not know
    with pytest.raises(ValueError, match=r"proxy_data: y has labels not among classes_: \[42\]"):
        _clf(proxy_data=(X[:10], np.full(10, 42))).fit(X, y)


def test_nan_x_in_robust_accuracy_and_attack_call(data, net):
    X, y = data
    x = torch.tensor(X[:8])
    x[0, 0, 0, 0] = float("nan")
    yt = torch.tensor(y[:8])
    for bounds in [(0.0, 1.0), None]:
        with pytest.raises(ValueError, match="X contains NaN or infinite values"):
            PGD(epsilon=0.1, steps=1, bounds=bounds)(net, x, yt)
        with pytest.raises(ValueError, match="X contains NaN or infinite values"):
            robust_accuracy(net, x, yt, attack=PGD(epsilon=0.1, steps=1, bounds=bounds))


class _LeavesTheBall:
    """A callable attack with a declared budget that it does not respect."""

    epsilon = 0.1
    norm = "linf"

    def __call__(self, module, x, y):
        return (x + 0.3).clamp(0, 1)


class _Honest(_LeavesTheBall):
    def __call__(self, module, x, y):
        return (x + 0.1).clamp(0, 1)


def test_callable_attack_leaving_its_ball_is_noticed(data, net):
    X, y = data
    with pytest.raises(ValueError, match=r"moved inputs by up to 0\.3 in the linf norm.*radius 0\.1"):
        _clf(attack=_LeavesTheBall()).fit(X, y)
    with pytest.raises(ValueError, match=r"radius 0\.1"):
        robust_accuracy(net, X[:8], y[:8], attack=_LeavesTheBall())
    # one that stays inside trains, and is checked on the first batch only
    clf = _clf(attack=_Honest()).fit(X, y)
    assert clf.attack_.checked_ and clf.attack_.attack is clf.attack


# ----------------------------------------------------------------- unclear errors before
def test_nan_labels(data):
    X, y = data
    with pytest.raises(ValueError, match="y contains NaN or infinite labels"):
        _clf().fit(X, np.where(y > 8, np.nan, y))


def test_mixed_label_types(data):
    X, _ = data
    with pytest.raises(ValueError, match=r"y mixes label types \['int', 'str'\]"):
        _clf().fit(X[:20], np.array([1, "a"] * 10, dtype=object))


@pytest.mark.parametrize("value", [0, -5])
def test_batch_size_zero_or_negative(data, value):
    X, y = data
    with pytest.raises(ValueError, match=rf"batch_size must be an integer >= 1 or one of -1, got {value}"):
        _clf(batch_size=value).fit(X, y)


def test_drop_last_with_a_batch_larger_than_the_training_split(data):
    # trained nothing and failed later with a KeyError on the history
    with pytest.raises(ValueError, match=r"epoch 1 had no batch: 120 training samples make no "
                       r"batch of batch_size=256 .*drop_last=False"):
        _clf(batch_size=256, iterator_train__drop_last=True, train_split=None).fit(*data)


def test_classes_in_the_users_order(data):
    """classes=[2, 1, 0] fixes the column order of predict_proba; the labels were looked up
    as if sorted and fit failed with "y has labels not among classes_: []"."""
    X, y = data
    y3 = y % 3
    clf = _clf(classes=[2, 1, 0], max_epochs=3, lr=0.01, train_split=None).fit(X, y3)
    assert clf.classes_.tolist() == [2, 1, 0]
    proba = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    assert (clf.predict(X) == y3).mean() > 0.5
    with pytest.raises(ValueError, match=r"classes has repeated labels \(\[2, 1, 1, 0\]\)"):
        _clf(classes=[2, 1, 1, 0]).fit(X, y3)


def test_datasets_of_other_dtypes_train_as_the_same_arrays(data):
    """A skorch Dataset (or a torch one, streamed) of float64 features and int32 labels
    reached the module and the loss as given: "expected target dtype to be Long", "mat1 and
    mat2 must have the same dtype". It now trains exactly as the arrays do."""
    from skorch.dataset import Dataset
    from torch.utils.data import TensorDataset

    X, y = data
    ref = _clf(train_split=None).fit(X, y)
    for ds in (Dataset(X.astype(np.float64), y.astype(np.int32)),
               TensorDataset(torch.as_tensor(X, dtype=torch.float64),
                             torch.as_tensor(y, dtype=torch.int32))):
        clf = _clf(train_split=None).fit(ds, None)
        np.testing.assert_array_equal(clf.predict_proba(X), ref.predict_proba(X))
    np.testing.assert_array_equal(ref.predict(Dataset(X.astype(np.float64), None)), ref.predict(X))


def test_robust_accuracy_of_a_dataset_with_labels_given_twice(data, net):
    from skorch.dataset import Dataset

    X, y = data
    with pytest.raises(ValueError, match="X is a Dataset \\(Dataset\\) and y is given: pass y=None"):
        robust_accuracy(net, Dataset(X, y), y, attack=PGD(epsilon=0.1, steps=1))


def test_attack_class_instead_of_instance(data):
    X, y = data
    with pytest.raises(ValueError, match=r"attack must be an instance, not the class itself: pass PGD\(\.\.\.\)"):
        _clf(attack=PGD).fit(X, y)


def test_torch_module_as_attack_is_refused_at_fit_with_a_clear_message(data):
    X, y = data
    clf = _clf(attack=nn.Linear(2, 2))  # construction stores it, as every parameter
    with pytest.raises(ValueError, match=r"attack must be an attack .* not a torch module, got Linear"):
        clf.fit(X, y)
    with pytest.raises(ValueError, match="valid_attack must be an attack"):
        _clf().set_params(valid_attack=nn.ReLU()).fit(X, y)


def test_callable_attack_returning_the_wrong_shape(data, net):
    X, y = data
    with pytest.raises(ValueError, match=r"returned shape \(32, 1, 4, 8\) for inputs of shape \(32, 1, 8, 8\)"):
        _clf(attack=lambda m, x, yy: x[:, :, :4]).fit(X, y)
    with pytest.raises(TypeError, match="returned NoneType"):
        robust_accuracy(net, X[:8], y[:8], attack=lambda m, x, yy: None)


def test_robust_score_with_an_attack_class(data):
    X, y = data
    clf = _clf(attack=PGD(epsilon=0.1, steps=1)).fit(X, y)
    with pytest.raises(ValueError, match=r"robust_accuracy: attack must be an instance.*PGD\(\.\.\.\)"):
        clf.robust_score(X[:20], y[:20], attack=PGD)


def test_default_split_on_small_classes_falls_back_with_a_warning(data):
    X, y = data
    # every class has fewer than 10 samples: ValidSplit(10, stratified=True) cannot split
    Xs, ys = X[:18], np.arange(18) % 2
    with pytest.warns(UserWarning, match=r"train_split=ValidSplit\(cv=10, stratified=True\) cannot "
                                         r"split.*non-stratified split.*train_split=None"):
        clf = _clf().fit(Xs, ys)
    assert clf.history[-1, "valid_acc"] is not None  # a validation split was still made
    # fewer samples than folds: trains on everything, without validation
    with pytest.warns(UserWarning, match=r"Training on all data without a validation split"):
        clf = _clf().fit(X[:6], np.arange(6) % 2)
    assert "valid_acc" not in clf.history[-1] or clf.history[-1, "valid_acc"] is None
    # train_split=None: no warning at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _clf(train_split=None).fit(X[:6], np.arange(6) % 2)


def test_gmm_proxy_with_few_samples_names_pca_components_and_the_class(data):
    X, y = data
    with pytest.raises(ValueError, match=r"pca_components=50 is more than the 40 training samples"):
        GaussianMixtureProxy(pca_components=50).fit(X[:40], y[:40])
    ys = y[:60].copy()
    ys[0] = 42  # a class with one sample
    with pytest.raises(ValueError, match=r"mixture of class 42 \(1 samples.*mixture_components"):
        GaussianMixtureProxy(pca_components=5).fit(X[:60], ys)


def test_array_proxy_given_an_npy_file(tmp_path, data):
    X, y = data
    path = tmp_path / "samples.npy"
    np.save(path, X)
    with pytest.raises(ValueError, match=r"holds a single array \(\.npy\).*ArrayProxy\(X=numpy\.load\(path\)"):
        ArrayProxy(path=str(path)).fit(X, y)


def test_sparse_x(data):
    X, y = data
    with pytest.raises(TypeError, match=r"X is a sparse matrix.*X\.toarray\(\)"):
        _clf().fit(sp.csr_matrix(X.reshape(len(X), -1)), y)


def test_wasserstein_empty_second_set_and_boolean_subsampling(data):
    X, y = data
    Xf = X.reshape(len(X), -1)
    with pytest.raises(ValueError, match=r"X2 must hold at least one sample.*shape \(0, 64\)"):
        conditional_wasserstein_distance(Xf, y, Xf[:0], y[:0])
    with pytest.raises(ValueError, match="max_samples_per_class must be None or an integer >= 1, got True"):
        conditional_wasserstein_distance(Xf, y, Xf, y, max_samples_per_class=True)


@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_robust_accuracy_batch_size(data, net, value):
    X, y = data
    with pytest.raises(ValueError, match=rf"robust_accuracy: batch_size must be an integer >= 1, got {value}"):
        robust_accuracy(net, X[:8], y[:8], attack=PGD(epsilon=0.1, steps=1), batch_size=value)


def test_robust_accuracy_labels_out_of_range_for_a_bare_module(data, net):
    X, _ = data
    with pytest.raises(ValueError, match=r"class indices in \[0, 12\], but the module returns 10 logits"):
        robust_accuracy(net, X[:8], np.r_[np.arange(7), 12], attack=PGD(epsilon=0.1, steps=1))


def test_column_vector_y_is_raveled_with_a_warning_and_2d_y_refused(data):
    """scikit-learn's convention: a (n, 1) y is used as (n,) with a DataConversionWarning."""
    from sklearn.exceptions import DataConversionWarning

    X, y = data
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        clf = _clf(train_split=None).fit(X, y[:, None])
    assert clf.classes_.tolist() == sorted(set(y.tolist()))
    with pytest.raises(ValueError, match=r"y must be 1-dimensional, got shape \(120, 2\)"):
        _clf().fit(X, np.stack([y, y], 1))
