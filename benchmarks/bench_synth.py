"""MNIST at epsilon 0.3 (or --epsilon): GeneratorSynth (Robustness-via-Synthesis) against PGD-7 and FGSM.

Same split, network, optimizer, schedule and epochs as bench_mnist.py (train on
the first 8,000 images of the 10,000-image MNIST split, evaluate on the last
2,000). Prints, for each training method, the training throughput (images/s
over the whole fit), clean accuracy and robust accuracy under robustfit's
default evaluation, the fast ensemble (APGD-CE, then
APGD-T over 3 target classes) at l_inf epsilon 0.3, beside PGD-7 (the paper's
evaluation: 7 steps of epsilon / 4, as the authors' 2/255 at 8/255), plus the outcome of the
gradient-masking checks on 500 of the evaluation images.

Methods: ``synth`` (robustfit's defaults), ``synth-train`` (``generator_step_mode="train"``:
the generator step shares the classifier's forward pass), ``synth-pub``
(``GeneratorSynth.published(epsilon)``, the authors' recipe), ``synth-cond``,
``synth2`` (``generator_every=2``), ``pgd`` (PGD-7), ``fgsm``, ``standard``.
A method may be repeated (``--methods pgd,synth,pgd,synth``) to interleave timings.

``--dataset digits`` trains DigitsCNN on scikit-learn's 8x8 digits instead (the
first 1,297 of the 1,797 images, shuffled once with seed 0, for training and the
last 500 for evaluation; lr 1e-2, batch 64). ``--json FILE`` appends one record
per method (throughput, clean, PGD-7 and ensemble accuracy, seed, settings).

    python benchmarks/bench_synth.py                              # synth, pgd, fgsm; 20 epochs
    python benchmarks/bench_synth.py --methods synth,synth2 --ot-weight 0.1
    python benchmarks/bench_synth.py --methods pgd,synth,synth-train --epochs 1 --speed-only \
        --width 32 --hidden 128                                   # the conv32-conv64-fc128 network
    python benchmarks/bench_synth.py --methods synth,synth-pub,pgd --dataset digits --epsilon 0.1 \
        --epochs 30 --seed 1 --no-masking --json benchmarks/results/synth_seeds.json
    python benchmarks/bench_synth.py --methods pgd,synth-train --epochs 1 --speed-only --profile 20
                                  # then torch.profiler over 20 more training steps per method
    python benchmarks/bench_synth.py --summarize benchmarks/results/synth_seeds.json
                                  # mean +- std over seeds, paired differences against pgd
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import torch
from _common import mnist_split, parser
from skorch.helper import predefined_split

from robustfit import AdversarialClassifier
from robustfit.attacks import FGSM, PGD, AutoAttack, GeneratorSynth
from robustfit.datasets import load_digits_images
from robustfit.metrics import check_gradient_masking, robust_accuracy
from robustfit.models import DigitsCNN, MnistCNN


def make_attack(method, args):
    eps = args.epsilon
    synth = dict(
        epsilon=eps, ot_weight=args.ot_weight, ot_blur=args.ot_blur, generator_lr=args.generator_lr,
        label_smoothing=args.label_smoothing, generator_ce_weight=args.generator_ce_weight,
    )
    return {
        "standard": lambda: None,
        "fgsm": lambda: FGSM(epsilon=eps),
        "pgd": lambda: PGD(epsilon=eps, steps=7),
        "synth": lambda: GeneratorSynth(**synth),
        "synth-train": lambda: GeneratorSynth(generator_step_mode="train", **synth),
        "synth-pub": lambda: GeneratorSynth.published(eps),
        "synth-cond": lambda: GeneratorSynth(conditional=True, **synth),
        "synth2": lambda: GeneratorSynth(generator_every=2, **synth),
    }[method]()


def profile_steps(clf, X, y, n_steps, batch_size, rows=12):
    """Time ``n_steps`` more training steps of a fitted classifier, then profile as many
    with torch.profiler; print ms per step and the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    X, y = torch.as_tensor(X), torch.as_tensor(y).long()
    batches = [(X[i:i + batch_size], y[i:i + batch_size])
               for i in range(0, n_steps * batch_size, batch_size)]

    def step(batch):
        clf.optimizer_.zero_grad()
        clf.train_step_single(batch)
        clf.optimizer_.step()

    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    print(f"  {1000 * (time.perf_counter() - t0) / n_steps:.1f} ms per training step "
          f"({n_steps} steps of {batch_size})")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches:
            step(batch)
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=30,
        max_shapes_column_width=60)
    print("\n".join("  " + line for line in table.splitlines()), flush=True)


