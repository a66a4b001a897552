"""Certified l_2 robustness of randomized smoothing on MNIST.

Data: the shared 10,000-image MNIST split; the first 8,000 images train, and
certification runs on the first ``--n-cert`` of the last 2,000 (the split of
bench_mnist.py). Network: ``MnistCNN`` (the library's small CNN), Adam with
the one-cycle schedule, batch 128. Every certificate is Cohen et al.'s
CERTIFY with ``n0=100``, ``n=--n`` (10,000 by default) and ``alpha=0.001``.

Parts (``--parts``, comma-separated):

* ``main``: certified accuracy at r = 0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0 for
  sigma 0.25, 0.5 and 1.0, with Gaussian noise training (Cohen et al. 2019)
  and with SmoothAdv training (Salman et al. 2019: ``--adv-eps`` l_2 budget,
  ``--adv-steps`` PGD steps, ``--adv-m`` noise samples, trained on all m noisy
  copies, epsilon warmed up over the first 20% of the epochs), one run per
  seed of ``--seeds`` (the seed sets the network's initialization, shuffling,
  training noise and certification noise; the certified points are the
  same);
* ``scarce``: the data-scarce claim of Sehwag et al. (2022) for certified
  accuracy: only the first ``--n-real`` training images, Gaussian training at
  sigma ``--scarce-sigma``, with no proxy data (at the same epochs, and at
  twice the epochs, i.e. the optimizer steps of the proxy runs), with
  GaussianMixtureProxy samples (fitted inside ``fit`` per seed) and with
  DiffusionProxy samples (one generator fitted on the same real images, seed
  0, its samples reused by every seed: training it once costs about 7
  minutes of CPU);
* ``speed``: certification throughput (images/s and noisy forward passes/s)
  at n = 10,000 and at n = 100,000.

Beside the measured table the script prints published MNIST figures: the
certified accuracies we computed from the per-point certification logs that
Jeong & Shin (NeurIPS 2020) released in github.com/jh-jeong/smoothing-consistency
(``data/certify/mnist/cohen/noise_*`` and
``data/certify/mnist/salman/pgd_255.0_10_10/num_4/noise_*``: LeNet trained on
the full 60,000-image training set for 90 epochs, Gaussian or SmoothAdv with
epsilon 255/256, 10 steps, m = 4; CERTIFY with n = 100,000, alpha = 0.001,
all 10,000 test images; mean of the 5 logs per setting, whose spread is at
most 0.2 points).

Results go to ``results/bench_certify.json`` (a rerun of a part replaces that
part's rows).

    python benchmarks/bench_certify.py                          # all parts
    python benchmarks/bench_certify.py --parts speed
    python benchmarks/bench_certify.py --parts main --seeds 0 --n-cert 50 --epochs 2   # smoke
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import mnist_split, parser

from robustfit import AdversarialClassifier
from robustfit.attacks import SmoothAdv
from robustfit.certify import SmoothedClassifier
from robustfit.models import MnistCNN
from robustfit.proxy import DiffusionProxy, GaussianMixtureProxy

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
RESULTS = Path(__file__).parent / "results"

#: Certified accuracy (%) at RADII computed from the logs released by Jeong & Shin
#: (2020); see the module docstring for how.
PUBLISHED = {
    ("gaussian", 0.25): (99.2, 98.5, 96.7, 93.1, 0.0, 0.0, 0.0),
    ("gaussian", 0.5): (99.2, 98.3, 96.9, 94.3, 89.8, 67.8, 0.0),
    ("gaussian", 1.0): (96.3, 94.4, 91.4, 86.8, 79.9, 59.5, 32.5),
    ("smoothadv", 0.25): (99.4, 99.0, 98.2, 96.8, 0.0, 0.0, 0.0),
    ("smoothadv", 0.5): (99.0, 98.4, 97.4, 95.7, 92.9, 81.1, 0.0),
    ("smoothadv", 1.0): (95.8, 93.8, 90.7, 86.5, 80.8, 64.4, 43.3),
}


def base(args, seed, attack=None, epochs=None, proxy=None):
    return AdversarialClassifier(
        MnistCNN, attack=attack, max_epochs=epochs or args.epochs, lr=args.lr, batch_size=128,
        train_split=None, device=args.device, random_state=seed,
        proxy_data=proxy, proxy_ratio=0.5,
    )


def smoothed(args, estimator, sigma, seed):
    return SmoothedClassifier(estimator, sigma=sigma, n0=100, n=args.n, alpha=0.001,
                              batch_size=args.batch, random_state=seed)


def certify_row(smooth, X, y, **info):
    """Fit-free: certify ``X`` and summarize."""
    t0 = time.perf_counter()
    classes, radius = smooth.certify(X)
    cert_s = time.perf_counter() - t0
    correct = classes == y
    row = dict(info)
    row.update(
        sigma=smooth.sigma, n=smooth.n, n_points=len(X),
        certified={f"{r:g}": float(np.mean(correct & (radius >= r))) for r in RADII},
        abstained=float(np.mean(classes == smooth.abstain_label_)),
        acr=float(np.mean(np.where(correct, radius, 0.0))),
        base_clean=float(smooth.estimator_.score(X, y)),
        certify_s=cert_s, images_per_s=len(X) / cert_s,
    )
    return row


def fmt_row(label, values):
    return f"{label:<34}" + "".join(f"{v:>7.1f}" for v in values)


def header(label):
    return f"{label:<34}" + "".join(f"{'r=' + format(r, 'g'):>7}" for r in RADII)


def summarize(rows, key):
    """Group rows by ``key(row)``: mean and std (ddof=1) of certified accuracy in %."""
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append([100 * r["certified"][f"{x:g}"] for x in RADII])
    return {k: (np.mean(v, axis=0), np.std(v, axis=0, ddof=1) if len(v) > 1 else None, len(v))
            for k, v in groups.items()}


def print_groups(title, groups, extra=None):
    print(f"\n{title}")
    print(header("run (mean over seeds)"))
    for k, (mean, std, count) in groups.items():
        label = " ".join(str(p) for p in (k if isinstance(k, tuple) else (k,)))
        print(fmt_row(f"{label} [{count} seed{'s' * (count > 1)}]", mean))
        if std is not None:
            print(f"{'  +- std':<34}" + "".join(f"{s:>7.1f}" for s in std))
        if extra:
            print(f"{'':<34}{extra(k)}")


# --------------------------------------------------------------------------- parts
def part_main(args, Xtr, ytr, Xc, yc):
    rows = []
    for seed in args.seeds:
        for sigma in args.sigmas:
            for method in args.methods:
                attack = None if method == "gaussian" else SmoothAdv(
                    epsilon=args.adv_eps, steps=args.adv_steps, noise_samples=args.adv_m)
                smooth = smoothed(args, base(args, seed, attack), sigma, seed)
                t0 = time.perf_counter()
                smooth.fit(Xtr, ytr)
                train_s = time.perf_counter() - t0
                row = certify_row(smooth, Xc, yc, part="main", method=method, seed=seed,
                                  epochs=args.epochs, train_s=train_s,
                                  attack=repr(smooth.estimator_.attack_))
                rows.append(row)
                print(f"main seed={seed} sigma={sigma} {method:<9} "
                      + " ".join(f"{100 * v:5.1f}" for v in row["certified"].values())
                      + f"  abstain={100 * row['abstained']:.1f}% base_clean={100 * row['base_clean']:.1f}%"
                      f" acr={row['acr']:.3f} train={train_s:.0f}s certify={row['certify_s']:.0f}s",
                      flush=True)
    return rows


def diffusion_samples(args, X, y):
    path = RESULTS / f"certify_proxy_diffusion_{args.n_real}.npz"
    if args.reuse and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return f["image"].astype(np.float32) / 255.0, f["label"], {
                k: float(f[k]) for k in ("fit_s", "sample_s")}
    # prediction_type="epsilon": the recorded figures' setting (DiffusionProxy's default then)
    gen = DiffusionProxy(block_out_channels=(16, 32, 32), max_epochs=args.diff_epochs,
                         batch_size=128, lr=2e-3, sampling_steps=20, prediction_type="epsilon",
                         random_state=0)
    t0 = time.perf_counter()
    gen.fit(X, y)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Xs, ys = gen.sample(args.n_proxy, random_state=0)
    sample_s = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    image = np.round(Xs * 255).astype(np.uint8)
    np.savez_compressed(path, image=image, label=ys, fit_s=fit_s, sample_s=sample_s)
    return image.astype(np.float32) / 255.0, ys, {"fit_s": fit_s, "sample_s": sample_s}


def part_scarce(args, Xtr, ytr, Xc, yc):
    Xr, yr = Xtr[: args.n_real], ytr[: args.n_real]
    runs = args.scarce_runs
    info = {}
    if "diffusion" in runs:
        Xd, yd, info = diffusion_samples(args, Xr, yr)
        print(f"diffusion proxy: {len(Xd)} samples, fit {info['fit_s']:.0f}s, "
              f"sampling {info['sample_s']:.0f}s", flush=True)
    rows = []
    for seed in args.seeds:
        for run in runs:
            epochs, proxy = args.scarce_epochs, None
            if run == "real2x":
                epochs = 2 * args.scarce_epochs
            elif run == "gmm":
                proxy = GaussianMixtureProxy(mixture_components=10, pca_components=50)
            elif run == "diffusion":
                proxy = (Xd, yd)
            smooth = smoothed(args, base(args, seed, epochs=epochs, proxy=proxy),
                              args.scarce_sigma, seed)
            if proxy is not None:
                smooth.set_params(estimator__proxy_samples=args.n_proxy)
            t0 = time.perf_counter()
            smooth.fit(Xr, yr)
            train_s = time.perf_counter() - t0
            row = certify_row(smooth, Xc, yc, part="scarce", run=run, seed=seed, epochs=epochs,
                              n_real=len(Xr), train_s=train_s, **(info if run == "diffusion" else {}))
            rows.append(row)
            print(f"scarce seed={seed} {run:<9} "
                  + " ".join(f"{100 * v:5.1f}" for v in row["certified"].values())
                  + f"  abstain={100 * row['abstained']:.1f}% base_clean={100 * row['base_clean']:.1f}%"
                  f" acr={row['acr']:.3f} train={train_s:.0f}s", flush=True)
    return rows


def part_speed(args, Xtr, ytr, Xc):
    clf = base(args, 0, epochs=1).fit(Xtr[:1000], ytr[:1000])
    rows = []
    for n, points in ((10_000, args.speed_points), (100_000, max(args.speed_points // 10, 1))):
        smooth = SmoothedClassifier(clf, prefit=True, sigma=0.5, n0=100, n=n, alpha=0.001,
                                    batch_size=args.batch, random_state=0).fit(Xc[:1])
        smooth.certify(Xc[:1])  # warm-up
        t0 = time.perf_counter()
        smooth.certify(Xc[:points])
        sec = time.perf_counter() - t0
        row = {"part": "speed", "n": n, "n0": 100, "points": points, "seconds": sec,
               "images_per_s": points / sec, "noisy_per_s": points * (n + 100) / sec,
               "batch_size": args.batch, "device": str(smooth.estimator_.device)}
        rows.append(row)
        print(f"speed n={n}: {points} images in {sec:.1f}s = {row['images_per_s']:.3f} images/s "
              f"({row['noisy_per_s']:.0f} noisy forward passes/s, batch {args.batch})", flush=True)
    return rows


# --------------------------------------------------------------------------- main
def main():
    p = parser(__doc__)
    p.add_argument("--parts", default="main,scarce,speed")
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--sigmas", default="0.25,0.5,1.0",
                   type=lambda s: [float(v) for v in s.split(",")])
    p.add_argument("--methods", default="gaussian,smoothadv", type=lambda s: s.split(","))
    p.add_argument("--n", type=int, default=10_000, help="CERTIFY's n")
    p.add_argument("--n-cert", type=int, default=100, help="certified test points")
    p.add_argument("--batch", type=int, default=1000, help="noisy images per forward pass")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--adv-eps", type=float, default=1.0)
    p.add_argument("--adv-steps", type=int, default=2)
    p.add_argument("--adv-m", type=int, default=2)
    p.add_argument("--n-real", type=int, default=1000)
    p.add_argument("--scarce-sigma", type=float, default=0.5)
    p.add_argument("--scarce-epochs", type=int, default=40)
    p.add_argument("--scarce-runs", default="real,real2x,gmm,diffusion",
                   type=lambda s: s.split(","))
    p.add_argument("--n-proxy", type=int, default=5000)
    p.add_argument("--diff-epochs", type=int, default=150)
    p.add_argument("--reuse", action="store_true", help="reuse saved diffusion samples")
    p.add_argument("--speed-points", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the figures use 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    (Xtr, ytr), (Xte, yte) = mnist_split(args.data)
    Xc, yc = Xte[: args.n_cert], yte[: args.n_cert]
    parts = args.parts.split(",")
    print(f"MNIST train={len(Xtr)} certified points={len(Xc)} (first of the last 2,000) "
          f"n0=100 n={args.n} alpha=0.001 epochs={args.epochs} seeds={args.seeds} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} device={args.device}",
          flush=True)
    t_start = time.perf_counter()
    rows = []
    if "main" in parts:
        rows += part_main(args, Xtr, ytr, Xc, yc)
    if "scarce" in parts:
        rows += part_scarce(args, Xtr, ytr, Xc, yc)
    if "speed" in parts:
        rows += part_speed(args, Xtr, ytr, Xc)

    main_rows = [r for r in rows if r["part"] == "main"]
    if main_rows:
        groups = summarize(main_rows, lambda r: (r["method"], f"sigma={r['sigma']:g}"))
        print_groups(f"certified accuracy (%), {len(Xc)} MNIST test points, n={args.n}, "
                     f"{args.epochs} epochs on 8,000 images", groups)
        print("\npublished (computed from Jeong & Shin 2020's released logs: LeNet, 60,000 "
              "training images, 90 epochs, n=100,000, 10,000 points)")
        print(header("run"))
        for (method, sigma), values in PUBLISHED.items():
            print(fmt_row(f"{method} sigma={sigma:g}", values))
    scarce_rows = [r for r in rows if r["part"] == "scarce"]
    if scarce_rows:
        groups = summarize(scarce_rows, lambda r: r["run"])
        print_groups(f"data-scarce: {args.n_real} real images, sigma={args.scarce_sigma:g}, "
                     f"{len(Xc)} points, n={args.n}", groups)
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_certify.json"
    old = json.loads(path.read_text()) if path.is_file() else {"rows": [], "commands": []}
    kept = [r for r in old["rows"] if r["part"] not in parts]
    out = {"commands": old.get("commands", []) + [vars(args)], "rows": kept + rows,
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    path.write_text(json.dumps(out, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
