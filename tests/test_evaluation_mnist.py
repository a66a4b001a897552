"""The evaluation on real data: a PGD-trained MNIST model (the setting of
benchmarks/bench_eval.py, scaled down to run in seconds)."""

import numpy as np
import pytest
import torch

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD, AutoAttack
from robustfit.datasets import load_mnist
from robustfit.metrics import robust_accuracy
from robustfit.models import MnistCNN


@pytest.fixture(scope="module")
def mnist_pgd(mnist_dir):
    X, y = load_mnist(mnist_dir, split="test")
    clf = AdversarialClassifier(
        MnistCNN, attack=PGD(epsilon=0.3, steps=5), max_epochs=10, train_split=None,
        random_state=0,
    ).fit(X[:4000], y[:4000])
    return clf, X[-300:], y[-300:]


def test_ensemble_not_weaker_than_pgd50_on_mnist(mnist_pgd):
    clf, X, y = mnist_pgd
    torch.manual_seed(0)
    pgd = robust_accuracy(clf, X, y, attack=PGD(epsilon=0.3, steps=50, restarts=2))
    torch.manual_seed(0)
    ens = robust_accuracy(clf, X, y, attack=AutoAttack(epsilon=0.3))
    clean = clf.score(X, y)
    # the model must be robust at all for the comparison to mean anything
    assert clean > 0.8 and pgd > 0.2
    assert ens <= pgd


def test_more_steps_do_not_raise_robust_accuracy_on_mnist(mnist_pgd):
    clf, X, y = mnist_pgd
    accs = []
    for steps in (5, 20, 50):
        torch.manual_seed(0)
        accs.append(robust_accuracy(clf, X, y, attack=PGD(epsilon=0.3, steps=steps)))
    assert np.all(np.diff(accs) <= 1 / len(X) + 1e-9), accs
