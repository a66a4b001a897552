"""Proxy distributions (robustfit.proxy) and their use as extra training data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from joblib import Memory
from sklearn.model_selection import GridSearchCV, KFold

from robustfit import AdversarialClassifier
from robustfit._loader import MixedLoader
from robustfit.attacks import PGD
from robustfit.metrics import make_robust_scorer
from robustfit.proxy import (
    ArrayProxy,
    DiffusionProxy,
    GaussianMixtureProxy,
    ProxyDistribution,
    PseudoLabeledProxy,
)
from robustfit.proxy._diffusion import _training_target


@pytest.fixture(scope="module")
def data(digits):
    X, y = digits
    return X[:400], y[:400], X[1500:1700], y[1500:1700]


# ---------------------------------------------------------------- generators
def test_gmm_samples_shape_bounds_and_class_balance(data):
    X, y, _, _ = data
    proxy = GaussianMixtureProxy(mixture_components=3, pca_components=15, random_state=0).fit(X, y)
    Xs, ys = proxy.sample(103, random_state=1)
    assert Xs.shape == (103, 1, 8, 8) and Xs.dtype == np.float32
    assert Xs.min() >= 0 and Xs.max() <= 1
    counts = np.bincount(ys, minlength=10)
    assert counts.max() - counts.min() <= 1  # balanced: 103 = 10 * 10 + 3
    Xs2, ys2 = proxy.sample(103, random_state=1)
    np.testing.assert_array_equal(Xs, Xs2)
    np.testing.assert_array_equal(ys, ys2)
    assert not np.array_equal(Xs, proxy.sample(103, random_state=2)[0])
    # "empirical" follows the training frequencies of a skewed training set
    skew = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:10]])
    emp = GaussianMixtureProxy(mixture_components=2, pca_components=5,
                               class_distribution="empirical", random_state=0).fit(X[skew], y[skew])
    _, ye = emp.sample(1000, random_state=0)
    expected = 1000 * np.bincount(y[skew])[[0, 1]] / len(skew)
    np.testing.assert_allclose(np.bincount(ye), expected, atol=1)


def test_gmm_samples_resemble_their_class(data):
    """A classifier trained on real digits recognises most GMM samples' labels."""
    from sklearn.linear_model import LogisticRegression

    X, y, Xte, yte = data
    judge = LogisticRegression(max_iter=1000).fit(X.reshape(len(X), -1), y)
    proxy = GaussianMixtureProxy(mixture_components=2, pca_components=20, random_state=0).fit(X, y)
    Xs, ys = proxy.sample(300, random_state=0)
    assert judge.score(Xs.reshape(len(Xs), -1), ys) > 0.8


def test_fit_resample_shapes_and_parameter_errors(data):
    X, y, _, _ = data
    Xr, yr = GaussianMixtureProxy(pca_components=10, mixture_components=2,
                                  random_state=0).fit_resample(X, y)
    assert Xr.shape == (800, 1, 8, 8) and yr.shape == (800,)
    np.testing.assert_array_equal(Xr[:400], X)
    np.testing.assert_array_equal(yr[:400], y)
    Xr, yr = GaussianMixtureProxy(pca_components=10, mixture_components=2, n_samples=50,
                                  random_state=0).fit_resample(X, y)
    assert Xr.shape == (450, 1, 8, 8) and set(yr[400:]) <= set(y)
    with pytest.raises(ValueError, match="class_distribution"):
        GaussianMixtureProxy(class_distribution="uniform").fit(X, y)
    with pytest.raises(ValueError, match="n_samples"):
        GaussianMixtureProxy(n_samples=0).fit(X, y)
    with pytest.raises(ValueError, match="mixture_components"):
        GaussianMixtureProxy(mixture_components=0).fit(X, y)
    with pytest.raises(ValueError, match=r"outside the declared input box bounds=\(0, 1\).*"
                                         r"GaussianMixtureProxy's bounds"):
        GaussianMixtureProxy().fit(X * 2, y)
    with pytest.raises(Exception, match="not fitted"):
        GaussianMixtureProxy().sample(3)


