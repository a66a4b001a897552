"""Training recipes on MNIST at epsilon 0.3: EMA, AWP, TRADES, MART, the FGSM guard.

The MNIST split of bench_mnist.py: training on the first 8,000 images of the
10,000-image split in ../shared/datasets/mnist (10% of them held out as the
validation split), evaluation on the last 2,000. Every configuration trains
MnistCNN with the library defaults (Adam, one-cycle schedule, epsilon warm-up)
for the same number of epochs, and records robust accuracy on 500 of the
validation images under PGD-10 after every epoch (the robust-overfitting curve),
keeping the most robust epoch's weights (``RobustValidation(restore_best=True)``).
At the end it reports clean accuracy and robust accuracy under
``clf.robust_score`` (APGD-CE + APGD-T) for the last and the best epoch.
The FGSM guard's check is ``--guard-attack``: APGD-CE with ``--guard-steps``
(10) iterations, the guard's default, or ``pgd10``, the check of the earlier runs.

Each finished run is appended to a JSON file, so an interrupted benchmark keeps
what it measured; ``--report`` prints the table (mean +- sample std over seeds, and the
differences with PGD-AT on the same seed) and
draws the robust-overfitting plot from those files.

    python benchmarks/bench_recipes.py --seeds 0,1,2            # every configuration
    python benchmarks/bench_recipes.py --configs pgd,pgd_ema --seeds 0 --epochs 5
    python benchmarks/bench_recipes.py --report --plot docs/_static/robust_overfitting.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import mnist_split, parser
from skorch.callbacks import Callback, LRScheduler
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from torch.optim.lr_scheduler import MultiStepLR

from robustfit import AdversarialClassifier
from robustfit._utils import optional_import
from robustfit.attacks import APGD, FGSM, PGD
from robustfit.callbacks import RobustValidation, restore_weights, snapshot_weights
from robustfit.losses import MART, TRADES
from robustfit.models import MnistCNN
from robustfit.recipes import AWP, EMA, CollapseGuard

EPS = 0.3
#: --guard-attack -> name of the guard's check
GUARD_CHECKS = {"pgd10": "PGD-10", "apgd": "APGD-CE", "apgd-dlr": "APGD-DLR"}
RESULTS = Path(__file__).parent / "results"

#: name -> (label, keyword arguments of AdversarialClassifier); attacks are built per run
CONFIGS = {
    "pgd": ("PGD-AT", {}),
    "pgd_ema": ("PGD-AT + EMA", {"ema": "ema"}),
    "pgd_awp": ("PGD-AT + AWP", {"awp": "awp_at"}),
    "trades": ("TRADES", {"objective": "trades"}),
    "trades_awp_ema": ("TRADES + AWP + EMA", {"objective": "trades", "awp": "awp_trades", "ema": "ema"}),
    "mart": ("MART", {"objective": "mart"}),
    "fgsm": ("FGSM (large step)", {"attack": "fgsm"}),
    "fgsm_guard": ("FGSM (large step) + guard", {"attack": "fgsm", "guard": "guard"}),
    "pgd_guard": ("PGD-AT + guard (false-alarm check)", {"guard": "guard"}),
}


def build(name, args, seed, valid_set=None):
    _, spec = CONFIGS[name]
    attack = PGD(epsilon=EPS, steps=args.steps)
    kw = {}
    lr = args.lr
    if spec.get("attack") == "fgsm":
        attack = FGSM(epsilon=EPS, step_size=args.fgsm_step, random_start=not args.fgsm_zero_init)
        kw["attack_warmup"] = args.fgsm_warmup
        lr = args.fgsm_lr or args.lr
    if spec.get("objective") == "trades":
        attack = PGD(epsilon=EPS, steps=args.steps, loss="kl")
        kw["objective"] = TRADES(beta=args.beta)
    if spec.get("objective") == "mart":
        kw["objective"] = MART(beta=args.beta)
    if spec.get("ema"):
        kw["ema"] = EMA(decay=args.ema_decay)
    if spec.get("awp") == "awp_at":
        kw["awp"] = AWP(gamma=args.awp_gamma_at)
    if spec.get("awp") == "awp_trades":
        kw["awp"] = AWP(gamma=args.awp_gamma_trades)
    if spec.get("guard"):
        kw["guard"] = CollapseGuard(attack=guard_attack(args), max_samples=512, drop=args.guard_drop,
                                    on_collapse=args.guard_mode)
    valid = RobustValidation(PGD(epsilon=EPS, steps=10), max_samples=args.n_valid_robust,
                             restore_best=True)
    callbacks = [("last", KeepLast())]
    if args.milestones:  # piecewise-constant decay (Rice et al.) instead of the one-cycle schedule
        kw["lr_schedule"] = None
        milestones = [round(float(f) * args.epochs) for f in args.milestones.split(",")]
        callbacks.append(("piecewise", LRScheduler(policy=MultiStepLR, milestones=milestones,
                                                   gamma=args.decay)))
    if valid_set is not None:
        kw["train_split"] = predefined_split(Dataset(*valid_set))
    return AdversarialClassifier(
        MnistCNN, module__width=args.width, module__hidden=args.hidden, attack=attack,
        valid_attack=valid, max_epochs=args.epochs, lr=lr, batch_size=args.batch_size,
        device=args.device, random_state=seed, callbacks=callbacks, **kw,
    )


def guard_attack(args):
    """The guard's check: PGD-10 (the guard's default before APGD-CE-10 replaced it), or APGD
    (cross-entropy or DLR loss) with ``--guard-steps`` iterations; always explicit, so a record
    names its check whatever the guard's default is."""
    if args.guard_attack == "pgd10":
        return PGD(epsilon=EPS, steps=10)
    loss = "dlr" if args.guard_attack == "apgd-dlr" else "ce"
    return APGD(epsilon=EPS, steps=args.guard_steps, loss=loss)


