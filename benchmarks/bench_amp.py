"""Are attacks under bf16 autocast as strong as in fp32?

robustfit trains with bf16 autocast on CUDA by default (``amp="auto"``), and
its training attack runs under the same autocast. This script checks that
autocast does not weaken an attack: for each seed it trains a model with
PGD-7 on the digits (the first 1,197 images), then evaluates it on the last
600 under the AutoAttack-style ensemble (APGD-CE + APGD-T) twice, with the
same random starts: once in fp32, once with the attack run under bf16
autocast. Predictions are made in fp32 in both, so only the attack's
precision differs. The target: robust accuracy within 0.5 point.

    python benchmarks/bench_amp.py                    # CUDA when present (make gpu-check)
    python benchmarks/bench_amp.py --device cpu       # CPU autocast, as a smoke check

Prints, per seed, the clean accuracy and both robust accuracies, then the mean
and standard deviation of the difference (bf16 - fp32, in points). With
``--out`` the lines also go to a file, written as they come.

``--train`` adds the question that matters for training: does a weaker
attack under bf16 make a less robust model? Per seed it trains three models
with the same seed, evaluated alike (fp32 ensemble, same random starts):

  bf16      the default on CUDA: attack and training step under bf16 autocast;
  attack32  the attack in fp32, the training step under bf16;
  fp32      everything in fp32 (``amp=None``);

and prints each model's clean and robust accuracy, its training time, and the
paired differences from ``bf16``.

    python benchmarks/bench_amp.py --train --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from robustfit import AdversarialClassifier
from robustfit._utils import autocast, random_source
from robustfit._validation import resolve_device
from robustfit.attacks import PGD, AutoAttack
from robustfit.datasets import load_digits_images
from robustfit.metrics import robust_accuracy


class FP32PGD(PGD):
    """PGD with autocast turned off while it runs: the training attack in fp32
    inside a bf16 fit."""

    def perturb(self, module, x, y):
        with torch.autocast(x.device.type, enabled=False):
            return super().perturb(module, x, y)


class AutocastAttack:
    """``attack`` run under autocast (``amp``, as AdversarialClassifier's
    ``amp``) on ``device``; its threat model is the wrapped attack's, so
    robust_accuracy checks the output against the ball and the box."""

    def __init__(self, attack, amp, device):
        self.attack, self.amp, self.device = attack, amp, device
        self.epsilon, self.norm, self.bounds = attack.epsilon, attack.norm, attack.bounds

    def __call__(self, module, x, y):
        with autocast(self.amp, self.device):
            return self.attack.perturb(module, x, y)


ARMS = {"bf16": (PGD, "bf16"), "attack32": (FP32PGD, "bf16"), "fp32": (PGD, None)}


def train(seed, device, epochs, epsilon, X, y, attack=PGD, amp="auto"):
    clf = AdversarialClassifier(attack=attack(epsilon=epsilon, steps=7), max_epochs=epochs,
                                batch_size=128, device=device, random_state=seed, amp=amp)
    return clf.fit(X, y)


def train_arms(seed, device, args, Xtr, ytr, Xte, yte, line):
    """The three models of ``--train`` for one seed; returns {arm: robust %}."""
    robust = {}
    for name, (attack, amp) in ARMS.items():
        t = time.perf_counter()
        clf = train(seed, device, args.epochs, args.epsilon, Xtr, ytr, attack, amp)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        fit_s = time.perf_counter() - t
        with random_source(seed):
            acc = robust_accuracy(clf, Xte, yte,
                                  attack=AutoAttack(epsilon=args.epsilon, steps=args.steps))
        robust[name] = 100 * acc
        line(f"seed {seed} trained {name:8s}: clean {100 * clf.score(Xte, yte):.2f}%  robust "
             f"(fp32 ensemble) {100 * acc:.2f}%  fit {fit_s:.1f} s")
    return robust


def compare(clf, X, y, epsilon, device, seed, amp="bf16", steps=100):
    """Robust accuracy of ``clf`` under the ensemble in fp32 and under ``amp``
    autocast, with the same random starts. Returns ``(fp32, amp)``."""
    attack = AutoAttack(epsilon=epsilon, steps=steps)
    with random_source(seed):
        full = robust_accuracy(clf, X, y, attack=attack)
    with random_source(seed):
        low = robust_accuracy(clf, X, y, attack=AutocastAttack(attack, amp, device))
    return full, low


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=100, help="iterations of each APGD run")
    p.add_argument("--budget", type=float, default=600.0, help="seconds; later seeds are skipped")
    p.add_argument("--out", default=None)
    p.add_argument("--train", action="store_true",
                   help="also train with the attack in bf16 / fp32 and compare the models")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    out = open(args.out, "w", buffering=1) if args.out else None

    def line(text):
        print(text, flush=True)
        if out:
            out.write(text + "\n")

    X, y = load_digits_images()
    Xtr, ytr, Xte, yte = X[:-600], y[:-600], X[-600:], y[-600:]
    line(f"bench_amp.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    line(f"  device={device}, digits: train {len(Xtr)}, evaluate {len(Xte)}; PGD-7 training "
         f"(amp='auto'), {args.epochs} epochs, l_inf eps={args.epsilon}; AutoAttack "
         f"(APGD-CE + APGD-T, {args.steps} iterations) in fp32 and under bf16 autocast")
    start = time.perf_counter()
    diffs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        if time.perf_counter() - start > args.budget:
            line(f"seed {seed}: skipped (time budget of {args.budget:.0f} s spent)")
            continue
        clf = train(seed, device, args.epochs, args.epsilon, Xtr, ytr)
        clean = clf.score(Xte, yte)
        full, low = compare(clf, Xte, yte, args.epsilon, device, seed, steps=args.steps)
        diffs.append(100 * (low - full))
        line(f"seed {seed}: clean {100 * clean:.2f}%  robust fp32 {100 * full:.2f}%  "
             f"robust bf16 {100 * low:.2f}%  difference {100 * (low - full):+.2f} points")
    if diffs:
        std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        worst = max(diffs, key=abs)
        line(f"bf16 - fp32 over {len(diffs)} seed(s): {statistics.mean(diffs):+.2f} +- {std:.2f} "
             f"points (largest {worst:+.2f}); within 0.5 point: "
             f"{'yes' if max(abs(d) for d in diffs) <= 0.5 else 'NO'}")
    if args.train:
        line(f"--train: PGD-7 training three ways ({', '.join(ARMS)}), robust accuracy under the "
             "fp32 ensemble")
        gains = {name: [] for name in ARMS if name != "bf16"}
        for seed in [int(s) for s in args.seeds.split(",")]:
            if time.perf_counter() - start > args.budget:
                line(f"seed {seed} (--train): skipped (time budget of {args.budget:.0f} s spent)")
                continue
            robust = train_arms(seed, device, args, Xtr, ytr, Xte, yte, line)
            for name in gains:
                gains[name].append(robust[name] - robust["bf16"])
        for name, diffs in gains.items():
            if diffs:
                std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                line(f"trained {name} - trained bf16, robust accuracy over {len(diffs)} seed(s): "
                     f"{statistics.mean(diffs):+.2f} +- {std:.2f} points "
                     f"({', '.join(f'{d:+.2f}' for d in diffs)})")
    line(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
