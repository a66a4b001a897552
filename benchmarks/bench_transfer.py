"""The proxy-only transfer test (Sehwag et al. 2022; robustfit issue 16, item 3).

Sehwag et al. claim that the distance of a proxy distribution to the real one
(the conditional Wasserstein distance of their bound, and ARC) predicts the
robustness *transferred* from the proxy: a classifier adversarially trained
on proxy samples only, then tested on real data. This script runs that test
on MNIST at small scale. Every source gives the same number of training
samples (``--n``, default 1,000):

* ``real-other``: real images 0-1,000 of the 10,000-image split, the images
  both generators were fitted on (written by other writers, NIST SD-3, than
  the held-out images);
* ``real-same``: real images 5,000-6,000 (the held-out images' writer pool,
  SD-1);
* ``gmm``: GaussianMixtureProxy (10 components in a 50-component PCA) fitted
  on images 0-1,000, ``--n`` balanced samples drawn with the seed;
* ``diffusion``: ``--n`` of the archived DiffusionProxy samples (16-32-32
  UNet, 150 epochs, 20 DDIM steps, fitted on images 0-1,000; 5,000 samples in
  ``--diffusion-samples``), a class-balanced subset drawn with the seed.

For each seed and source: PGD adversarial training (l_inf ``--epsilon``,
``--steps`` steps, MnistCNN, ``--epochs`` epochs, Adam with the one-cycle
schedule) on that source only; clean accuracy and robust accuracy under
``robust_score``'s default evaluation (the fast ensemble APGD-CE + APGD-T x3,
gradient-masking checks off to save time) on held-out real images 8,000 to
8,000 + ``--n-eval``. Against the held-out real images 9,000-10,000 the script
measures each source's cwd (exact, l_2 and l_inf), ARC (l_inf, seeded) and
sample quality (robustfit.metrics.sample_quality with an independent judge, a
standard MnistCNN trained on images 2,000-5,000 and 6,000-8,000). It prints
mean +- std over the seeds, the rankings, and Spearman's rank correlation of
each measure with the transferred robust accuracy. Rows are saved to
results/bench_transfer.json as they finish; ``--reuse`` skips finished rows.

    python benchmarks/bench_transfer.py                  # all sources, seeds 0,1,2
    python benchmarks/bench_transfer.py --quick          # smoke run
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import parser, quality_judge
from scipy.stats import spearmanr

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.datasets import load_mnist
from robustfit.metrics import arc_score, conditional_wasserstein_distance, sample_quality
from robustfit.models import MnistCNN
from robustfit.proxy import GaussianMixtureProxy

RESULTS = Path(__file__).resolve().parent / "results"
ARCHIVED = Path("/work/archive/certify/certify_proxy_diffusion_1000.npz")
SOURCES = ("real-other", "real-same", "gmm", "diffusion")


def balanced_subset(y, n, rng):
    """Indices of ``n`` samples, ``n // k`` of each of the ``k`` classes, drawn with ``rng``."""
    classes = np.unique(y)
    per = n // len(classes)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in classes])


def source_data(name, seed, args, X, y):
    """The training samples of one source for one seed."""
    n = args.n
    if name == "real-other":
        return X[:n], y[:n]
    if name == "real-same":
        return X[5000:5000 + n], y[5000:5000 + n]
    if name == "gmm":
        gen = GaussianMixtureProxy(mixture_components=10, pca_components=50, random_state=seed)
        gen.fit(X[:1000], y[:1000])
        return gen.sample(n, random_state=seed)
    with np.load(args.diffusion_samples, allow_pickle=False) as f:
        Xd, yd = f["image"].astype(np.float32) / 255.0, f["label"]
    idx = balanced_subset(yd, n, np.random.RandomState(seed))
    return Xd[idx], yd[idx]


