"""Evaluation attacks on the PGD-trained MNIST model of bench_mnist.py.

For FGSM, PGD-20, PGD-50 with 5 restarts, APGD-CE, APGD-T and the
AutoAttack-style ensemble (APGD-CE then APGD-T), prints robust accuracy at
epsilon 0.3 on the 2,000 evaluation images and seconds per 1,000 images.

    python benchmarks/bench_mnist.py --methods pgd   # trains and saves the model
    python benchmarks/bench_eval.py
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import torch
from _common import mnist_split, parser

from robustfit.attacks import APGD, FGSM, PGD, AutoAttack
from robustfit.metrics import robust_accuracy

EPS = 0.3


def main():
    p = parser(__doc__)
    p.add_argument("--model", default=str(Path(__file__).parent / "results" / "mnist_pgd.pkl"))
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--targets", type=int, default=3, help="APGD-T target classes (the ensemble default)")
    args = p.parse_args()
    with open(args.model, "rb") as f:
        clf = pickle.load(f)
    _, (Xte, yte) = mnist_split(args.data)
    Xte, yte = Xte[: args.n_eval], yte[: args.n_eval]
    k = args.targets
    attacks = [
        ("FGSM", FGSM(epsilon=EPS)),
        ("PGD-20", PGD(epsilon=EPS, steps=20)),
        ("PGD-50 x5 restarts", PGD(epsilon=EPS, steps=50, restarts=5)),
        ("APGD-CE", APGD(epsilon=EPS, loss="ce")),
        (f"APGD-T ({k} targets)", APGD(epsilon=EPS, loss="dlr-targeted", n_target_classes=k)),
        (f"ensemble (APGD-CE, APGD-T {k})", AutoAttack(epsilon=EPS, n_target_classes=k)),
    ]
    print(f"model={args.model} eval images={len(Xte)} eps={EPS} threads={torch.get_num_threads()}")
    print(f"clean accuracy: {clf.score(Xte, yte):.4f}")
    print(f"{'attack':<34}{'robust acc':>11}{'s / 1000 img':>14}")
    for name, attack in attacks:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        acc = robust_accuracy(clf, Xte, yte, attack=attack)
        sec = (time.perf_counter() - t0) / len(Xte) * 1000
        print(f"{name:<34}{acc:11.4f}{sec:14.2f}", flush=True)


if __name__ == "__main__":
    main()
