"""Selecting synthetic samples for adversarial training, on data-scarce MNIST.

The setting of bench_proxy.py: the first 1,000 images of the bench_mnist.py
training split are the only real training data, evaluation is on the last
2,000 images of the 10,000-image split, and every run is PGD-7 adversarial
training at l_inf ``--eps`` with the same network, epochs and learning rate,
half of every batch from the proxy pool (``proxy_ratio`` 0.5) in the proxy
runs. The proxy samples are the ``--samples`` file (default: 5,000
DiffusionProxy samples fitted on the same 1,000 images, 500 per class). Runs:

* ``real``: the 1,000 real images only;
* ``all``: + every diffusion sample;
* ``arc``: + the ``--keep-fraction`` of each class that a robust
  real-vs-synthetic discriminator finds hardest to tell from real
  (``SelectedProxy(selection="arc")``: PGD-trained at ``--arc-eps``,
  2-fold cross-fitted, scored by its probability of "real");
* ``random``: + a random subset of each class of the same size;
* ``confidence``: + the same number per class with the highest probability of
  their own label under a standard CNN trained on the 1,000 real images
  (``SelectedProxy(selection="confidence")``);
* ``gmm`` (optional): + as many GaussianMixtureProxy samples (10 components
  on 50 PCA components, fitted on the 1,000 real images with each seed);
* ``real2x`` (optional): real images only, twice the epochs, i.e. as many
  optimizer steps as the proxy runs take (half of each of their batches is
  synthetic, so a pass over the real images takes twice the batches).

Every selection is made again with each seed (discriminators, random subset
and teacher seeded by it), then trained with that seed. Robust accuracy is
``robust_score``'s (the fast ensemble APGD-CE + APGD-T x3); the masking checks
run only with ``--check``. The script prints mean ± std over the seeds and
the paired differences (same seed) against ``random`` and against ``real``,
and writes every row to ``results/bench_select.json`` as it finishes
(``--summary`` prints the tables of that file again).

    python benchmarks/bench_select.py --seeds 0,1,2
    python benchmarks/bench_select.py --summary
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import mnist_split, parser

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.models import MnistCNN
from robustfit.proxy import ArrayProxy, GaussianMixtureProxy, SelectedProxy

RESULTS = Path(__file__).parent / "results"
DEFAULT_SAMPLES = "/work/archive/certify/certify_proxy_diffusion_1000.npz"


def load_samples(path):
    with np.load(path, allow_pickle=False) as f:
        return f["image"].astype(np.float32) / 255.0, np.asarray(f["label"])


def select(kind, args, seed, Xs, ys, Xtr, ytr):
    """The kept samples of one selection, and what it cost."""
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "all":
        X, y, info = Xs, ys, {}
    elif kind == "gmm":
        gen = GaussianMixtureProxy(mixture_components=10, pca_components=50, random_state=seed).fit(Xtr, ytr)
        X, y = gen.sample(int(args.keep_fraction * len(Xs)), random_state=seed)
        info = {}
    else:
        teacher = AdversarialClassifier(MnistCNN, max_epochs=20, train_split=None, device=args.device,
                                        random_state=seed) if kind == "confidence" else None
        proxy = SelectedProxy(
            ArrayProxy(Xs, ys), selection=kind, keep_fraction=args.keep_fraction, teacher=teacher,
            epsilon=args.arc_eps, cv=2,
            arc_params={"max_epochs": args.arc_epochs, "attack_steps": 7, "device": args.device},
            random_state=seed,
        ).fit(Xtr, ytr)
        X, y = proxy.X_selected_, proxy.y_selected_
        info = {"support": proxy.support_.tolist(),
                "score_kept_mean": float(proxy.scores_[proxy.support_].mean()),
                "score_all_mean": float(proxy.scores_.mean())}
    info.update(select_s=time.perf_counter() - t0, select_cpu_s=time.process_time() - c0, n_proxy=len(X))
    return X, y, info


def train_eval(args, seed, Xtr, ytr, Xte, yte, proxy, epochs):
    clf = AdversarialClassifier(
        MnistCNN, module__width=16, module__hidden=100,
        attack=PGD(epsilon=args.eps, steps=7), max_epochs=epochs,
        lr=3e-3, batch_size=128, train_split=None, device=args.device,
        random_state=seed, proxy_data=proxy, proxy_ratio=0.5,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    clf.fit(Xtr, ytr)
    out = {"train_s": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0}
    t0, c0 = time.perf_counter(), time.process_time()
    out["clean"] = float(clf.score(Xte, yte))
    out["robust"] = float(clf.robust_score(Xte, yte, check=args.check))
    out.update(eval_s=time.perf_counter() - t0, eval_cpu_s=time.process_time() - c0)
    return out


def _ms(v):
    v = np.asarray(v, dtype=float) * 100
    return f"{v.mean():6.2f} ± {v.std(ddof=1) if len(v) > 1 else float('nan'):5.2f}"


def summary(rows, runs):
    """Mean ± std (ddof 1) per run; paired differences against random and real."""
    by = {}
    for r in rows:
        by.setdefault(r["run"], {})[r["seed"]] = r
    order = ["real", "real2x", "all", "arc", "random", "confidence", "gmm"]
    runs = [r for r in runs if r in by] + [r for r in order if r in by and r not in runs]
    runs += [r for r in by if r not in runs]
    print(f"\n{'run':<11}{'seeds':>6}{'clean %':>17}{'robust %':>17}{'judge acc %':>13}")
    for name in runs:
        rs = list(by[name].values())
        judge = [r["judge_acc"] for r in rs if "judge_acc" in r]
        print(f"{name:<11}{len(rs):>6}{_ms([r['clean'] for r in rs]):>17}{_ms([r['robust'] for r in rs]):>17}"
              f"{(f'{100 * np.mean(judge):.1f}' if judge else ''):>13}")
    for ref in ("random", "real"):
        if ref not in by:
            continue
        print(f"\npaired differences against {ref} (points; mean ± std over seeds; paired t, "
              "|t| > 4.30 for p < 0.05 two-sided at 3 seeds; per seed)")
        for name in runs:
            seeds = sorted(set(by[name]) & set(by[ref]))
            if name == ref or not seeds:
                continue
            for key in ("robust", "clean"):
                d = np.asarray([by[name][s][key] - by[ref][s][key] for s in seeds])
                t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 and d.std() > 0 else float("nan")
                print(f"  {name:<11}{key:<7}{_ms(d)}  t={t:6.2f}  " + " ".join(f"{100 * x:+.2f}" for x in d))


def main():
    p = parser(__doc__)
    p.add_argument("--runs", default="real,all,arc,random,confidence")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samples", default=DEFAULT_SAMPLES)
    p.add_argument("--n-real", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--keep-fraction", type=float, default=0.5)
    p.add_argument("--arc-eps", type=float, default=0.1, help="the discriminator's training budget")
    p.add_argument("--arc-epochs", type=int, default=5)
    p.add_argument("--check", action="store_true", help="also run robust_score's masking checks")
    p.add_argument("--json", default=str(RESULTS / "bench_select.json"))
    p.add_argument("--summary", action="store_true", help="print the tables of --json and exit")
    args = p.parse_args()
    path = Path(args.json)
    runs = args.runs.split(",")
    old = json.loads(path.read_text()) if path.is_file() else {"rows": [], "commands": []}
    if args.summary:
        summary(old["rows"], runs)
        return

    (X8k, y8k), (Xte, yte) = mnist_split(args.data)
    Xtr, ytr = X8k[: args.n_real], y8k[: args.n_real]
    Xs, ys = load_samples(args.samples)
    print(f"MNIST real train={len(Xtr)} eval={len(Xte)} eps={args.eps} PGD-7 epochs={args.epochs} "
          f"samples={len(Xs)} keep_fraction={args.keep_fraction} arc_eps={args.arc_eps} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}", flush=True)
    judge = AdversarialClassifier(MnistCNN, max_epochs=5, train_split=None, device=args.device, random_state=0)
    judge.fit(X8k, y8k)
    print(f"judge (standard CNN on the 8,000 real training images): {judge.score(Xte, yte):.4f} on the "
          f"held-out images, {judge.score(Xs, ys):.4f} on all samples", flush=True)

    command = {k: v for k, v in vars(args).items() if k != "summary"}
    old["commands"].append(command)
    rows = [r for r in old["rows"]]
    for seed in (int(s) for s in args.seeds.split(",")):
        supports = {}
        for name in runs:
            epochs = 2 * args.epochs if name == "real2x" else args.epochs
            row = {"run": name, "seed": seed, "eps": args.eps, "epochs": epochs}
            proxy = None
            if name not in ("real", "real2x"):
                Xp, yp, info = select(name, args, seed, Xs, ys, Xtr, ytr)
                if "support" in info:
                    supports[name] = set(info.pop("support"))
                row.update(info, judge_acc=float(judge.score(Xp, yp)))
                proxy = (Xp, yp)
            row.update(train_eval(args, seed, Xtr, ytr, Xte, yte, proxy, epochs))
            if name in supports:
                row["overlap"] = {k: len(supports[name] & v) / len(v) for k, v in supports.items() if k != name}
            rows = [r for r in rows if (r["run"], r["seed"]) != (name, seed)] + [row]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"commands": old["commands"], "rows": rows}, indent=2))
            print(f"seed {seed} {name:<11} clean={row['clean']:.4f} robust={row['robust']:.4f} "
                  f"judge={row.get('judge_acc', float('nan')):.4f} train={row['train_s']:.0f}s "
                  f"(cpu {row['train_cpu_s']:.0f}s) eval={row['eval_s']:.0f}s (cpu {row['eval_cpu_s']:.0f}s) "
                  f"select={row.get('select_s', 0):.0f}s", flush=True)
    summary(rows, runs)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