def measures(Xs, ys, X_ref, y_ref, judge, seed, args):
    """cwd (l_2, l_inf), ARC and sample quality of one source against the reference images."""
    out = {}
    t0 = time.perf_counter()
    for metric in ("l2", "linf"):
        out[f"cwd_{metric}"] = float(conditional_wasserstein_distance(
            X_ref, y_ref, Xs, ys, metric=metric, method="exact").distance)
    out["cwd_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    arc = arc_score(X_ref, Xs, epsilons=args.arc_eps, max_epochs=args.arc_epochs, random_state=seed)
    out.update(arc=arc.score, arc_curve=arc.accuracy.tolist(), arc_s=time.perf_counter() - t0)
    q = sample_quality(Xs, ys, X_ref, y_ref, judge=judge)
    out.update(judge_acc=q.judge_accuracy, frechet=q.frechet_distance,
               judge_acc_per_class=q.per_class_judge_accuracy.tolist())
    return out


def train_eval(Xs, ys, X_ev, y_ev, seed, args):
    """PGD adversarial training on the source only; clean and robust accuracy on real images."""
    clf = AdversarialClassifier(
        MnistCNN, attack=PGD(epsilon=args.epsilon, steps=args.steps), max_epochs=args.epochs,
        lr=3e-3, batch_size=128, train_split=None, device="cpu", random_state=seed)
    t0 = time.perf_counter()
    clf.fit(Xs, ys)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clean = clf.score(X_ev, y_ev)
    robust = clf.robust_score(X_ev, y_ev, check=False, random_state=seed)
    return {"clean": clean, "robust": robust, "train_s": train_s, "eval_s": time.perf_counter() - t0}


def summarize(rows, sources):
    keys = ("robust", "clean", "cwd_l2", "cwd_linf", "arc", "judge_acc", "frechet")
    table = {}
    for s in sources:
        mine = [r for r in rows if r["source"] == s]
        table[s] = {k: (float(np.mean([r[k] for r in mine if k in r])),
                        float(np.std([r[k] for r in mine if k in r])),
                        sum(k in r for r in mine)) for k in keys}
    print(f"\n{'source':<12}" + "".join(f"{k:>17}" for k in keys) + "  (mean ± std over seeds)")
    for s, t in table.items():
        print(f"{s:<12}" + "".join(f"{m:>10.4f}±{sd:<6.4f}" for m, sd, _ in t.values()))
    done = [s for s in sources if table[s]["robust"][2] > 0 and table[s]["cwd_l2"][2] > 0]
    if len(done) < 3:
        return table, {}
    rob = [table[s]["robust"][0] for s in done]
    print(f"\nranking by transferred robust accuracy (best first): "
          f"{[done[i] for i in np.argsort(rob)[::-1]]}")
    corr = {}
    # lower is closer for cwd, ARC and the Frechet distance; higher judge accuracy is better
    for k, sign in (("cwd_l2", -1), ("cwd_linf", -1), ("arc", -1), ("frechet", -1), ("judge_acc", 1)):
        vals = [sign * table[s][k][0] for s in done]
        rho = float(spearmanr(vals, rob).statistic)
        corr[k] = rho
        print(f"{k:<10} ranking (closest first): {[done[i] for i in np.argsort(vals)[::-1]]}  "
              f"Spearman with robust acc. {rho:+.2f} (n={len(done)} sources)")
    return table, corr


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sources", default=",".join(SOURCES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n", type=int, default=1000, help="training samples per source")
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=5, help="PGD training steps")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--arc-eps", default="0,0.05,0.1")
    p.add_argument("--arc-epochs", type=int, default=3)
    p.add_argument("--parts", default="measures,train")
    p.add_argument("--diffusion-samples", default=str(ARCHIVED))
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    p.add_argument("--reuse", action="store_true", help="skip (source, seed, part) rows already saved")
    p.add_argument("--out", default=str(RESULTS / "bench_transfer.json"))
    args = p.parse_args()
    args.arc_eps = [float(e) for e in args.arc_eps.split(",")]
    if args.quick:
        args.n, args.epochs, args.n_eval, args.arc_epochs = 200, 1, 50, 1
    torch.set_num_threads(1)
    X, y = load_mnist(args.data, split="test")
    X_ev, y_ev = X[8000:8000 + args.n_eval], y[8000:8000 + args.n_eval]
    X_ref, y_ref = X[9000:], y[9000:]
    sources, seeds = args.sources.split(","), [int(s) for s in args.seeds.split(",")]
    parts = args.parts.split(",")
    out = Path(args.out)
    saved = json.loads(out.read_text()) if args.reuse and out.is_file() else {"rows": [], "commands": []}
    rows = {(r["source"], r["seed"]): r for r in saved["rows"]}
    print(f"MNIST proxy-only transfer: n={args.n} per source, PGD-{args.steps} eps={args.epsilon} "
          f"epochs={args.epochs}, eval {args.n_eval} held-out images (8000-), reference 9000-10000, "
          f"threads={torch.get_num_threads()} torch={torch.__version__}", flush=True)
    judge = None
    if "measures" in parts:
        t0 = time.perf_counter()
        judge, n_judge = quality_judge(X, y, epochs=1 if args.quick else 10)
        print(f"judge: standard MnistCNN on {n_judge} real images, accuracy on the reference images "
              f"{judge.score(X_ref, y_ref):.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    for seed in seeds:
        for name in sources:
            row = rows.setdefault((name, seed), {"source": name, "seed": seed})
            Xs, ys = source_data(name, seed, args, X, y)
            if "measures" in parts and not (args.reuse and "arc" in row):
                row.update(measures(Xs, ys, X_ref, y_ref, judge, seed, args))
            if "train" in parts and not (args.reuse and "robust" in row):
                row.update(train_eval(Xs, ys, X_ev, y_ev, seed, args))
            print(f"seed {seed} {name:<11} " + " ".join(
                f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"args": vars(args), "commands": saved["commands"] + [vars(args)],
                                       "rows": list(rows.values())}, indent=1))
    table, corr = summarize(list(rows.values()), sources)
    out.write_text(json.dumps({"args": vars(args), "commands": saved["commands"] + [vars(args)],
                               "rows": list(rows.values()), "table": table, "spearman": corr}, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
