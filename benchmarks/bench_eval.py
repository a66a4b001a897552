"""Evaluation attacks on the PGD-trained MNIST model of bench_mnist.py.

Default mode: for FGSM, PGD-20, PGD-50 with 5 restarts, APGD-CE, APGD-T, the
fast ensemble (APGD-CE then APGD-T x3, robust_score's default) and, with
``--standard``, the standard AutoAttack suite (APGD-CE, APGD-T x9, FAB-T x9,
Square 5,000 queries), prints robust accuracy at epsilon 0.3 on the 2,000
evaluation images and seconds per 1,000 images (wall-clock, and CPU seconds of
the process, the steadier figure on a shared machine).

``--versus``: robustfit side by side with the reference implementation
torchattacks on the same model and the same images (default: the first 500
evaluation images, 100 iterations), in interleaved rounds (robustfit, then the
reference, then robustfit again, ...) so that both see the same load on a
shared machine. Prints per attack the median seconds and their spread over the
rounds, the speed ratio (reference seconds / robustfit seconds: above 1 means
robustfit is faster) and both robust accuracies. Seconds are wall-clock and,
as a measure less sensitive to other processes on a shared machine, the
process's CPU seconds (one thread by default, so CPU seconds are compute time).

    python benchmarks/bench_mnist.py --methods pgd   # trains and saves the model
    python benchmarks/bench_eval.py
    python benchmarks/bench_eval.py --versus apgd-ce --rounds 3
    python benchmarks/bench_eval.py --versus apgd-ce,apgd-t,fab-t,square,standard --n-eval 500
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from _common import mnist_split, parser

from robustfit import AdversarialClassifier
from robustfit._utils import random_source
from robustfit.attacks import APGD, FAB, FGSM, PGD, AutoAttack, Square
from robustfit.metrics import robust_accuracy

EPS = 0.3
VERSUS = ("apgd-ce", "apgd-t", "fab-t", "square", "standard")


def table(args, clf, Xte, yte):
    k = args.targets
    attacks = [
        ("FGSM", FGSM(epsilon=EPS)),
        ("PGD-20", PGD(epsilon=EPS, steps=20)),
        ("PGD-50 x5 restarts", PGD(epsilon=EPS, steps=50, restarts=5)),
        ("APGD-CE", APGD(epsilon=EPS, loss="ce")),
        (f"APGD-T ({k} targets)", APGD(epsilon=EPS, loss="dlr-targeted", n_target_classes=k)),
    ]
    if k == 3:
        attacks.append((AutoAttack(epsilon=EPS).label, AutoAttack(epsilon=EPS)))
    else:
        custom = AutoAttack(epsilon=EPS, version="custom", attacks=("apgd-ce", "apgd-t"),
                            n_target_classes=k)
        attacks.append((custom.label, custom))
    if args.standard:
        standard = AutoAttack(epsilon=EPS, version="standard")
        attacks.append((standard.label, standard))
    print(f"model={args.model} eval images={len(Xte)} eps={EPS} threads={torch.get_num_threads()}")
    print(f"clean accuracy: {clf.score(Xte, yte):.4f}")
    width = max(len(name) for name, _ in attacks) + 2
    print(f"{'attack':<{width}}{'robust acc':>11}{'s / 1000 img':>14}{'cpu s / 1000':>14}")
    for name, attack in attacks:
        t0, c0 = time.perf_counter(), time.process_time()
        with random_source(0):
            acc = robust_accuracy(clf, Xte, yte, attack=attack)
        sec = (time.perf_counter() - t0) / len(Xte) * 1000
        cpu = (time.process_time() - c0) / len(Xte) * 1000
        print(f"{name:<{width}}{acc:11.4f}{sec:14.2f}{cpu:14.2f}", flush=True)


def _pair(name, module, steps, queries):
    """``(robustfit attack, reference attack factory)`` for one name, in the
    configuration of AutoAttack's standard suite."""
    import torchattacks  # the reference, from the test extra

    eps, n_classes = EPS, 10
    common = {"norm": "Linf", "eps": eps, "n_restarts": 1, "seed": 0}
    if name == "apgd-ce":
        return (APGD(epsilon=eps, steps=steps),
                lambda: torchattacks.APGD(module, steps=steps, loss="ce", **common))
    if name == "apgd-t":
        return (APGD(epsilon=eps, steps=steps, loss="dlr-targeted", n_target_classes=9),
                lambda: torchattacks.APGDT(module, steps=steps, n_classes=n_classes, **common))
    if name == "fab-t":
        return (FAB(epsilon=eps, steps=steps, n_target_classes=9),
                lambda: torchattacks.FAB(module, steps=steps, multi_targeted=True,
                                         n_classes=n_classes, **common))
    if name == "square":
        return (Square(epsilon=eps, n_queries=queries, rescale_schedule=False),
                lambda: torchattacks.Square(module, n_queries=queries, resc_schedule=False,
                                            **common))
    # the standard suite; torchattacks.AutoAttack runs 10 iterations per gradient
    # attack, the reference implementation (fra31/auto-attack) 100: assemble it
    members = [_pair(m, module, steps, queries)[1] for m in ("apgd-ce", "apgd-t", "fab-t", "square")]
    ours = AutoAttack(epsilon=eps, version="custom", attacks=("apgd-ce", "apgd-t", "fab-t", "square"),
                      n_target_classes=9, steps=steps, n_queries=queries)
    return ours, lambda: torchattacks.MultiAttack([make() for make in members])