class KeepLast(Callback):
    """Keeps a copy of the weights after every epoch (the last epoch's, once fit ends)."""

    def on_epoch_end(self, net, **kwargs):
        self.weights_ = snapshot_weights(net)


def run(name, seed, args, data):
    (Xtr, ytr), (Xte, yte) = data
    valid_set = None
    if args.n_train < len(Xtr):  # a small training set; a fixed validation set from the rest
        valid_set = (Xtr[-args.n_valid:], ytr[-args.n_valid:])
        Xtr, ytr = Xtr[:args.n_train], ytr[:args.n_train]
    clf = build(name, args, seed, valid_set)
    t0 = time.perf_counter()
    clf.fit(Xtr, ytr)
    train_s = time.perf_counter() - t0
    rv = dict(clf.callbacks_)["valid_robust_acc"]
    hist = clf.history
    epochs = len(hist)
    t0 = time.perf_counter()
    out = {
        "config": name, "label": CONFIGS[name][0], "seed": seed, "epochs": args.epochs,
        "epochs_trained": epochs, "train_s": round(train_s, 1),
        "valid_robust_acc": [row.get("valid_robust_acc") for row in hist],
        "train_loss": [row.get("train_loss") for row in hist],
        "lr": [row.get("event_lr") for row in hist] if args.milestones else None,
        "best_epoch": rv.restored_epoch_,
        "settings": {"lr": args.lr, "steps": args.steps, "beta": args.beta,
                     "ema_decay": args.ema_decay, "awp_gamma_at": args.awp_gamma_at,
                     "awp_gamma_trades": args.awp_gamma_trades, "fgsm_step": args.fgsm_step,
                     "fgsm_warmup": args.fgsm_warmup, "fgsm_lr": args.fgsm_lr,
                     "fgsm_zero_init": args.fgsm_zero_init, "guard_mode": args.guard_mode,
                     "guard_drop": args.guard_drop,
                     "guard_attack": args.guard_attack,
                     "guard_steps": args.guard_steps if args.guard_attack != "pgd10" else 10,
                     "n_train": args.n_train,
                     "n_valid": args.n_valid if args.n_train < 8000 else None,
                     "milestones": args.milestones, "decay": args.decay},
    }
    if "guard" in dict(clf.callbacks_):
        guard = dict(clf.callbacks_)["guard"]
        out["guard_robust_acc"] = [row.get("guard_robust_acc") for row in hist]
        out["collapses"] = list(guard.collapses_)
    # best epoch's weights (restored by RobustValidation), then the last epoch's
    out["clean_best"] = clf.score(Xte, yte)
    out["robust_best"] = clf.robust_score(Xte, yte, check=False)
    if rv.restored_epoch_ is not None and rv.restored_epoch_ != epochs:
        restore_weights(clf, dict(clf.callbacks_)["last"].weights_)
        out["clean_last"] = clf.score(Xte, yte)
        out["robust_last"] = clf.robust_score(Xte, yte, check=False)
    else:
        out["clean_last"], out["robust_last"] = out["clean_best"], out["robust_best"]
    out["eval_s"] = round(time.perf_counter() - t0, 1)
    return out


