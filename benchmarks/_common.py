"""Helpers shared by the benchmark scripts: data location and the MNIST split."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from robustfit.datasets import load_mnist

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