def summarize(path):
    """Mean +- standard deviation over seeds of each (dataset, epsilon, epochs, method), and
    the per-seed (paired) difference to ``pgd`` on the same seed."""
    records = [json.loads(line) for line in open(path) if line.strip()]
    groups = {}
    for r in records:
        groups.setdefault((r["dataset"], r["epsilon"], r["epochs"], r["n_eval"]), {}).setdefault(
            r["method"], {})[r["seed"]] = r
    for (dataset, eps, epochs, n_eval), methods in groups.items():
        print(f"\n{dataset} eps={eps} epochs={epochs} eval images={n_eval}")
        print(f"{'method':<12}{'seeds':>6}{'img/s':>14}{'clean':>16}{'PGD-7':>16}{'ensemble':>16}"
              f"{'d clean':>16}{'d PGD-7':>16}{'d ensemble':>16}")
        ref = methods.get("pgd", {})
        for method, by_seed in methods.items():
            seeds = sorted(by_seed)
            cols = []
            for key, scale in (("images_per_s", 1), ("clean", 100), ("pgd7", 100), ("ensemble", 100)):
                v = np.array([by_seed[s][key] * scale for s in seeds])
                cols.append(f"{v.mean():7.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:4.1f}")
            for key in ("clean", "pgd7", "ensemble"):
                paired = [s for s in seeds if s in ref]
                d = np.array([100 * (by_seed[s][key] - ref[s][key]) for s in paired])
                cols.append(f"{d.mean():+7.2f} ± {d.std(ddof=1) if len(d) > 1 else 0:4.2f}"
                            if len(d) and method != "pgd" else f"{'':>14}")
            print(f"{method:<12}{','.join(map(str, seeds)):>6}" + "".join(f"{c:>16}" for c in cols))