def _check_of(r):
    """The guard check of a record (records written before ``--guard-attack`` used PGD-10)."""
    return (r.get("settings") or {}).get("guard_attack", "pgd10")


def _load(paths):
    """The records of these files; guarded runs with a check other than PGD-10 are reported
    as configurations of their own (``fgsm_guard:apgd:10``: check and iterations)."""
    records = []
    for p in paths:
        records += json.loads(Path(p).read_text())
    for r in records:
        if r["config"] == "fgsm_guard" and _check_of(r) != "pgd10":
            r["config"] = f"fgsm_guard:{_check_of(r)}:{r['settings']['guard_steps']}"
    return records


def _configs(records):
    """name -> label of the configurations in ``records``, in the order of CONFIGS."""
    names = {name: label for name, (label, _) in CONFIGS.items()}
    for r in records:
        if r["config"] not in names:
            _, check, steps = r["config"].split(":")
            names[r["config"]] = f"{CONFIGS['fgsm_guard'][0]} ({GUARD_CHECKS[check]}-{steps})"
    return names


def _ms(values):
    """'mean ± std' in percent (sample std, ddof=1); a single value as it is."""
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():6.2f} ± {v.std(ddof=1):4.2f}" if len(v) > 1 else f"{v[0]:6.2f} (1 seed)"


