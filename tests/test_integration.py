"""How the classifier combines objectives, attacks and proxy data: schedules, seeding, cloning
and pickling of the fitted state."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from skorch.callbacks import Callback

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.losses import PrimalDual
from robustfit.metrics import TransferBound
from robustfit.proxy import GaussianMixtureProxy, PseudoLabeledProxy


class _RecordLR(Callback):
    def initialize(self):
        self.lrs = []
        return self

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:  # the learning rate this batch trains with
            self.lrs.append(net.optimizer_.param_groups[0]["lr"])


def test_schedule_follows_mixed_batches(digits_small):
    """With proxy data each batch holds fewer real samples, so an epoch has more batches; the
    learning-rate schedule must still span exactly the requested epochs."""
    Xtr, ytr, _, _ = digits_small
    rec = _RecordLR()
    AdversarialClassifier(
        proxy_data=(Xtr[:128], ytr[:128]), proxy_ratio=0.5, batch_size=64, max_epochs=2,
        lr=1.0, lr_schedule="cosine", optimizer=torch.optim.SGD, train_split=None,
        callbacks=[("rec", rec)], random_state=0,
    ).fit(Xtr[:256], ytr[:256])
    lrs = np.array(rec.lrs)
    assert len(lrs) == 2 * 8  # 256 real samples, 32 real per batch of 64
    assert np.all(np.diff(lrs) <= 1e-12), lrs  # one decay over both epochs, no restart
    assert lrs[-1] > 0 and lrs[len(lrs) // 2] < lrs[0] and lrs[len(lrs) // 2] > lrs[-1]


def test_random_state_seeds_an_unseeded_proxy(digits_small):
    Xtr, ytr, _, _ = digits_small

    def fit():
        return AdversarialClassifier(
            proxy_data=GaussianMixtureProxy(mixture_components=1, pca_components=10),
            max_epochs=1, train_split=None, random_state=3,
        ).fit(Xtr[:300], ytr[:300])

    a, b = fit(), fit()
    assert torch.equal(a.proxy_X_, b.proxy_X_)
    assert a.proxy_.random_state is not None
    # the user's parameter object is left untouched
    assert a.proxy_data.random_state is None


def test_clone_keeps_a_fitted_teacher(digits_small):
    Xtr, ytr, _, _ = digits_small
    teacher = LogisticRegression(max_iter=200).fit(Xtr.reshape(len(Xtr), -1), ytr)
    proxy = PseudoLabeledProxy(GaussianMixtureProxy(pca_components=10), teacher, keep_fraction=0.5)
    copy = clone(proxy)
    assert copy.teacher is teacher
    assert copy.generator is not proxy.generator
    unfitted = clone(PseudoLabeledProxy(GaussianMixtureProxy(), LogisticRegression()))
    assert not hasattr(unfitted.teacher, "coef_")


def test_clone_keeps_the_studied_classifier(std_clf, digits_small):
    Xtr, ytr, _, _ = digits_small
    tb = clone(TransferBound(estimator=std_clf, norm="l2", robustness_params={"steps": 3}))
    assert tb.estimator is std_clf
    tb.fit(Xtr[:20], ytr[:20])  # would raise NotFittedError with an unfitted copy
    assert tb.rob_real_.mean >= 0


def test_primal_dual_state_pickles_on_the_cpu(digits_small):
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=1), objective=PrimalDual(margin=0.0, dual_lr=0.1),
        max_epochs=1, train_split=None, random_state=0,
    ).fit(Xtr[:128], ytr[:128])
    obj = clf.objective_
    state = obj.__getstate__()
    assert torch.is_tensor(state["nu_t_"]) and state["nu_t_"].device.type == "cpu"
    assert state is not obj.__dict__
    loaded = pickle.loads(pickle.dumps(clf))
    assert loaded.objective_.nu_ == obj.nu_ > 0


def test_generator_synth_handles_a_one_sample_batch():
    """129 tabular rows with batch_size 128 leave a last batch of one sample; the default MLP
    generator has BatchNorm, which cannot train on one sample."""
    from robustfit.attacks import GeneratorSynth

    rng = np.random.RandomState(0)
    X = rng.rand(129, 6).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    clf = AdversarialClassifier(attack=GeneratorSynth(epsilon=0.1), batch_size=128, max_epochs=2,
                                train_split=None, random_state=0).fit(X, y)
    assert clf.attack_.generator_ is not None


def test_learned_state_is_pickled_with_a_map_location(digits_small):
    """attack_, objective_ and proxy_ may hold CUDA tensors; skorch reloads its
    cuda-dependent attributes with a map_location, so they must be registered there."""
    Xtr, ytr, _, _ = digits_small
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=1), max_epochs=1,
                                train_split=None).fit(Xtr[:64], ytr[:64])
    for name in ("module_", "optimizer_", "attack_", "objective_", "proxy_"):
        assert name in clf.cuda_dependent_attributes_
    state = clf.__getstate__()
    assert "attack_" not in state and "objective_" not in state
    loaded = pickle.loads(pickle.dumps(clf))
    assert loaded.attack_.get_params() == clf.attack_.get_params()
