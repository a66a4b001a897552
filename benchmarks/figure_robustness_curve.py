"""The robustness-curve figure of the README and docs/evaluation.rst.

Trains the two digit models of docs/evaluation.rst's script (a standard CNN and one PGD-7-trained
at l_inf epsilon 0.1, 20 epochs each, the same split), prints their robust accuracy under APGD-CE
(100 steps) at each epsilon, the table on that page, and saves the curves as a PNG::

    python benchmarks/figure_robustness_curve.py    # writes docs/_static/robustness_curve.png

About a minute on one CPU thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.datasets import load_digits_images
from robustfit.metrics import plot_robustness_curve, robustness_curve

EPSILONS = [0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "_static"
                                        / "robustness_curve.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    X, y = load_digits_images()
    idx = np.random.default_rng(0).permutation(len(X))
    X, y = X[idx], y[idx]
    X_train, y_train, X_test, y_test = X[:1400], y[:1400], X[1400:], y[1400:]
    standard = AdversarialClassifier(max_epochs=20, device="cpu", random_state=0)
    standard.fit(X_train, y_train)
    robust = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=7), max_epochs=20,
                                   device="cpu", random_state=0).fit(X_train, y_train)

    torch.manual_seed(0)
    # No attack= : APGD-CE (100 steps) in each model's norm and box (l_inf on [0, 1]).
    curves = {"standard": robustness_curve(standard, X_test, y_test, EPSILONS),
              "PGD-7 trained (epsilon 0.1)": robustness_curve(robust, X_test, y_test, EPSILONS)}
    print(f"{'epsilon':<28}" + "".join(f"{e:>7g}" for e in EPSILONS) + "  mean (area)")
    for name, curve in curves.items():
        print(f"{name:<28}" + "".join(f"{a:>7.3f}" for a in curve.accuracies)
              + f"  {curve.area:.3f}")

    fig, ax = plt.subplots(figsize=(6, 4))
    plot_robustness_curve(curves, ax=ax)
    ax.axvline(0.1, color="gray", linestyle=":", label="training epsilon 0.1")
    ax.set_ylabel("accuracy under APGD-CE (100 steps)")
    ax.set_title(f"sklearn digits, {len(X_test)} test images: robustness curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
