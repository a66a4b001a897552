"""``compile=True`` (skorch's ``torch.compile`` parameter) with robustfit's attacks.

The training attack, the training step and the evaluation attacks all call the
one compiled ``module_``. These tests use torch.compile's ``aot_eager``
backend: it traces the module with TorchDynamo and AOTAutograd as the default
backend does, but runs the traced graph with eager kernels instead of
generating code, so it is quick on the CPU and gives eager's numbers. Whether
the default (inductor) backend pays is measured by ``benchmarks/bench_gpu.py``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from robustfit import AdversarialClassifier
from robustfit._utils import random_source
from robustfit._validation import InvalidParameterError
from robustfit.attacks import PGD, GeneratorSynth
from robustfit.metrics import robust_accuracy

KW = dict(attack=PGD(epsilon=0.1, steps=3), max_epochs=2, batch_size=64, train_split=None,
          random_state=0)


@pytest.fixture(scope="module")
def pair(digits):
    X, y = digits[0][:300], digits[1][:300]
    eager = AdversarialClassifier(**KW).fit(X, y)
    compiled = AdversarialClassifier(compile=True, compile__backend="aot_eager", **KW).fit(X, y)
    return X, y, eager, compiled


def test_compiled_training_matches_eager(pair):
    X, y, eager, compiled = pair
    assert hasattr(compiled.module_, "_orig_mod") and not hasattr(eager.module_, "_orig_mod")
    np.testing.assert_allclose(compiled.history[:, "train_loss"], eager.history[:, "train_loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(compiled.predict_proba(X[:50]), eager.predict_proba(X[:50]),
                               rtol=0, atol=1e-5)


def test_attacks_run_on_the_compiled_module(pair):
    X, y, eager, compiled = pair
    x = torch.as_tensor(X[:64])
    idx = torch.as_tensor(np.searchsorted(compiled.classes_, y[:64]))
    attack = PGD(epsilon=0.1, steps=5)
    with random_source(1):
        adv_c = attack(compiled.module_, x, idx)
    with random_source(1):
        adv_e = attack(eager.module_, x, idx)
    assert float((adv_c - x).abs().max()) <= 0.1 + 1e-6
    np.testing.assert_allclose(adv_c.numpy(), adv_e.numpy(), rtol=0, atol=1e-5)
    fixed = PGD(epsilon=0.1, steps=5, random_start=False)
    assert robust_accuracy(compiled, X[:100], y[:100], attack=fixed) == pytest.approx(
        robust_accuracy(eager, X[:100], y[:100], attack=fixed))
    # the attack weakens the compiled model: it really ran through it
    assert robust_accuracy(compiled, X[:100], y[:100], attack=fixed) < compiled.score(X[:100], y[:100])


def test_compiled_classifier_pickles_and_clones(pair):
    X, _, _, compiled = pair
    back = pickle.loads(pickle.dumps(compiled))
    np.testing.assert_allclose(back.predict_proba(X[:20]), compiled.predict_proba(X[:20]), atol=1e-6)
    params = clone(compiled).get_params()
    assert params["compile"] is True and params["compile__backend"] == "aot_eager"


def test_compile_with_a_hooked_feature_layer_is_refused(digits):
    clf = AdversarialClassifier(attack=GeneratorSynth(epsilon=0.1, feature_layer="classifier.2"),
                                compile=True, max_epochs=1)
    with pytest.raises(InvalidParameterError, match=r"compile .*feature_layer='classifier\.2'.*"
                                                    r"forward hook.*compile=False"):
        clf.fit(*digits)
