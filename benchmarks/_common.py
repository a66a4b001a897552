"""Helpers shared by the benchmark scripts: data location and the MNIST split."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from robustfit import AdversarialClassifier
from robustfit.datasets import load_mnist
from robustfit.models import MnistCNN

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = Path(os.environ.get("ROBUSTFIT_MNIST_DIR", REPO.parent / "shared" / "datasets" / "mnist"))


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=str(DEFAULT_MNIST), help="folder with the MNIST IDX files")
    p.add_argument("--device", default="auto")
    return p


def mnist_split(data, n_train=8000):
    """First ``n_train`` images of the 10,000-image split for training, the
    last 2,000 for evaluation (the 60,000-image training split is not on these
    machines)."""
    X, y = load_mnist(data, split="test")
    return (X[:n_train], y[:n_train]), (X[-2000:], y[-2000:])


# Indices into the 10,000-image split shared by bench_transfer.py and bench_diffusion_quality.py.
# Generators are fitted on images 0-1,000 (bench_proxy.py's real training data); the quality
# judge never sees those, the same-writer control 5,000-6,000 or the held-out last 2,000.
JUDGE_IMAGES = (slice(2000, 5000), slice(6000, 8000))


def quality_judge(X, y, seed=0, epochs=10):
    """A standard MnistCNN trained on images 2,000-5,000 and 6,000-8,000 of the split (5,000
    images): the independent judge of the sample-quality figures. Returns (judge, n_images)."""
    Xj = np.concatenate([X[s] for s in JUDGE_IMAGES])
    yj = np.concatenate([y[s] for s in JUDGE_IMAGES])
    judge = AdversarialClassifier(MnistCNN, max_epochs=epochs, lr=3e-3, train_split=None,
                                  device="cpu", random_state=seed).fit(Xj, yj)
    return judge, len(Xj)
