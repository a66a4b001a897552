"""The robustness-transfer bound and ARC on MNIST (Sehwag et al., ICLR 2022).

For each proxy (samples saved by bench_proxy.py in
benchmarks/results/proxy_samples_{gmm,diffusion}.npz, or fitted here when they
are missing) against the held-out real MNIST images (last 2,000 of the split):

- the conditional Wasserstein distance (l_2 and l_inf ground costs, exact OT)
  and its floor, the cwd between two disjoint sets of real images of the same
  size;
- ARC: the normalized area under a PGD-trained real-vs-synthetic
  discriminator's robust accuracy over epsilon in {0, 0.025, 0.05, 0.1} (l_inf);
- for a PGD-trained MNIST model (--model, default benchmarks/results/mnist_pgd.rfm,
  read with AdversarialClassifier.load, never unpickled; bench_mnist.py pickles a
  module=MnistCNN model, which must first be rebuilt as module=SmallCNN with the
  same weights and saved with AdversarialClassifier.save; or trained here):
  average l_inf robustness Rob on real and on proxy samples, their gap and the
  cwd bound (--bound-only: this table alone, for the draw --seed);
- the time of each, and a table of the cwd methods (exact, Sinkhorn, sliced)
  against exact, with the time of 10,000 vs 10,000 images.

Run: python benchmarks/bench_bound.py --data ../shared/datasets/mnist
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from _common import mnist_split, parser

from robustfit import AdversarialClassifier
from robustfit.datasets import load_mnist
from robustfit.metrics import (
    TransferBound,
    arc_score,
    conditional_wasserstein_distance,
    robust_accuracy,
)

ARC_EPS = [0.0, 0.025, 0.05, 0.1]
RESULTS = Path(__file__).resolve().parent / "results"


def load_samples(name, folder, path=None):
    path = Path(path) if path else Path(folder) / f"proxy_samples_{name}.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        X, y = data["image"], data["label"]   # bench_proxy.py's format: uint8 images
    X = X.astype(np.float32) / 255 if X.dtype == np.uint8 else X.astype(np.float32)
    return X.reshape(-1, 1, 28, 28), np.asarray(y)


def fit_gmm(X, y, n, seed):
    """GaussianMixtureProxy from robustfit.proxy when it exists; else per-class
    sklearn GaussianMixture (10 diagonal components) in the pixel space."""
    try:
        from robustfit.proxy import GaussianMixtureProxy

        # bench_proxy.py's settings
        proxy = GaussianMixtureProxy(mixture_components=10, pca_components=50, random_state=seed).fit(X, y)
        return (proxy.sample(n, random_state=seed),
                f"robustfit.proxy.GaussianMixtureProxy(10 components, 50 PCA), {len(X)} real images")
    except ImportError:
        from sklearn.mixture import GaussianMixture

        rng = np.random.RandomState(seed)
        classes, counts = np.unique(y, return_counts=True)
        per = rng.multinomial(n, counts / counts.sum())
        xs, ys = [], []
        for c, k in zip(classes, per):
            gm = GaussianMixture(10, covariance_type="diag", random_state=seed).fit(X[y == c].reshape(-1, 784))
            xs.append(gm.sample(k)[0])
            ys.append(np.full(k, c))
        Xs = np.clip(np.concatenate(xs), 0, 1).astype(np.float32).reshape(-1, 1, 28, 28)
        return (Xs, np.concatenate(ys)), "bench-local per-class GaussianMixture(10, diag)"


def pgd_model(X_train, y_train, epochs, model=None):
    # saved with AdversarialClassifier.save and read with its safe loader (no unpickling)
    paths = [Path(model)] if model else [RESULTS / "mnist_pgd.rfm", RESULTS / f"bench_bound_pgd{epochs}.rfm"]
    for path in paths:
        if path.exists():
            return AdversarialClassifier.load(path), str(path)
    from robustfit.attacks import PGD
    from robustfit.models import SmallCNN

    # MnistCNN's network as a class, so that AdversarialClassifier.save can describe it
    clf = AdversarialClassifier(module=SmallCNN, module__width=16, module__hidden=100,
                                module__input_size=28, attack=PGD(epsilon=0.3, steps=7), max_epochs=epochs,
                                random_state=0, device="cpu").fit(X_train, y_train)
    RESULTS.mkdir(exist_ok=True)
    clf.save(path)
    return clf, f"trained here: PGD-7 eps 0.3, {epochs} epochs on the 8,000 training images"


def methods_table(X, y, X_ev, y_ev, proxy):
    """Each cwd method against exact on 2,000 vs 2,000 images; then 10,000 vs 10,000."""
    Xp, yp = proxy
    print("cwd methods against exact: held-out real (2,000) vs proxy samples (2,000)")
    print(f"{'metric':6s} {'method':9s} {'cwd':>9s} {'vs exact':>9s} {'time':>6s}")
    out = {}
    for metric in ("l2", "linf"):
        exact = None
        for method in ("exact", "sinkhorn", "sliced"):
            if method == "sliced" and metric != "l2":
                continue
            t = time.perf_counter()
            d = conditional_wasserstein_distance(X_ev, y_ev, Xp, yp, metric=metric, method=method,
                                                 random_state=0).distance
            dt = time.perf_counter() - t
            exact = d if exact is None else exact
            out[f"{metric}_{method}"] = (d, dt)
            print(f"{metric:6s} {method:9s} {d:9.4f} {100 * (d / exact - 1):+8.2f}% {dt:5.1f}s")
    # 10,000 vs 10,000: the whole split against 10,000 proxy-like samples (the split
    # itself, shifted by uniform noise, since the proxies give 2,000 here)
    noisy = np.clip(X + np.random.RandomState(0).uniform(-0.1, 0.1, X.shape), 0, 1).astype(np.float32)
    for metric in ("l2", "linf"):
        t = time.perf_counter()
        d = conditional_wasserstein_distance(X, y, noisy, y, metric=metric).distance
        dt = time.perf_counter() - t
        out[f"10k_{metric}"] = (d, dt)
        print(f"10,000 vs 10,000 MNIST images, {metric}, method='auto' (exact): cwd {d:.4f} in {dt:.1f}s")
    return out


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n-rob", type=int, default=500, help="images per side for Rob and its bound")
    p.add_argument("--arc-epochs", type=int, default=5)
    p.add_argument("--model-epochs", type=int, default=10, help="epochs if mnist_pgd.rfm is missing")
    p.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    p.add_argument("--samples", default=str(RESULTS), help="folder of bench_proxy.py's samples and json")
    p.add_argument("--model", default=None,
                   help="PGD model saved by AdversarialClassifier.save (default: results/mnist_pgd.rfm)")
    p.add_argument("--diffusion-file", default=None,
                   help="npz of DiffusionProxy samples (uint8 image, label) instead of --samples's")
    p.add_argument("--gmm-real", type=int, default=None,
                   help="fit the Gaussian mixture here on the first N training images (bench_proxy: 1000)")
    p.add_argument("--seed", type=int, default=0,
                   help="draw of the Rob subsets (real and samples side) and of the fitted mixture")
    p.add_argument("--bound-only", action="store_true",
                   help="only the Rob / gap / cwd bound table (no cwd table, ARC, check or methods)")
    p.add_argument("--only-methods", action="store_true", help="only the table of cwd methods vs exact")
    args = p.parse_args()
    (X_tr, y_tr), (X_ev, y_ev) = mnist_split(args.data)
    if args.quick:
        X_ev, y_ev, args.n_rob, args.model_epochs = X_ev[:600], y_ev[:600], 100, 2
    n = len(X_ev)
    proxies, notes = {}, {}
    # floors: real images from the training part, as many as the held-out set. The
    # MNIST test split's first 5,000 images come from other writers (NIST SD-3,
    # Census employees) than its last 5,000 (SD-1, students), and the held-out
    # images are SD-1: images 5,000-7,000 share their writers, images 0-2,000 do not.
    proxies["real, same wr."] = (X_tr[5000:5000 + n], y_tr[5000:5000 + n])
    notes["real, same wr."] = f"training images 5000-{5000 + n} (same writer pool as the held-out images)"
    proxies["real, other wr."] = (X_tr[:n], y_tr[:n])
    notes["real, other wr."] = f"training images 0-{n} (other writers: NIST SD-3)"
    for name in ("gmm", "diffusion"):
        file = args.diffusion_file if name == "diffusion" else None
        s = None if name == "gmm" and args.gmm_real else load_samples(name, args.samples, file)
        if s is not None:
            proxies[name] = (s[0][:n], s[1][:n])
            notes[name] = file or str(Path(args.samples) / f"proxy_samples_{name}.npz")
        elif name == "gmm":
            t = time.perf_counter()
            m = args.gmm_real or len(X_tr)
            proxies[name], notes[name] = fit_gmm(X_tr[:m], y_tr[:m], n, args.seed)
            notes[name] += f" (fitted here in {time.perf_counter() - t:.1f} s)"
        else:
            notes[name] = "missing: no proxy_samples_diffusion.npz (run bench_proxy.py)"
    if args.only_methods:
        methods_table(*load_mnist(args.data, split="test"), X_ev, y_ev, proxies["gmm"])
        return
    print("real: last", n, "images of the MNIST split; proxies:")
    for k, v in notes.items():
        print(f"  {k:16s} {v}")

    rows = {name: {"source": notes[name]} for name in proxies}
    rows["seed"] = args.seed
    if args.bound_only:
        rob_table(args, rows, proxies, X_tr, y_tr, X_ev, y_ev, n)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"bench_bound_seed{args.seed}.json").write_text(json.dumps(rows, indent=1, default=float))
        return
    print("\nconditional Wasserstein distance to the held-out real images (exact OT)")
    print(f"{'proxy':16s} {'cwd l2':>9s} {'time':>6s} {'cwd linf':>9s} {'time':>6s}")
    for name, (Xp, yp) in proxies.items():
        r = rows[name]
        out = []
        for metric in ("l2", "linf"):
            t = time.perf_counter()
            res = conditional_wasserstein_distance(X_ev, y_ev, Xp, yp, metric=metric, n_bootstrap=20,
                                                   random_state=0)
            dt = time.perf_counter() - t
            r[f"cwd_{metric}"], r[f"cwd_{metric}_ci"], r[f"cwd_{metric}_s"] = res.distance, res.ci, dt
            out += [f"{res.distance:9.4f}", f"{dt:5.1f}s"]
        print(f"{name:16s} " + " ".join(out))

    print(f"\nARC (l_inf, eps {ARC_EPS}, discriminator = default small CNN, "
          f"{args.arc_epochs} epochs PGD-7, APGD-CE on a 25% held-out split)")
    for name, (Xp, _) in proxies.items():
        t = time.perf_counter()
        res = arc_score(X_ev, Xp, epsilons=ARC_EPS, max_epochs=args.arc_epochs, random_state=0)
        dt = time.perf_counter() - t
        rows[name].update(arc=res.score, arc_curve=res.accuracy.tolist(), arc_s=dt)
        print(f"{name:16s} ARC {res.score:.4f}  curve {np.round(res.accuracy, 4).tolist()}  {dt:.1f}s")

    rob_table(args, rows, proxies, X_tr, y_tr, X_ev, y_ev, n)

    print()
    rows["methods"] = methods_table(*load_mnist(args.data, split="test"), X_ev, y_ev, proxies["gmm"])
    ref = Path(args.samples) / "bench_proxy.json"
    if ref.exists():
        rows["bench_proxy.json"] = json.loads(ref.read_text())
        print("\nrobust accuracy from bench_proxy.json:", rows["bench_proxy.json"])
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "bench_bound.json").write_text(json.dumps(rows, indent=1, default=float))


def rob_table(args, rows, proxies, X_tr, y_tr, X_ev, y_ev, n):
    """Rob on 500 real and 500 sample images per set, their gap and the cwd bound."""
    clf, model_note = pgd_model(X_tr, y_tr, args.model_epochs, args.model)
    print(f"\nRob_linf of the PGD model ({model_note}); {args.n_rob} images per side; "
          f"bound = cwd_linf between the same images; seed {args.seed}")
    rng = np.random.RandomState(args.seed)
    ir = rng.choice(n, args.n_rob, replace=False)
    # sanity check of the minimum-norm search: the fraction of distances above 0.3 must
    # not exceed the robust accuracy under the strongest evaluation at 0.3
    t = time.perf_counter()
    tb = TransferBound(estimator=clf, norm="linf", n_bootstrap=20, random_state=args.seed).fit(X_ev[ir], y_ev[ir])
    rob = tb.rob_real_
    t_rob = time.perf_counter() - t
    rows["rob_real_s"] = t_rob
    print(f"Rob on real: {rob.mean:.4f} ({t_rob:.1f}s)", flush=True)
    for name, (Xp, yp) in proxies.items():
        ip = rng.choice(len(Xp), args.n_rob, replace=False)
        t = time.perf_counter()
        res = tb.bound((Xp[ip], yp[ip]))
        dt = time.perf_counter() - t
        rows[name].update(rob_real=res.rob_real.mean, rob_proxy=res.rob_proxy.mean, gap=res.gap,
                          gap_ci=res.gap_ci, bound=res.cwd.distance, bound_ci=res.cwd.ci, holds=res.holds,
                          holds_within_ci=res.holds_within_ci, bound_s=dt)
        print(f"{name:16s} Rob real {res.rob_real.mean:.4f}  Rob proxy {res.rob_proxy.mean:.4f}  "
              f"gap {res.gap:.4f}  cwd {res.cwd.distance:.4f}  holds {res.holds}  {dt:.1f}s", flush=True)
    if args.bound_only:
        return
    t = time.perf_counter()
    aa = robust_accuracy(clf, X_ev[ir], y_ev[ir], attack="autoattack-fast", epsilon=0.3, norm="linf")
    t_aa = time.perf_counter() - t
    rows["min_norm_check"] = {"frac_dist_gt_0.3": float(np.mean(rob.distances > 0.3)),
                              "fast_ensemble_0.3": aa}
    print(f"check: fraction of min-norm distances > 0.3 = {np.mean(rob.distances > 0.3):.4f} "
          f"(Rob on real: {t_rob:.1f}s); "
          f"fast ensemble (APGD-CE + APGD-T x3) robust accuracy at 0.3 = {aa:.4f} ({t_aa:.1f}s)")


if __name__ == "__main__":
    main()
