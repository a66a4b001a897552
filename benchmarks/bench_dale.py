"""MNIST at epsilon 0.3: PGD adversarial training, TRADES and DALE.

Same split as bench_mnist.py (train on the first 8,000 images of the
10,000-image MNIST split in ../shared/datasets/mnist, evaluate on the last
2,000), same network, optimizer, schedule, epochs and attack steps for every
contender:

* ``pgd``    - PGD-k training, cross-entropy on the attack (Madry et al. 2018);
* ``trades`` - TRADES (Zhang et al. 2019): PGD-k on the KL term
  (``PGD(loss="kl")``) and ``CE + beta * KL``;
* ``dale``   - DALE (Robey et al. 2021): k Langevin steps and primal-dual
  training with the constraint ``clean loss <= margin``.

Prints clean accuracy, robust accuracy under ``robust_score`` (the
fast ensemble APGD-CE + APGD-T x3, with the gradient-masking checks),
robust accuracy under the authors' test attack (PGD-10, step 0.1, from
``x`` itself: column ``pgd10``), and training time for each, and for DALE
the dual variable per epoch. ``--n-train`` trains on the first N images of
the 8,000-image training split (a reduced budget); ``--checkpoints 10,20``
(with ``--epochs 20``) evaluates and records after 10 epochs too and then
continues the same training (``partial_fit``) to 20.

    python benchmarks/bench_dale.py                       # all three, 20 epochs
    python benchmarks/bench_dale.py --methods dale --temperature 1e-2 --margin 0.05

``--authors`` builds each method from :func:`robustfit.losses.dale_recipe`
instead (the authors' sampler, dual settings, SGD 0.01 with momentum 0.9 and
weight decay 3.5e-3, no epsilon warm-up; ``--epochs`` and ``--batch-size``
still apply, and the methods are ``dale``, ``dale-laplace``, ``kl-dale``,
``pgd`` and ``trades``, and ``pgd-warmup``: the authors' PGD baseline with
robustfit's default epsilon warm-up, ``attack_warmup="auto"``, instead of none;
the options of the hand-built methods are ignored):

    python benchmarks/bench_dale.py --authors --methods pgd,kl-dale --epochs 50
    python benchmarks/bench_dale.py --authors --methods pgd,trades,dale,kl-dale \
        --epochs 5 --n-train 4000 --seed 1 --json benchmarks/results/dale_authors.jsonl

``--report FILE [FILE ...]`` prints, from such JSON-lines files, the mean and
sample standard deviation over seeds of every method with its settings, and
the differences on the same seed (DALE - PGD, DALE - TRADES, KL-DALE -
TRADES, KL-DALE - PGD), without training anything:

    python benchmarks/bench_dale.py --report benchmarks/results/dale_authors.jsonl
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import mnist_split, parser
from skorch.helper import predefined_split

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD, Langevin
from robustfit.losses import TRADES, PrimalDual, dale_recipe
from robustfit.models import MnistCNN

EPS = 0.3
# the authors' test attack (advbench's PGD evaluation on MNIST): 10 steps of 0.1 from x
PGD10 = PGD(epsilon=EPS, steps=10, step_size=0.1, random_start=False)


def make(method, args):
    if args.authors:
        warmup = method == "pgd-warmup"
        recipe = dale_recipe("pgd" if warmup else method, epsilon=EPS, epochs=args.epochs, steps=args.steps,
                             batch_size=args.batch_size, schedule=args.schedule)
        recipe.pop("train_split")  # the benchmark validates on held-out images
        if warmup:  # the authors' PGD baseline plus robustfit's default epsilon warm-up
            recipe.pop("attack_warmup")
        return AdversarialClassifier(MnistCNN, device=args.device, random_state=args.seed,
                                     **recipe)
    if method == "pgd":
        attack, objective = PGD(epsilon=EPS, steps=args.steps), None
    elif method == "trades":
        attack = PGD(epsilon=EPS, steps=args.steps, loss="kl")
        objective = TRADES(beta=args.beta)
    elif method == "dale":
        attack = Langevin(epsilon=EPS, steps=args.steps, temperature=args.temperature,
                          noise=args.noise, potential=args.potential)
        objective = PrimalDual(margin=args.margin, dual_lr=args.dual_lr,
                               robust_loss=args.robust_loss, update=args.update,
                               nu_init=args.nu_init)
    else:
        raise ValueError(f"unknown method {method!r}; use pgd, trades or dale")
    return AdversarialClassifier(
        MnistCNN, attack=attack, objective=objective, max_epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, device=args.device, random_state=args.seed,
    )


PAIRS = (("dale", "pgd"), ("dale", "trades"), ("kl-dale", "trades"), ("kl-dale", "pgd"),
         ("dale", "pgd-warmup"), ("kl-dale", "pgd-warmup"))
METRICS = (("clean", "clean"), ("robust", "ensemble"), ("robust_pgd10", "PGD-10"))


def _ms(values):
    """'mean ± std' in points (sample std, ddof=1); a single value as it is."""
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():6.2f} ± {v.std(ddof=1):5.2f}" if len(v) > 1 else f"{v[0]:6.2f} (1 seed)"


def report(paths):
    """Mean ± std over seeds per method and setting, and same-seed differences."""
    records = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines()
               if line.strip()]
    groups = {}
    for r in records:
        key = (r.get("authors", False), r["epochs"], r.get("n_train"), r.get("n_eval"))
        groups.setdefault(key, []).append(r)
    for (authors, epochs, n_train, n_eval), rs in groups.items():
        print(f"\nauthors={authors} epochs={epochs} n_train={n_train} n_eval={n_eval}")
        print(f"{'method':<9}{'seeds':>7}" + "".join(f"{m:>17}" for _, m in METRICS)
              + f"{'train s':>9}")
        by = {}
        for r in rs:
            by.setdefault(r["method"], {})[r.get("seed")] = r
        for method, seeds in by.items():
            srt = [seeds[s] for s in sorted(seeds, key=str)]
            print(f"{method:<9}{','.join(str(s) for s in sorted(seeds, key=str)):>7}"
                  + "".join(f"{_ms([r.get(k, np.nan) for r in srt]):>17}" for k, _ in METRICS)
                  + f"{np.mean([r['train_s'] for r in srt]):9.0f}")
            for r in srt:
                print(f"    seed {r.get('seed')}: " + "  ".join(
                    f"{m} {r.get(k, np.nan) * 100:6.2f}" for k, m in METRICS)
                    + (f"  nu_end {r['dual_nu'][-1]:.3f}" if "dual_nu" in r else ""))
        print(f"\nsame seed, points{'':<1}" + "".join(f"{m:>17}" for _, m in METRICS))
        for a, b in PAIRS:
            common = sorted(set(by.get(a, {})) & set(by.get(b, {})), key=str)
            if not common:
                continue
            diffs = {k: [by[a][s].get(k, np.nan) - by[b][s].get(k, np.nan) for s in common]
                     for k, _ in METRICS}
            per_seed = "; ".join(
                f"seed {s}: " + " ".join(f"{diffs[k][i] * 100:+.2f}" for k, _ in METRICS)
                for i, s in enumerate(common))
            print(f"{a + ' - ' + b:<18}" + "".join(f"{_ms(diffs[k]):>17}" for k, _ in METRICS)
                  + f"   ({per_seed})")


def main():
    p = parser(__doc__)
    p.add_argument("--methods", default="pgd,trades,dale")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=7, help="attack / Langevin steps in training")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--beta", type=float, default=6.0, help="TRADES beta")
    p.add_argument("--temperature", type=float, default=1e-3, help="DALE Langevin temperature")
    p.add_argument("--noise", default="gaussian", choices=("gaussian", "laplace"))
    p.add_argument("--potential", default="ce", choices=("ce", "log1m"))
    p.add_argument("--margin", type=float, default=0.1, help="DALE constraint on the clean loss")
    p.add_argument("--dual-lr", type=float, default=0.01, help="DALE dual step size")
    p.add_argument("--update", default="batch", choices=("batch", "epoch"))
    p.add_argument("--robust-loss", default="ce", choices=("ce", "kl"))
    p.add_argument("--nu-init", type=float, default=0.0)
    p.add_argument("--authors", action="store_true",
                   help="build the methods with robustfit.losses.dale_recipe")
    p.add_argument("--schedule", default="constant", choices=("constant", "step"),
                   help="dale_recipe's learning-rate schedule (with --authors)")
    p.add_argument("--n-train", type=int, default=8000,
                   help="train on the first N images of the 8,000-image training split")
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoints", default=None,
                   help="evaluate after these epoch counts too, e.g. 10,20 (the last is --epochs)")
    p.add_argument("--no-check", action="store_true",
                   help="skip robust_score's gradient-masking checks (the score is the same)")
    p.add_argument("--json", default=None, help="append one JSON line per method to this file")
    p.add_argument("--report", nargs="+", default=None, metavar="FILE",
                   help="print mean ± std and same-seed differences from these JSON-lines files")
    args = p.parse_args()
    if args.report:
        report(args.report)
        return

    if not 1 <= args.n_train <= 8000:
        p.error(f"--n-train must be in [1, 8000], got {args.n_train}")
    (Xtr, ytr), (Xte, yte) = mnist_split(args.data)
    Xtr, ytr = Xtr[: args.n_train], ytr[: args.n_train]
    Xte, yte = Xte[: args.n_eval], yte[: args.n_eval]
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",")} if args.checkpoints
                         else {args.epochs})
    if checkpoints[0] < 1 or checkpoints[-1] != args.epochs:
        p.error(f"--checkpoints must be positive and end at --epochs {args.epochs}, "
                f"got {args.checkpoints}")
    if len(checkpoints) > 1 and args.authors and args.schedule != "constant":
        p.error("--checkpoints needs --schedule constant (the step milestones follow --epochs)")
    print(f"MNIST train={len(Xtr)} eval={len(Xte)} eps={EPS} epochs={args.epochs} "
          f"steps={args.steps} lr={0.01 if args.authors else args.lr} authors={args.authors} "
          f"threads={torch.get_num_threads()} seed={args.seed}")
    print(f"{'method':<8}{'epochs':>7}{'clean':>8}{'robust':>8}{'pgd10':>8}{'train s':>9}"
          f"{'eval s':>8}  settings")
    for method in args.methods.split(","):
        clf = make(method, args)
        clf.set_params(train_split=predefined_split(clf.get_dataset(Xte[:500], yte[:500])))
        train_s, done = 0.0, 0
        for stop in checkpoints:
            # one fit to the first checkpoint, then partial_fit to each next one: the
            # optimizer state, the dual variable and the history carry on, so the
            # record at N epochs is the same training as a run of N epochs
            clf.set_params(max_epochs=stop - done)
            t0 = time.perf_counter()
            if done == 0:
                clf.fit(Xtr, ytr)
            else:
                clf.partial_fit(Xtr, ytr)
            train_s += time.perf_counter() - t0
            done = stop
            evaluate(clf, method, args, Xtr, Xte, yte, train_s, done)


def evaluate(clf, method, args, Xtr, Xte, yte, train_s, epochs):
    """Clean accuracy, the ensemble and PGD-10; prints and appends one JSON line."""
    t0 = time.perf_counter()
    clean = clf.score(Xte, yte)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # fast ensemble (APGD-CE + APGD-T x3); the masking checks run after the score and do
        # not change it (--no-check skips them to save time)
        robust = clf.robust_score(Xte, yte, check=not args.no_check)
    pgd10 = clf.robust_score(Xte, yte, attack=PGD10, check=False)  # the authors' test attack
    eval_s = time.perf_counter() - t0
    settings = f"attack={clf.attack!r} objective={clf.objective_!r}"
    print(f"{method:<8}{epochs:7d}{clean:8.4f}{robust:8.4f}{pgd10:8.4f}{train_s:9.1f}{eval_s:8.1f}"
          f"  {settings}", flush=True)
    for w in caught:
        print(f"  warning: {w.message}")
    record = {"method": method, "clean": clean, "robust": robust, "robust_pgd10": pgd10,
              "train_s": train_s, "eval_s": eval_s, "settings": settings,
              "threads": torch.get_num_threads(), "epochs": epochs,
              "n_train": len(Xtr), "n_eval": len(Xte), "seed": args.seed,
              "authors": args.authors, "masking_checks": not args.no_check,
              "warnings": [str(w.message) for w in caught],
              "valid_acc": list(clf.history[:, "valid_acc"])}
    if isinstance(clf.objective_, PrimalDual):
        record["dual_nu"] = list(clf.history[:, "dual_nu"])
        record["clean_loss"] = list(clf.history[:, "clean_loss"])
        print("  nu per epoch: " + " ".join(f"{v:.3f}" for v in record["dual_nu"]))
        print("  clean train loss per epoch: "
              + " ".join(f"{v:.3f}" for v in record["clean_loss"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")

if __name__ == "__main__":
    main()
