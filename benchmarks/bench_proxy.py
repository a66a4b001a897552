"""Proxy distributions on data-scarce MNIST (Sehwag et al. 2022, at small scale).

Only the first 1,000 images of the bench_mnist.py training split are real
training data; evaluation is on the last 2,000 images of the 10,000-image
split. Every run is PGD-7 adversarial training at l_inf epsilon 0.3 with the
same network, epochs and attack steps:

* ``real``: the 1,000 real images only;
* ``real2x``: the same with twice the epochs, i.e. as many optimizer steps as
  the mixing runs take (they draw half of each batch from the proxy, so one
  pass over the real data takes twice as many batches);
* ``gmm``: real + GaussianMixtureProxy samples (``proxy_ratio`` 0.5; with
  ``--proxy-mixing append`` a full real batch plus a full proxy batch per
  step, as many steps as ``real``);
* ``diffusion``: real + DiffusionProxy samples (``proxy_ratio`` 0.5);
  with ``--guidance 2`` the run (and its samples' file) is named ``diffusion-w2``;
* ``gmm+filter``, ``diffusion+filter``: the same samples pseudo-labelled by a
  standard CNN trained on the 1,000 real images, keeping the most confident
  ``--keep-fraction`` of each class (Wang et al. 2023).

Each generator is fitted on the 1,000 real images only. The script prints clean
accuracy, robust accuracy under ``robust_score`` (its default
evaluation: the fast ensemble APGD-CE + APGD-T x3, with the
gradient-masking checks), the generators' training and sampling times and
their sample quality: the accuracy of a standard CNN trained on the 8,000 real
training images on the generated samples (labels = the class the sample was
generated for), and the conditional Wasserstein distance between 2,000
generated and the 2,000 held-out real images. The samples are saved as
``results/proxy_samples_<name>.npz`` (uint8 ``image`` of shape (n, 1, 28, 28)
and ``label``; ``--reuse`` loads them instead of generating again), the table
as ``results/bench_proxy.json``.

    python benchmarks/bench_proxy.py                       # all runs
    python benchmarks/bench_proxy.py --runs real,gmm --reuse
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import mnist_split, parser

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.models import MnistCNN
from robustfit.proxy import ArrayProxy, DiffusionProxy, GaussianMixtureProxy, PseudoLabeledProxy

EPS = 0.3
RESULTS = Path(__file__).parent / "results"


def make_generator(name, args):
    if name == "gmm":
        return GaussianMixtureProxy(mixture_components=10, pca_components=50,
                                    random_state=args.seed)
    channels = tuple(int(c) for c in args.diff_channels.split(","))
    return DiffusionProxy(
        block_out_channels=channels, max_epochs=args.diff_epochs, batch_size=128,
        lr=args.diff_lr, sampling_steps=args.sampling_steps, guidance_scale=args.guidance,
        prediction_type=args.prediction_type, random_state=args.seed, verbose=1,
    )


def sample_name(name, args):
    """File and run name: ``diffusion``, or ``diffusion-w2`` with guidance 2."""
    return name if name != "diffusion" or args.guidance == 1 else f"{name}-w{args.guidance:g}"


def generate(name, args, X, y):
    """Fit the generator on (X, y), draw ``args.n_proxy`` samples, save them."""
    path = RESULTS / f"proxy_samples_{sample_name(name, args)}.npz"
    if args.reuse and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            Xs = f["image"].astype(np.float32) / 255.0
            info = {k: float(f[k]) for k in ("fit_s", "sample_s") if k in f}
            return Xs, f["label"], info
    gen = make_generator(name, args)
    t0 = time.perf_counter()
    gen.fit(X, y)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Xs, ys = gen.sample(args.n_proxy, random_state=args.seed)
    sample_s = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, image=np.round(Xs * 255).astype(np.uint8), label=ys,
                        fit_s=fit_s, sample_s=sample_s)
    # train on exactly what was saved (the uint8 rounding included)
    Xs = np.round(Xs * 255).astype(np.float32) / 255.0
    return Xs, ys, {"fit_s": fit_s, "sample_s": sample_s}


def quality(judge, Xs, ys, Xte, yte, seed):
    """Judge accuracy on the samples; conditional W1 to held-out real images."""
    out = {"judge_acc": float(judge.score(Xs, ys))}
    try:
        from robustfit.metrics import conditional_wasserstein_distance
    except ImportError:  # the estimator ships with another issue
        return out
    rng = np.random.RandomState(seed)
    idx = rng.choice(len(Xs), size=min(len(Xs), len(Xte)), replace=False)
    res = conditional_wasserstein_distance(
        Xte.reshape(len(Xte), -1), yte, Xs[idx].reshape(len(idx), -1), ys[idx],
        metric="l2", method="exact", random_state=seed)
    out["cwd_l2"] = float(res.distance)
    return out


def filtered(args, Xs, Xtr, ytr):
    """Pseudo-label samples with a teacher trained on the real images; keep
    the ``args.keep_fraction`` most confident per class (Wang et al. 2023)."""
    teacher = AdversarialClassifier(MnistCNN, max_epochs=20, train_split=None,
                                    device=args.device, random_state=args.seed)
    proxy = PseudoLabeledProxy(ArrayProxy(Xs), teacher, keep_fraction=args.keep_fraction)
    proxy.fit(Xtr, ytr)
    return proxy.select(Xs)


def train_eval(name, args, Xtr, ytr, Xte, yte, proxy=None, epochs=None):
    clf = AdversarialClassifier(
        MnistCNN, module__width=16, module__hidden=100,
        attack=PGD(epsilon=EPS, steps=args.steps), max_epochs=epochs or args.epochs,
        lr=3e-3, batch_size=128, train_split=None, device=args.device,
        random_state=args.seed, proxy_data=proxy, proxy_ratio=args.proxy_ratio,
        proxy_mixing=args.proxy_mixing,
    )
    t0 = time.perf_counter()
    clf.fit(Xtr, ytr)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clean = clf.score(Xte, yte)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        robust = clf.robust_score(Xte, yte)
    eval_s = time.perf_counter() - t0
    masking = [str(w.message) for w in caught if "masking" in str(w.message).lower()
               or w.category.__name__ == "RobustnessWarning"]
    return {"run": name, "epochs": clf.max_epochs, "clean": clean, "robust": robust,
            "train_s": train_s, "eval_s": eval_s, "masking_warnings": masking}


def main():
    p = parser(__doc__)
    p.add_argument("--runs", default="real,real2x,gmm,diffusion")
    p.add_argument("--n-real", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--steps", type=int, default=7, help="PGD training steps")
    p.add_argument("--proxy-ratio", type=float, default=0.5)
    p.add_argument("--proxy-mixing", default="split", choices=("split", "append"),
                   help="'append': a full real batch plus the proxy samples (the authors' mixing)")
    p.add_argument("--n-proxy", type=int, default=10000)
    p.add_argument("--diff-channels", default="16,32,32")
    p.add_argument("--diff-epochs", type=int, default=150)
    p.add_argument("--diff-lr", type=float, default=2e-3)
    p.add_argument("--sampling-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--prediction-type", default="epsilon",
                   choices=("epsilon", "sample", "v_prediction"),
                   help="DiffusionProxy's target; 'epsilon' (the recorded figures' setting, "
                        "DiffusionProxy's default then) unless given; the library's default is "
                        "'sample'"),
    p.add_argument("--keep-fraction", type=float, default=0.5,
                   help="fraction kept per class by the '+filter' runs")
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="load saved samples if present")
    args = p.parse_args()

    (X8k, y8k), (Xte, yte) = mnist_split(args.data)
    Xtr, ytr = X8k[: args.n_real], y8k[: args.n_real]
    Xte, yte = Xte[: args.n_eval], yte[: args.n_eval]
    runs = args.runs.split(",")
    print(f"MNIST real train={len(Xtr)} eval={len(Xte)} eps={EPS} PGD-{args.steps} "
          f"epochs={args.epochs} proxy_ratio={args.proxy_ratio} mixing={args.proxy_mixing} "
          f"n_proxy={args.n_proxy} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}", flush=True)

    generators = {}
    judge = None
    for name in ("gmm", "diffusion"):
        if not any(r.split("+")[0] == name for r in runs):
            continue
        if judge is None:
            judge = AdversarialClassifier(MnistCNN, max_epochs=5, train_split=None,
                                          device=args.device, random_state=args.seed)
            judge.fit(X8k, y8k)
            print(f"judge (standard CNN on the 8,000 real training images): "
                  f"{judge.score(Xte, yte):.4f} accuracy on the held-out real images", flush=True)
        Xs, ys, info = generate(name, args, Xtr, ytr)
        info.update(quality(judge, Xs, ys, Xte, yte, args.seed))
        generators[name] = (Xs, ys, info)
        print(f"{sample_name(name, args)}: " + ", ".join(f"{k}={v:.4g}" for k, v in info.items()),
              flush=True)
        if name + "+filter" in runs:
            t0 = time.perf_counter()
            Xf, yf = filtered(args, Xs, Xtr, ytr)
            info = dict(generators[name][2], filter_s=time.perf_counter() - t0, n_kept=len(Xf))
            info.update(quality(judge, Xf, yf, Xte, yte, args.seed))
            generators[name + "+filter"] = (Xf, yf, info)
            print(f"{sample_name(name, args)}+filter: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in info.items()), flush=True)
    if judge is not None:
        ref = quality(judge, X8k[args.n_real:args.n_real + len(Xte)],
                      y8k[args.n_real:args.n_real + len(Xte)], Xte, yte, args.seed)
        print("reference, real images 1000-2999 of the training split: "
              + ", ".join(f"{k}={v:.4g}" for k, v in ref.items()), flush=True)

    rows = []
    for name in runs:
        if name in generators:
            Xs, ys, _ = generators[name]
            row = train_eval(name, args, Xtr, ytr, Xte, yte, proxy=(Xs, ys))
            row.update(generators[name][2])
            base = name.split("+")[0]
            row["run"] = sample_name(base, args) + name[len(base):]
            if base == "diffusion":
                row["guidance"] = args.guidance
        else:
            epochs = 2 * args.epochs if name == "real2x" else args.epochs
            row = train_eval(name, args, Xtr, ytr, Xte, yte, epochs=epochs)
        rows.append(row)
        print(f"{name:<10} clean={row['clean']:.4f} robust={row['robust']:.4f} "
              f"train={row['train_s']:.1f}s eval={row['eval_s']:.1f}s "
              f"masking_warnings={len(row['masking_warnings'])}", flush=True)

    print()
    print(f"{'run':<10}{'epochs':>7}{'clean':>8}{'robust':>8}{'train s':>9}"
          f"{'gen fit s':>10}{'gen sample s':>13}{'judge acc':>10}{'cwd':>8}")
    for r in rows:
        print(f"{r['run']:<10}{r['epochs']:>7}{r['clean']:8.4f}{r['robust']:8.4f}{r['train_s']:9.1f}"
              f"{r.get('fit_s', float('nan')):10.1f}{r.get('sample_s', float('nan')):13.1f}"
              f"{r.get('judge_acc', float('nan')):10.4f}{r.get('cwd_l2', float('nan')):8.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_proxy.json"
    old = json.loads(path.read_text()) if path.is_file() else {"rows": [], "commands": []}
    merged = {r["run"]: r for r in old["rows"]}  # a rerun replaces its own rows only
    merged.update({r["run"]: r for r in rows})
    out = {"args": vars(args), "threads": torch.get_num_threads(),
           "commands": old.get("commands", []) + [vars(args)], "rows": list(merged.values())}
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {RESULTS / 'bench_proxy.json'}")


if __name__ == "__main__":
    main()
