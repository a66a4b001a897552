"""MNIST at epsilon 0.3: standard, FGSM and PGD adversarial training.

Trains on the first 8,000 images of the 10,000-image MNIST split in
../shared/datasets/mnist and evaluates on the last 2,000: clean accuracy,
robust accuracy under PGD-50 with 5 restarts, and training time, for each
training method. All runs use the library defaults a user would keep
(MnistCNN, Adam, one-cycle learning-rate schedule) and the same epochs.

    python benchmarks/bench_mnist.py            # all three, 20 epochs
    python benchmarks/bench_mnist.py --methods pgd --epochs 10
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _common import mnist_split, parser
from skorch.helper import predefined_split

from robustfit import AdversarialClassifier
from robustfit.attacks import FGSM, PGD
from robustfit.metrics import robust_accuracy
from robustfit.models import MnistCNN

EPS = 0.3


def make(method, args):
    attack = {
        "standard": None,
        "fgsm": FGSM(epsilon=EPS),
        "pgd": PGD(epsilon=EPS, steps=args.steps),
    }[method]
    return AdversarialClassifier(
        MnistCNN, module__width=args.width, module__hidden=args.hidden, attack=attack,
        max_epochs=args.epochs, lr=args.lr, lr_schedule=args.schedule, attack_warmup=args.warmup,
        batch_size=args.batch_size, device=args.device, random_state=args.seed,
        verbose=args.verbose,
    )


def main():
    p = parser(__doc__)
    p.add_argument("--methods", default="standard,fgsm,pgd")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=7, help="PGD training steps")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--schedule", default="onecycle")
    p.add_argument("--warmup", default="auto", type=lambda v: v if v == "auto" else float(v),
                   help="attack epsilon warm-up in epochs, or 'auto' (the default)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--eval-restarts", type=int, default=5)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=0)
    p.add_argument("--save", default=str(Path(__file__).parent / "results" / "mnist_pgd.rfm"),
                   help="where to save the PGD-trained model with AdversarialClassifier.save "
                        "(bench_eval.py and bench_bound.py read it)")
    args = p.parse_args()

    (Xtr, ytr), (Xte, yte) = mnist_split(args.data)
    Xte, yte = Xte[: args.n_eval], yte[: args.n_eval]
    evaluation = PGD(epsilon=EPS, steps=args.eval_steps, restarts=args.eval_restarts)
    print(f"MNIST train={len(Xtr)} eval={len(Xte)} eps={EPS} epochs={args.epochs} "
          f"lr={args.lr} schedule={args.schedule} warmup={args.warmup} width={args.width} "
          f"threads={torch.get_num_threads()}")
    print(f"evaluation: {evaluation}")
    print(f"{'method':<10}{'clean':>8}{'robust':>8}{'train s':>9}{'eval s':>8}")
    for method in args.methods.split(","):
        clf = make(method, args)
        clf.set_params(train_split=predefined_split(
            clf.get_dataset(Xte[:500], yte[:500])))
        t0 = time.perf_counter()
        clf.fit(Xtr, ytr)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        clean = clf.score(Xte, yte)
        robust = robust_accuracy(clf, Xte, yte, attack=evaluation)
        eval_s = time.perf_counter() - t0
        curve = " ".join(f"{a:.3f}" for a in clf.history[:, "valid_acc"])
        print(f"{method:<10}{clean:8.4f}{robust:8.4f}{train_s:9.1f}{eval_s:8.1f}", flush=True)
        print(f"  clean valid acc per epoch (first 500 eval images): {curve}", flush=True)
        if method == "pgd" and args.save:
            Path(args.save).parent.mkdir(parents=True, exist_ok=True)
            # the safe format (loading runs no stored code) cannot describe the
            # predefined validation split; the saved model only evaluates
            clf.set_params(train_split=None)
            clf.save(args.save)
            print(f"  saved to {args.save}")


if __name__ == "__main__":
    main()