def versus(args, clf, Xte, yte):
    module = clf.module_.eval()
    device = next(module.parameters()).device
    x = torch.as_tensor(Xte, device=device)
    y = torch.as_tensor(yte, device=device).long()

    def accuracy(x_adv):
        with torch.no_grad():
            return (module(x_adv).argmax(1) == y).float().mean().item()

    names = args.versus.split(",")
    unknown = sorted(set(names) - set(VERSUS))
    if unknown:
        raise SystemExit(f"--versus: unknown {unknown}; choose among {VERSUS}")
    import torchattacks

    print(f"robustfit vs torchattacks {torchattacks.__version__}: model={args.model} "
          f"images={len(x)} eps={EPS} steps={args.steps} queries={args.queries} "
          f"rounds={args.rounds} (interleaved) threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")
    print(f"clean accuracy: {accuracy(x):.4f}")
    print(f"{'attack':<10}{'clock':<6}{'robustfit s':>13}{'reference s':>13}{'speed ratio':>13}"
          f"{'robustfit acc':>15}{'reference acc':>15}")
    for name in names:
        ours, make_ref = _pair(name, module, args.steps, args.queries)
        times = {"robustfit": [], "reference": []}
        cpu = {"robustfit": [], "reference": []}
        accs = {"robustfit": [], "reference": []}
        for r in range(args.rounds):
            order = ("robustfit", "reference") if r % 2 == 0 else ("reference", "robustfit")
            for who in order:
                t0, c0 = time.perf_counter(), time.process_time()
                if who == "robustfit":
                    with random_source(r):
                        x_adv = ours(module, x, y)
                else:
                    x_adv = make_ref()(x, y)
                times[who].append(time.perf_counter() - t0)
                cpu[who].append(time.process_time() - c0)
                accs[who].append(accuracy(x_adv))
        for clock, values in (("wall", times), ("cpu", cpu)):
            med = {k: statistics.median(v) for k, v in values.items()}
            ratios = [b / a for a, b in zip(values["robustfit"], values["reference"])]
            print(f"{name:<10}{clock:<6}{med['robustfit']:13.2f}{med['reference']:13.2f}"
                  f"{statistics.median(ratios):13.2f}{statistics.median(accs['robustfit']):15.4f}"
                  f"{statistics.median(accs['reference']):15.4f}")
            print(f"{'':<16}spread: robustfit {min(values['robustfit']):.2f}-"
                  f"{max(values['robustfit']):.2f} s, reference {min(values['reference']):.2f}-"
                  f"{max(values['reference']):.2f} s; per-round ratios "
                  + " ".join(f"{q:.2f}" for q in ratios), flush=True)
        print(f"{'':<16}accuracies per round: robustfit "
              + " ".join(f"{a:.4f}" for a in accs["robustfit"])
              + "; reference " + " ".join(f"{a:.4f}" for a in accs["reference"]), flush=True)


def main():
    p = parser(__doc__)
    p.add_argument("--model", default=str(Path(__file__).parent / "results" / "mnist_pgd.rfm"),
                   help="model saved by AdversarialClassifier.save (bench_mnist.py --save)")
    p.add_argument("--n-eval", type=int, default=None,
                   help="evaluation images (default: 2000, or 500 with --versus)")
    p.add_argument("--targets", type=int, default=3,
                   help="APGD-T target classes in the table (3: the fast ensemble's)")
    p.add_argument("--standard", action="store_true",
                   help="add the standard AutoAttack suite to the table")
    p.add_argument("--versus", default=None,
                   help=f"side by side with torchattacks: comma-separated among {VERSUS}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --versus")
    p.add_argument("--steps", type=int, default=100, help="iterations of APGD/FAB in --versus")
    p.add_argument("--queries", type=int, default=5000, help="Square queries in --versus")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    clf = AdversarialClassifier.load(args.model)
    _, (Xte, yte) = mnist_split(args.data)
    n_eval = args.n_eval or (500 if args.versus else 2000)
    Xte, yte = Xte[:n_eval], yte[:n_eval]
    if args.versus:
        versus(args, clf, Xte, yte)
    else:
        table(args, clf, Xte, yte)


if __name__ == "__main__":
    main()
