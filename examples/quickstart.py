"""Quickstart: adversarial training on scikit-learn's 8x8 digits.

Trains three copies of the same small CNN with :class:`robustfit.AdversarialClassifier`:

* standard training (``attack=None``),
* PGD adversarial training (Madry et al. 2018),
* FGSM adversarial training with a random start (Wong, Rice & Kolter 2020),

then prints their clean accuracy, their robust accuracy under two strong attacks (PGD with 50
steps and 5 random restarts, and the fast ensemble APGD-CE + APGD-T x3 that ``robust_score``
uses by default) and their training time, and saves a plot of accuracy against the attack's
l_inf budget epsilon. ``--autoattack`` adds a column for the standard AutoAttack suite (APGD-CE,
APGD-T x9, FAB-T x9, Square with 5,000 queries), the evaluation published figures call AutoAttack.

Run it from the repository root with ``make quickstart``, or directly::

    python examples/quickstart.py [--quick] [--autoattack] [--out quickstart_robustness.png]

``--quick`` trains for fewer epochs and evaluates with cheaper attacks; the test suite uses it.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from robustfit import AdversarialClassifier
from robustfit.attacks import FGSM, PGD, AutoAttack
from robustfit.datasets import load_digits_images
from robustfit.metrics import plot_robustness_curve, robustness_curve
from robustfit.models import DigitsCNN


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="few epochs and cheap attacks (a smoke test, not a result)")
    parser.add_argument("--autoattack", action="store_true",
                        help="also evaluate under the standard AutoAttack suite (slower)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs per model (default: 20, or 4 with --quick)")
    parser.add_argument("--epsilon", type=float, default=0.2,
                        help="l_inf budget for training and evaluation (default: 0.2)")
    parser.add_argument("--out", default="quickstart_robustness.png",
                        help="where to save the plot (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, 0 for torch's default (default: 1; the network "
                             "is small, and extra threads slow it down on a busy machine)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    eps = args.epsilon
    epochs = args.epochs or (4 if args.quick else 20)

    # 1797 images of shape (1, 8, 8), values in [0, 1]: robustfit's default input box.
    X, y = load_digits_images()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0
    )

    # The same network and optimizer settings for all three; only the training attack differs.
    training_attacks = {
        "standard": None,
        "PGD-7 training": PGD(epsilon=eps, steps=7),
        "FGSM training": FGSM(epsilon=eps),
    }
    # lr: this small data set trains best with a higher peak learning rate than the default 3e-3.
    models, train_time = {}, {}
    for name, attack in training_attacks.items():
        clf = AdversarialClassifier(
            module=DigitsCNN, attack=attack, max_epochs=epochs, lr=1e-2, random_state=0
        )
        start = time.perf_counter()
        clf.fit(X_train, y_train)
        train_time[name] = time.perf_counter() - start
        models[name] = clf

    # Judge robustness only by strong attacks: PGD with many steps and random restarts, and the
    # fast ensemble (APGD-CE, then targeted APGD-T towards 3 classes), which needs no step size
    # to tune. It is robust_score's default, and cheaper than the standard AutoAttack suite
    # (--autoattack), so its column is not called AutoAttack. robust_score also runs sanity
    # checks for gradient masking (check=True) and warns when one fails; they run once per
    # model, with the ensemble. The attacks draw their random starts from torch's global
    # generator: seeding it before each evaluation makes every figure repeatable, whichever
    # columns are printed.
    if args.quick:
        pgd, pgd_name = PGD(epsilon=eps, steps=10), "PGD-10"
        fast = AutoAttack(epsilon=eps, steps=10)
    else:
        pgd, pgd_name = PGD(epsilon=eps, steps=50, restarts=5), "PGD-50x5"
        fast = AutoAttack(epsilon=eps)  # version="fast"
    evaluations = [(pgd_name + " acc", pgd, False), ("fast ens. acc", fast, not args.quick)]
    if args.autoattack:
        evaluations.append(("AutoAttack acc", AutoAttack(epsilon=eps, version="standard"), False))
    print(f"digits: {len(X_train)} training / {len(X_test)} test images, "
          f"l_inf epsilon = {eps:g}, {epochs} epochs")
    header = f"{'model':<16}{'clean acc':>10}" + "".join(
        f"{title:>{len(title) + 2}}" for title, _, _ in evaluations) + f"{'train time':>12}"
    print(header)
    print("-" * len(header))
    for name, clf in models.items():
        row = f"{name:<16}{clf.score(X_test, y_test):>10.1%}"
        for title, attack, check in evaluations:
            torch.manual_seed(0)
            robust = clf.robust_score(X_test, y_test, attack=attack, check=check)
            row += f"{robust:>{len(title) + 2}.1%}"
        print(row + f"{train_time[name]:>11.1f}s")
    print(f"fast ens.: {fast.label}; robust_score's default, not the standard AutoAttack")
    if args.autoattack:
        print(f"AutoAttack: {evaluations[-1][1].label}")

    # Accuracy against the attack budget; epsilon = 0 gives the clean accuracy.
    eps_grid = np.linspace(0, 0.3, 4 if args.quick else 7)
    curve_steps = 5 if args.quick else 20
    curves = [
        robustness_curve(clf, X_test, y_test, eps_grid, attack=PGD(steps=curve_steps), label=name)
        for name, clf in models.items()
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_robustness_curve(curves, ax=ax)
    ax.axvline(eps, color="gray", linestyle=":", label=f"training epsilon {eps:g}")
    ax.set_ylabel(f"accuracy under PGD-{curve_steps}")
    ax.set_title("sklearn digits: accuracy against attack strength")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