def main():
    p = parser(__doc__)
    p.add_argument("--methods", default="synth,pgd,fgsm")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=None, help="default: 3e-3 (MNIST), 1e-2 (digits)")
    p.add_argument("--ot-weight", type=float, default=1.0)
    p.add_argument("--ot-blur", type=float, default=0.1)
    p.add_argument("--generator-lr", type=float, default=1e-3)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--generator-ce-weight", type=float, default=0.0)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=16,
                   help="MnistCNN width (channels of the first conv); larger networks shift the "
                        "cost from the generator to the classifier passes")
    p.add_argument("--hidden", type=int, default=100, help="MnistCNN hidden width (fc layer)")
    p.add_argument("--epsilon", type=float, default=0.3)
    p.add_argument("--speed-only", action="store_true", help="measure training throughput only")
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 (MNIST), 64 (digits)")
    p.add_argument("--no-masking", action="store_true", help="skip the gradient-masking checks")
    p.add_argument("--json", default=None, help="append one JSON record per method to this file")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after each fit, profile N more training steps (torch.profiler, top operators)")
    p.add_argument("--profile-rows", type=int, default=12, help="operators listed by --profile")
    p.add_argument("--summarize", default=None, metavar="FILE",
                   help="print mean +- std over seeds and paired differences to pgd from a --json file")
    args = p.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    eps = args.epsilon
    # the first optimizer of a process imports part of torch (about 1 s): outside every timing
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])

    if args.dataset == "digits":
        X, y = load_digits_images()
        perm = np.random.RandomState(0).permutation(len(X))
        X, y = X[perm], y[perm]
        (Xtr, ytr), (Xte, yte) = (X[:1297], y[:1297]), (X[1297:], y[1297:])
        module, module_kw, batch_size = DigitsCNN, {}, args.batch_size or 64
        args.lr = args.lr or 1e-2
    else:
        (Xtr, ytr), (Xte, yte) = mnist_split(args.data)
        module, batch_size = MnistCNN, args.batch_size or 128
        module_kw = dict(module__width=args.width, module__hidden=args.hidden)
        args.lr = args.lr or 3e-3
    Xte, yte = Xte[: args.n_eval], yte[: args.n_eval]
    evaluation = AutoAttack(epsilon=eps)
    pgd7 = PGD(epsilon=eps, steps=7, step_size=eps / 4)  # the authors: 7 steps of 2/255 at 8/255
    print(f"{args.dataset} train={len(Xtr)} eval={len(Xte)} eps={eps} epochs={args.epochs} lr={args.lr} "
          f"batch={batch_size} seed={args.seed} width={args.width} hidden={args.hidden} "
          f"threads={torch.get_num_threads()}")
    print(f"evaluation: {evaluation}; and {pgd7}")
    print(f"{'method':<12}{'img/s':>7}{'train s':>9}{'clean':>8}{'PGD-7':>8}{'robust':>8}{'eval s':>8}"
          "  masking checks")
    for method in args.methods.split(","):
        attack = make_attack(method, args)
        clf = AdversarialClassifier(
            module, attack=attack, max_epochs=args.epochs, lr=args.lr, device=args.device,
            random_state=args.seed, batch_size=batch_size, **module_kw,
            train_split=predefined_split(torch.utils.data.TensorDataset(
                torch.as_tensor(Xte[:500]), torch.as_tensor(yte[:500]).long())),
        )
        t0 = time.perf_counter()
        clf.fit(Xtr, ytr)
        train_s = time.perf_counter() - t0
        if args.speed_only:
            print(f"{method:<12}{args.epochs * len(Xtr) / train_s:7.0f}{train_s:9.1f}", flush=True)
            if args.profile:
                profile_steps(clf, Xtr, ytr, args.profile, batch_size, args.profile_rows)
            continue
        t0 = time.perf_counter()
        clean = clf.score(Xte, yte)
        robust_pgd7 = robust_accuracy(clf, Xte, yte, attack=pgd7, batch_size=256)
        robust = robust_accuracy(clf, Xte, yte, attack=evaluation, batch_size=256)
        eval_s = time.perf_counter() - t0
        checks = "not run"
        if not args.no_masking:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = check_gradient_masking(clf, Xte, yte, eps, attack=evaluation, max_samples=500)
            checks = "all passed" if report.passed else "FAILED: " + "; ".join(report.failures)
        print(f"{method:<12}{args.epochs * len(Xtr) / train_s:7.0f}{train_s:9.1f}{clean:8.4f}"
              f"{robust_pgd7:8.4f}{robust:8.4f}{eval_s:8.1f}  {checks}", flush=True)
        if attack is not None and not isinstance(attack, (PGD, FGSM)):
            print(f"  {clf.attack}", flush=True)
        curve = " ".join(f"{a:.3f}" for a in clf.history[:, "valid_acc"])
        print(f"  clean valid acc per epoch (first 500 eval images): {curve}", flush=True)
        if args.json:
            record = dict(dataset=args.dataset, method=method, seed=args.seed, epsilon=eps,
                          epochs=args.epochs, lr=args.lr, batch_size=batch_size, n_train=len(Xtr),
                          n_eval=len(Xte), images_per_s=args.epochs * len(Xtr) / train_s, train_s=train_s,
                          clean=clean, pgd7=robust_pgd7, ensemble=robust, masking=checks,
                          attack=repr(clf.attack))
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