def report(records, plot=None):
    """Prints mean ± std over seeds (sample std) and the paired differences with PGD-AT."""
    print(f"{'configuration':<28}{'seeds':>7}{'epochs':>9}{'clean':>17}{'robust (last)':>17}"
          f"{'robust (best ckpt)':>20}{'train s':>9}")
    configs = _configs(records)
    for name, label in configs.items():
        rs = sorted((r for r in records if r["config"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        seeds = ",".join(str(r["seed"]) for r in rs)
        ep = "/".join(str(r["epochs_trained"]) for r in rs)
        print(f"{label:<28}{seeds:>7} {ep:>8}{_ms([r['clean_last'] for r in rs]):>17}"
              f"{_ms([r['robust_last'] for r in rs]):>17}{_ms([r['robust_best'] for r in rs]):>20}"
              f"{np.mean([r['train_s'] for r in rs]):9.0f}")
        for r in rs:
            curve = " ".join("  -  " if v is None else f"{v:.3f}" for v in r["valid_robust_acc"])
            extra = f" collapses={r['collapses']}" if "collapses" in r else ""
            print(f"    seed {r['seed']}: best epoch {r['best_epoch']}, robust valid per epoch: "
                  f"{curve}{extra}")
    base = {r["seed"]: r for r in records if r["config"] == "pgd"}
    rows = []
    for name, label in configs.items():
        rs = sorted((r for r in records if r["config"] == name and r["seed"] in base),
                    key=lambda r: r["seed"])
        if name == "pgd" or not rs:
            continue
        diff = {k: [r[k] - base[r["seed"]][k] for r in rs]
                for k in ("clean_last", "robust_last", "robust_best")}
        per_seed = " ".join(f"{d * 100:+.2f}" for d in diff["robust_last"])
        rows.append(f"{label:<28}{_ms(diff['clean_last']):>17}{_ms(diff['robust_last']):>17}"
                    f"{_ms(diff['robust_best']):>20}   robust (last) per seed: {per_seed}")
    if rows:
        print(f"\npaired with PGD-AT, same seed (points){'clean':>7}{'robust (last)':>17}"
              f"{'robust (best ckpt)':>20}")
        print("\n".join(rows))
    _report_guard(records)
    if plot:
        _plot(records, plot)


def _report_guard(records):
    """FGSM with the guard against FGSM without it, seed by seed (the checks leave the
    training's random draws alone, so both runs are the same until the guard acts)."""
    plain = {r["seed"]: r for r in records if r["config"] == "fgsm"}
    for name, label in _configs(records).items():
        if name.startswith("fgsm_guard"):
            _report_guard_check(plain, label, [r for r in records if r["config"] == name])


def _report_guard_check(plain, label, records):
    guarded = sorted((r for r in records if r["seed"] in plain), key=lambda r: r["seed"])
    if not guarded:
        return
    print(f"\n{label} against FGSM, same seed")
    diffs = {k: [] for k in ("clean_last", "robust_last", "robust_best")}
    for g in guarded:
        p = plain[g["seed"]]
        n = len(g["train_loss"])
        same = sum(1 for a, b in zip(g["train_loss"], p["train_loss"]) if a == b)
        fired = f"guard fired at epoch {g['collapses']}" if g.get("collapses") else "guard never fired"
        print(f"    seed {g['seed']}: {fired}; {g['epochs_trained']} epochs trained, "
              f"train_loss equal to the unguarded run's for {same} of {n} epochs")
        print("        guard_robust_acc: " + " ".join(f"{v:.3f}" for v in g["guard_robust_acc"]))
        for name, r in (("no guard", p), ("guard", g)):
            print(f"        {name:<9} clean {r['clean_last'] * 100:6.2f}  robust (last) "
                  f"{r['robust_last'] * 100:6.2f}  robust (best ckpt) {r['robust_best'] * 100:6.2f} "
                  f"(epoch {r['best_epoch']})  train {r['train_s']:.0f} s")
        for k in diffs:
            diffs[k].append(g[k] - p[k])
    print(f"    guard - no guard (points): clean {_ms(diffs['clean_last'])}, robust (last) "
          f"{_ms(diffs['robust_last'])} [{' '.join(f'{d * 100:+.2f}' for d in diffs['robust_last'])}], "
          f"robust (best ckpt) {_ms(diffs['robust_best'])} "
          f"[{' '.join(f'{d * 100:+.2f}' for d in diffs['robust_best'])}]")


def _plot(records, path):
    plt = optional_import("matplotlib.pyplot", "the robust-overfitting plot")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, color in (("pgd", "C0"), ("trades_awp_ema", "C2"), ("fgsm", "C3"), ("fgsm_guard", "C1")):
        rs = [r for r in records if r["config"] == name]
        for i, r in enumerate(rs):
            curve = [(e + 1, v) for e, v in enumerate(r["valid_robust_acc"]) if v is not None]
            xs, ys = zip(*curve)
            ax.plot(xs, ys, color=color, alpha=0.8, lw=1.2,
                    label=CONFIGS[name][0] if i == 0 else None)
            best = r["best_epoch"]
            if best is not None:
                ax.plot([best], [r["valid_robust_acc"][best - 1]], "o", color=color, ms=5)
            ax.plot([xs[-1]], [ys[-1]], "x", color=color, ms=6)
    settings = records[0].get("settings", {}) if records else {}
    if settings.get("milestones"):
        for f in settings["milestones"].split(","):
            ax.axvline(round(float(f) * records[0]["epochs"]) + 0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("epoch" + (" (dotted: lr x 0.1)" if settings.get("milestones") else ""))
    ax.set_ylabel("robust validation accuracy (PGD-10, 500 images)")
    n_train = settings.get("n_train") or 8000
    ax.set_title(f"MNIST, eps 0.3, {n_train * 9 // 10 if n_train >= 8000 else n_train} training "
                 "images: robust validation per epoch (o best, x last)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot saved to {path}")


def main():
    p = parser(__doc__)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=7, help="PGD training steps")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--beta", type=float, default=6.0, help="TRADES and MART beta")
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--awp-gamma-at", type=float, default=1e-2)
    p.add_argument("--awp-gamma-trades", type=float, default=5e-3)
    p.add_argument("--fgsm-step", type=float, default=0.6, help="FGSM step size (2 * epsilon)")
    p.add_argument("--guard-mode", default="stop", choices=["stop", "restore"])
    p.add_argument("--guard-drop", type=float, default=0.2)
    p.add_argument("--guard-attack", default="apgd", choices=["pgd10", "apgd", "apgd-dlr"],
                   help="the guard's check: PGD-10 (the earlier default), APGD-CE or APGD-DLR")
    p.add_argument("--guard-steps", type=int, default=10,
                   help="iterations of the APGD check (10: the guard's default)")
    p.add_argument("--fgsm-lr", type=float, default=None, help="learning rate of the FGSM runs")
    p.add_argument("--fgsm-zero-init", action="store_true", help="FGSM without random start")
    p.add_argument("--fgsm-warmup", default="auto", type=lambda v: v if v == "auto" else float(v),
                   help="epsilon warm-up of the FGSM runs, in epochs, or 'auto'")
    p.add_argument("--n-valid-robust", type=int, default=500)
    p.add_argument("--n-train", type=int, default=8000,
                   help="train on the first N of the 8,000 training images; below 8,000 the "
                        "validation set is the last --n-valid of them (else 10%% held out)")
    p.add_argument("--n-valid", type=int, default=1000)
    p.add_argument("--milestones", default=None,
                   help="piecewise-constant lr: decay by --decay at these fractions of the "
                        "epochs (e.g. 0.5,0.75), instead of the one-cycle schedule")
    p.add_argument("--decay", type=float, default=0.1)
    p.add_argument("--n-eval", type=int, default=2000, help="evaluation images (of the last 2,000)")
    p.add_argument("--out", default=str(RESULTS / "recipes.json"))
    p.add_argument("--report", nargs="*", default=None, help="print the table from these JSON files")
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.report is not None:
        report(_load(args.report or [args.out]), args.plot)
        return
    (Xtr, ytr), (Xte, yte) = mnist_split(args.data)
    data = (Xtr, ytr), (Xte[: args.n_eval], yte[: args.n_eval])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(out.read_text()) if out.exists() else []
    print(f"MNIST train={min(args.n_train, len(data[0][0]))} eval={len(data[1][0])} eps={EPS} epochs={args.epochs} "
          f"threads={torch.get_num_threads()} -> {out}", flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.configs.split(","):
            if any(r["config"] == name and r["seed"] == seed and r["epochs"] == args.epochs
                   and (name != "fgsm_guard" or _check_of(r) == args.guard_attack)
                   for r in records):
                continue
            r = run(name, seed, args, data)
            records.append(r)
            out.write_text(json.dumps(records, indent=1))
            print(f"{r['label']:<28} seed {seed}: clean {r['clean_last']:.4f} robust last "
                  f"{r['robust_last']:.4f} best {r['robust_best']:.4f} (epoch {r['best_epoch']}) "
                  f"train {r['train_s']:.0f}s eval {r['eval_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