def test_score_prefers_the_closer_proxy_and_drives_grid_search(data):
    X, y, Xte, yte = data
    rng = np.random.RandomState(0)
    noise = ArrayProxy(rng.rand(400, 1, 8, 8).astype(np.float32), np.arange(400) % 10).fit(X, y)
    gmm = GaussianMixtureProxy(pca_components=15, mixture_components=3, random_state=0).fit(X, y)
    s_gmm, s_noise = gmm.score(Xte, yte), noise.score(Xte, yte)
    assert s_noise < s_gmm < 0
    gs = GridSearchCV(GaussianMixtureProxy(mixture_components=2, random_state=0),
                      {"pca_components": [1, 15]}, cv=2).fit(X, y)
    assert gs.best_params_ == {"pca_components": 15}


# ---------------------------------------------------------------- ArrayProxy
def test_array_proxy_from_npz_channels_last_uint8(tmp_path, data):
    X, y, _, _ = data
    images = np.round(X[:50].transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    path = tmp_path / "generated.npz"
    np.savez(path, image=images, label=y[:50])
    proxy = ArrayProxy(path=path).fit(X, y)
    np.testing.assert_allclose(proxy.X_, X[:50], atol=0.5 / 255 + 1e-6)
    Xs, ys = proxy.sample(20, random_state=0)
    assert Xs.shape == (20, 1, 8, 8) and Xs.dtype == np.float32
    # each sample is one of the stored ones, with its own label
    idx = [int(np.argmin(np.abs(proxy.X_ - x).sum(axis=(1, 2, 3)))) for x in Xs]
    np.testing.assert_array_equal(y[:50][idx], ys)
    # without replacement while the pool lasts
    Xa = proxy.sample_unlabeled(50, random_state=0)
    assert len(np.unique(Xa.reshape(50, -1), axis=0)) == len(np.unique(proxy.X_.reshape(50, -1), axis=0))


def test_array_proxy_errors(tmp_path, data):
    X, y, _, _ = data
    good = X[:30]
    cases = [
        (dict(X=good[:, :, :4], y=y[:30]), "shape"),
        (dict(X=good.astype(np.int32), y=y[:30]), "dtype"),
        (dict(X=good * 3, y=y[:30]), "outside bounds"),
        (dict(X=good, y=y[:30] + 100), "not among the training classes"),
        (dict(X=good, y=y[:29]), "proxy y have different lengths: 30 and 29"),
        (dict(X=good, y=np.zeros(30, dtype=int)), "no samples of classes"),
        (dict(X=np.full_like(good, np.nan), y=y[:30]), "NaN"),
        (dict(), "exactly one of X"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            ArrayProxy(**kwargs).fit(X, y)
    path = tmp_path / "pickled.npz"
    np.savez(path, image=np.array([{"a": 1}], dtype=object), label=np.array([0]))
    with pytest.raises(ValueError, match="pickle"):
        ArrayProxy(path=path).fit(X, y)
    path = tmp_path / "other.npz"
    np.savez(path, foo=good)
    with pytest.raises(ValueError, match="x_key"):
        ArrayProxy(path=path).fit(X, y)
    unlabeled = ArrayProxy(good).fit(X, y)
    assert unlabeled.sample_unlabeled(5, random_state=0).shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="PseudoLabeledProxy"):
        unlabeled.sample(5)


# ---------------------------------------------------------- pseudo-labelling
class ProbaFromFirstPixel:
    """A fitted two-class teacher whose P(class 1) is the sample's first value."""

    classes_ = np.array([0, 1])

    def fit(self, X, y):  # pragma: no cover - used pre-fitted
        return self

    def predict_proba(self, X):
        p = np.asarray(X).reshape(len(X), -1)[:, 0]
        return np.stack([1 - p, p], axis=1)


def test_filtering_keeps_the_top_fraction_per_class():
    rng = np.random.RandomState(0)
    X = rng.rand(200, 1, 2, 2).astype(np.float32)
    y = (X[:, 0, 0, 0] > 0.5).astype(int)
    teacher = ProbaFromFirstPixel()
    proxy = PseudoLabeledProxy(ArrayProxy(X), teacher, keep_fraction=0.3).fit(X, y)
    Xk, yk = proxy.select(X)
    p = X[:, 0, 0, 0]
    for c, conf in ((1, p), (0, 1 - p)):
        members = np.flatnonzero(y == c)
        k = int(np.ceil(0.3 * len(members)))
        top = set(np.round(np.sort(conf[members])[::-1][:k], 6))
        kept_conf = conf[np.isin(p, Xk[yk == c][:, 0, 0, 0])]
        assert (yk == c).sum() == k
        assert set(np.round(kept_conf, 6)) == top
    # sampling draws candidates from the unlabeled generator and keeps <= 30% per class
    Xs, ys = proxy.sample(40, random_state=0)
    assert np.bincount(ys).tolist() == [20, 20]
    assert proxy.kept_fraction_ <= 0.3 + 1e-9
    assert (Xs[ys == 1, 0, 0, 0] > 0.5).all() and (Xs[ys == 0, 0, 0, 0] < 0.5).all()
    with pytest.raises(ValueError, match="keep_fraction"):
        PseudoLabeledProxy(ArrayProxy(X), teacher, keep_fraction=0).fit(X, y)


def test_filtering_conditional_samples_keeps_their_labels(data):
    X, y, _, _ = data
    teacher = AdversarialClassifier(max_epochs=4, lr=1e-2, train_split=None, random_state=0)
    gmm = GaussianMixtureProxy(pca_components=10, mixture_components=2, random_state=0)
    proxy = PseudoLabeledProxy(gmm, teacher, keep_fraction=0.5, relabel=False).fit(X, y)
    assert proxy.teacher_ is not teacher  # unfitted teacher: cloned, fitted on the training data
    Xs, ys = proxy.sample(100, random_state=0)
    conf = proxy.teacher_.predict_proba(Xs)[np.arange(100), ys]
    plain = proxy.generator_.sample(100, random_state=1)
    conf_plain = proxy.teacher_.predict_proba(plain[0])[np.arange(100), plain[1]]
    assert conf.mean() > conf_plain.mean()


# ------------------------------------------------------------- diffusion
def test_diffusion_proxy_tiny_digits(data, monkeypatch):
    X, y, _, _ = data
    kw = dict(block_out_channels=(16, 32), max_epochs=2, batch_size=100, sampling_steps=3,
              sample_batch_size=64, random_state=0)
    proxy = DiffusionProxy(**kw).fit(X, y)
    assert len(proxy.loss_curve_) == 2 and np.isfinite(proxy.loss_curve_).all()
    Xs, ys = proxy.sample(30, random_state=0)
    assert Xs.shape == (30, 1, 8, 8) and Xs.dtype == np.float32
    assert Xs.min() >= 0 and Xs.max() <= 1 and set(ys) <= set(y)
    np.testing.assert_array_equal(Xs, proxy.sample(30, random_state=0)[0])
    guided = DiffusionProxy(**{**kw, "guidance_scale": 3.0, "max_epochs": 1}).fit(X, y)
    assert guided.sample(10, random_state=0)[0].shape == (10, 1, 8, 8)
    with pytest.raises(ValueError, match="label_dropout"):
        DiffusionProxy(guidance_scale=2.0, label_dropout=0.0).fit(X, y)
    with pytest.raises(ValueError, match="norm_num_groups"):
        DiffusionProxy(block_out_channels=(12, 32)).fit(X, y)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        DiffusionProxy().fit(X.reshape(len(X), -1), y)
    with pytest.raises(ValueError, match=r"every value of X is 0.5: pass bounds=\(low, high\)"):
        DiffusionProxy(bounds=None).fit(np.full_like(X, 0.5), y)  # divided by zero before
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"robustfit\[diffusion\]"):
        DiffusionProxy(**kw).fit(X, y)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_training_target_is_what_the_samplers_invert(prediction_type):
    # the target the UNet is trained on must be the output from which diffusers' DDIM step
    # recovers the clean image exactly (and, for v, diffusers' own velocity)
    diffusers = pytest.importorskip("diffusers")
    proxy = DiffusionProxy(prediction_type=prediction_type)
    scheduler = proxy._make_scheduler(diffusers)
    assert scheduler.config.prediction_type == prediction_type
    ddim = diffusers.DDIMScheduler.from_config(scheduler.config, timestep_spacing="trailing")
    ddim.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((3, 1, 8, 8), generator=gen) * 2 - 1
    noise = torch.randn((3, 1, 8, 8), generator=gen)
    for t in (100, 500, 899):
        a = scheduler.alphas_cumprod[t]
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = _training_target(prediction_type, x0, noise, a)
        recovered = ddim.step(target, torch.tensor(t), noisy, eta=0.0).pred_original_sample
        torch.testing.assert_close(recovered, x0, atol=1e-4, rtol=1e-4)
        if prediction_type == "v_prediction":
            v = scheduler.get_velocity(x0, noise, torch.full((3,), t))
            torch.testing.assert_close(target, v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_proxy_prediction_types_fit_and_sample(data, prediction_type):
    X, y, _, _ = data
    proxy = DiffusionProxy(block_out_channels=(16, 32), max_epochs=1, batch_size=100,
                           sampling_steps=3, prediction_type=prediction_type,
                           random_state=0).fit(X, y)
    assert proxy.scheduler_.config.prediction_type == prediction_type
    assert np.isfinite(proxy.loss_curve_).all()
    Xs, ys = proxy.sample(20, random_state=0)
    assert Xs.shape == (20, 1, 8, 8) and np.isfinite(Xs).all()
    assert Xs.min() >= 0 and Xs.max() <= 1
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionProxy(prediction_type="noise").fit(X, y)


# ------------------------------------------- AdversarialClassifier(proxy_data=)
def _clf(**kw):
    params = dict(max_epochs=1, lr=1e-2, batch_size=64, train_split=None, random_state=0,
                  module__width=4)
    params.update(kw)
    return AdversarialClassifier(**params)


def test_proxy_data_forms(data):
    X, y, _, _ = data
    Xp, yp = X[::-1].copy(), y[::-1].copy()
    gmm = GaussianMixtureProxy(pca_components=5, mixture_components=1, random_state=0)
    clf = _clf(proxy_data=gmm, proxy_samples=77).fit(X, y)
    assert isinstance(clf.proxy_, ProxyDistribution) and clf.proxy_ is not gmm
    assert hasattr(clf.proxy_, "mixtures_") and not hasattr(gmm, "mixtures_")
    assert clf.proxy_X_.shape == (77, 1, 8, 8)
    clf = _clf(proxy_data=(Xp, yp)).fit(X, y)
    assert clf.proxy_ is None and torch.equal(clf.proxy_X_, torch.as_tensor(Xp))
    ds = torch.utils.data.TensorDataset(torch.as_tensor(Xp), torch.as_tensor(yp))
    clf = _clf(proxy_data=ds).fit(X, y)
    assert torch.equal(clf.proxy_X_, torch.as_tensor(Xp))
    with pytest.raises(ValueError, match="proxy samples have shape"):
        _clf(proxy_data=(Xp[:, :, :4], yp)).fit(X, y)
    with pytest.raises(ValueError, match="proxy_data"):
        _clf(proxy_data="samples.npz").fit(X, y)


class _NamedDigits(torch.utils.data.Dataset):
    """(image, label) items with the labels as given: class names, floats."""

    def __init__(self, X, labels):
        self.X, self.labels = X, labels

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.labels[i]


def test_a_proxy_dataset_gives_labels_as_y_does(data):
    """A Dataset's labels are class names like y's (they went through int() before: string
    names failed with "invalid literal for int()", floats were truncated)."""
    X, y, _, _ = data
    names = np.array(list("abcdefghij"))
    clf = _clf(proxy_data=_NamedDigits(X[:50], names[y[:50]])).fit(X, names[y])
    assert clf.proxy_y_.tolist() == y[:50].tolist()
    with pytest.raises(ValueError, match=r"proxy labels: y has labels not among classes_: \[0.5"):
        _clf(proxy_data=_NamedDigits(X[:50], y[:50] + 0.5)).fit(X, y)


def test_batches_mix_real_and_proxy_in_the_ratio(data):
    X, y, _, _ = data
    Xp = np.full((500, 1, 8, 8), 0.5, dtype=np.float32)  # marked: no real digit is constant 0.5
    seen = []

    def recording_attack(module, xb, yb):
        seen.append(xb.detach().clone())
        return xb

    _clf(attack=recording_attack, proxy_data=(Xp, np.arange(500) % 10), proxy_ratio=0.25,
         max_epochs=1).fit(X, y)
    is_proxy = [(b.reshape(len(b), -1) == 0.5).all(axis=1) for b in seen]
    n_real = sum(int((~p).sum()) for p in is_proxy)
    assert n_real == len(X)  # an epoch is one pass over the real data
    for p in is_proxy[:-1]:  # full batches: 16 of 64 from the proxy
        assert len(p) == 64 and int(p.sum()) == 16
    assert abs(int(is_proxy[-1].sum()) / len(is_proxy[-1]) - 0.25) < 0.1
    loader = MixedLoader(_clf().get_dataset(X, y), torch.as_tensor(Xp), torch.zeros(500),
                         0.5, batch_size=10)
    assert len(loader) == 80 and all(len(xb) == 10 for xb, _ in list(loader)[:-1])


class _RecordingNet(torch.nn.Module):
    """A linear classifier that keeps every training input it sees."""

    def __init__(self, width=None):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("ratio, n_proxy", [(0.5, 64), (0.25, 21)])
def test_append_mixing_adds_proxy_samples_to_a_full_real_batch(data, ratio, n_proxy):
    """``proxy_mixing="append"``: every training forward pass sees a full real
    batch of ``batch_size`` plus ``round(batch_size * r / (1 - r))`` proxy
    samples (at 0.5 the batch doubles); an epoch is still one pass over the
    real data."""
    X, y, _, _ = data
    Xp = np.full((2000, 1, 8, 8), 0.5, dtype=np.float32)
    clf = _clf(module=_RecordingNet, proxy_data=(Xp, np.arange(2000) % 10), proxy_ratio=ratio,
               proxy_mixing="append").fit(X, y)
    net = clf.module_
    is_proxy = [(b.reshape(len(b), -1) == 0.5).all(axis=1) for b in net.seen]
    assert sum(int((~p).sum()) for p in is_proxy) == len(X)
    for p in is_proxy[:-1]:
        assert int((~p).sum()) == 64 and int(p.sum()) == n_proxy
    assert len(net.seen) == -(-len(X) // 64) == clf.train_batches_
    split_net = _clf(module=_RecordingNet, proxy_data=(Xp, np.arange(2000) % 10),
                     proxy_ratio=ratio).fit(X, y).module_
    assert len(split_net.seen[0]) == 64
    if ratio == 0.5:
        assert len(net.seen[0]) == 2 * len(split_net.seen[0])  # the batch seen by the module doubles


def test_append_mixing_pool_size_and_errors(data):
    from robustfit._proxy_pool import proxy_per_batch, proxy_per_epoch

    assert proxy_per_batch(128, 0.5, "append") == 128
    assert proxy_per_batch(128, 0.5) == 64
    assert proxy_per_batch(1, 0.5, "append") == 1 and proxy_per_batch(1, 0.5) == 0
    assert proxy_per_epoch(1000, 128, 0.5, "append") == 8 * 128
    assert proxy_per_epoch(1000, 128, 0.5) == 16 * 64
    X, y, _, _ = data
    proxy = GaussianMixtureProxy(pca_components=5, mixture_components=1, random_state=0)
    clf = _clf(proxy_data=proxy, proxy_mixing="append").fit(X, y)
    assert len(clf.proxy_X_) == proxy_per_epoch(len(X), 64, 0.5, "append")
    with pytest.raises(ValueError, match=r"proxy_mixing must be one of .*'concat'"):
        _clf(proxy_data=proxy, proxy_mixing="concat").fit(X, y)


class CountingProxy(GaussianMixtureProxy):
    fits = 0

    def fit(self, X, y):
        type(self).fits += 1
        return super().fit(X, y)


def test_proxy_memory_caches_fit_and_samples(data, tmp_path):
    X, y, _, _ = data
    proxy = CountingProxy(pca_components=5, mixture_components=1, random_state=0)
    CountingProxy.fits = 0
    first = _clf(proxy_data=proxy, proxy_memory=str(tmp_path)).fit(X, y)
    second = _clf(proxy_data=proxy, proxy_memory=Memory(str(tmp_path), verbose=0)).fit(X, y)
    assert CountingProxy.fits == 1
    assert torch.equal(first.proxy_X_, second.proxy_X_)
    _clf(proxy_data=proxy, proxy_memory=str(tmp_path), proxy_samples=10).fit(X, y)
    assert CountingProxy.fits == 2  # a different number of samples is a different entry


class RecordingProxy(GaussianMixtureProxy):
    """Stores the ids (first pixel) of the rows every clone is fitted on."""

    fitted_on = []

    def fit(self, X, y):
        type(self).fitted_on.append(np.round(np.asarray(X)[:, 0, 0, 0] * 1e4).astype(int))
        return super().fit(X, y)


def test_no_validation_sample_reaches_the_generator_in_grid_search(data):
    X, y, _, _ = data
    X = X[:300].copy()
    y = y[:300]
    X[:, 0, 0, 0] = np.arange(300) / 1e4  # row ids in a (blank) corner pixel
    RecordingProxy.fitted_on = []
    cv = KFold(3, shuffle=True, random_state=0)
    clf = AdversarialClassifier(
        proxy_data=RecordingProxy(pca_components=5, mixture_components=1, random_state=0),
        max_epochs=1, module__width=4, random_state=0)  # default train_split: 10% validation
    GridSearchCV(clf, {"proxy_ratio": [0.3, 0.5]}, cv=cv, refit=False).fit(X, y)
    folds = list(cv.split(X))
    assert len(RecordingProxy.fitted_on) == 2 * len(folds)
    for i, rows in enumerate(RecordingProxy.fitted_on):
        train, test = folds[i % len(folds)]
        assert len(np.intersect1d(rows, test)) == 0  # no CV validation fold
        assert set(rows) < set(train)  # and not skorch's internal validation split either
        assert len(rows) == len(train) - int(np.ceil(len(train) / 10))


def test_proxy_as_a_sampler_in_an_imblearn_pipeline(data):
    """A ProxyDistribution is an imbalanced-learn sampler: in an imblearn Pipeline it adds
    synthetic samples at fit time only, and GridSearchCV tunes it like any step."""
    imblearn_pipeline = pytest.importorskip("imblearn.pipeline")
    X, y, _, _ = data
    X, y = X[:300], y[:300]
    proxy = GaussianMixtureProxy(mixture_components=1, pca_components=8, n_samples=150,
                                 random_state=0)
    pipe = imblearn_pipeline.Pipeline([("proxy", proxy), ("clf", _clf())])
    pipe.fit(X, y)
    # 300 real + 150 synthetic samples reached the classifier: 8 batches of 64, not 5
    assert pipe.named_steps["clf"].history[-1, "train_batch_count"] == 8
    assert pipe.predict(X[:10]).shape == (10,)  # the sampler is skipped at prediction
    search = GridSearchCV(
        pipe, {"proxy__pca_components": [4, 8]}, cv=2,
        scoring=make_robust_scorer(PGD(epsilon=0.1, steps=2)),
    ).fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_params_["proxy__pca_components"] in (4, 8)
