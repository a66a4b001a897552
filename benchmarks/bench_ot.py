"""Speed and memory of three Sinkhorn-divergence implementations: robustfit's, POT and geomloss.

Times the forward and backward pass of the debiased entropic OT cost between
two batches of features (batch 128, feature dims 10 and 100) and reports the
peak resident memory of a fresh process that runs only that computation.
All compute the same quantity: robustfit's ``sinkhorn_distance(a, b, blur=b,
scaling=0.5)`` and geomloss's ``SamplesLoss("sinkhorn", p=2, blur=b)`` (cost
``|x - y|^2 / 2``, entropic ``eps = b^2``, the same algorithm) equal half of
POT's ``empirical_sinkhorn_divergence`` with cost ``|x - y|^2`` and ``reg = 2 b^2``.
``--libs`` picks the implementations (``robustfit-cost`` is robustfit's
``sinkhorn_cost`` at the authors' settings, 100 iterations at regularization
0.01: another quantity, timed for its cost).

    python benchmarks/bench_ot.py
    python benchmarks/bench_ot.py --libs robustfit,geomloss,robustfit-cost --noise 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def make_fn(lib, blur):
    if lib == "robustfit":
        from robustfit.losses import sinkhorn_distance

        return lambda a, b: sinkhorn_distance(a, b, blur=blur, scaling=0.5)
    if lib == "robustfit-cost":
        from robustfit.losses import sinkhorn_cost

        return lambda a, b: sinkhorn_cost(a, b, reg=0.01, n_iter=100)
    if lib == "geomloss":
        from geomloss import SamplesLoss

        loss = SamplesLoss("sinkhorn", p=2, blur=blur, debias=True, scaling=0.5)
        return lambda a, b: loss(a, b)
    import ot

    def pot(a, b):
        v = ot.bregman.empirical_sinkhorn_divergence(
            a, b, 2 * blur**2, method="sinkhorn_log", numIterMax=1000, stopThr=1e-5, warn=False)
        return v / 2

    return pot


def one(lib, n, d, blur, reps, noise):
    torch.manual_seed(0)
    a = (3 * torch.randn(n, d)).requires_grad_(True)
    b = a.detach() + noise * torch.randn(n, d)
    fn = make_fn(lib, blur)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    times, value = [], float("nan")
    for _ in range(reps + 2):
        a.grad = None
        t0 = time.perf_counter()
        v = fn(a, b)
        v.backward()
        times.append(time.perf_counter() - t0)
        value = float(v.detach())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    return {"ms": 1e3 * statistics.median(times[2:]), "value": value,
            "rss": rss, "extra": rss - base}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--dims", default="10,100")
    p.add_argument("--blurs", default="0.1,1.0")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--noise", type=float, default=0.5,
                   help="second batch = first (std 3) + noise * standard normal")
    p.add_argument("--libs", default="robustfit,pot,geomloss")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        lib, n, d, blur = args.child
        print(json.dumps(one(lib, int(n), int(d), float(blur), args.reps, args.noise)))
        return
    print(f"batch {args.n}, noise {args.noise}, threads={torch.get_num_threads()}, forward+backward, median of {args.reps}")
    print(f"{'blur':>5}{'dim':>5}{'library':>15}{'ms':>9}{'value':>10}{'peak RSS MiB':>14}{'compute MiB':>12}")
    for blur in args.blurs.split(","):
        for d in args.dims.split(","):
            res = {}
            for lib in args.libs.split(","):
                out = subprocess.run([sys.executable, __file__, "--reps", str(args.reps),
                                      "--noise", str(args.noise), "--child",
                                      lib, str(args.n), d, blur], capture_output=True, text=True, check=True)
                res[lib] = json.loads(out.stdout.strip().splitlines()[-1])
            for lib in args.libs.split(","):
                r = res[lib]
                print(f"{blur:>5}{d:>5}{lib:>15}{r['ms']:9.2f}{r['value']:10.4f}{r['rss']:14.1f}"
                      f"{r['extra']:12.1f}", flush=True)


if __name__ == "__main__":
    main()
