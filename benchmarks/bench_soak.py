"""Soak: many fits, robust scores, saves and loads in one process; memory and file handles.

Runs ``--iterations`` rounds on digits. Each round fits a classifier (cycling through PGD
training, DALE with the primal-dual objective, GeneratorSynth, and PGD with proxy samples
from a cached GaussianMixtureProxy and a robust validation score), computes its
``robust_score`` under the default AutoAttack-style ensemble (every 10th round with the
gradient-masking checks), saves it with ``clf.save`` and loads it back, and checkpoints
through skorch's ``Checkpoint`` (so the training-state files are written too). After
every round it records the resident memory (``VmRSS``, after ``gc.collect()``) and the number
of open file descriptors. Prints the figures after the warm-up rounds, the growth from the end
of the warm-up to the end, and the least-squares slope over the rounds after the warm-up.

    OMP_NUM_THREADS=1 python benchmarks/bench_soak.py --iterations 50

Goal: under 50 MB of resident-memory growth after the warm-up, no file descriptor leaked.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

import numpy as np
import torch
from skorch.callbacks import Checkpoint

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD, GeneratorSynth, Langevin
from robustfit.datasets import load_digits_images
from robustfit.losses import PrimalDual
from robustfit.proxy import GaussianMixtureProxy


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def make(i, workdir):
    common = dict(max_epochs=2, batch_size=64, random_state=i, device="cpu",
                  callbacks=[Checkpoint(dirname=os.path.join(workdir, "cp"), monitor=None)])
    kind = i % 4
    if kind == 0:
        return "pgd", AdversarialClassifier(attack=PGD(epsilon=0.1, steps=5), **common)
    if kind == 1:
        return "dale", AdversarialClassifier(
            attack=Langevin(epsilon=0.1, steps=5, temperature=1e-3),
            objective=PrimalDual(dual_lr=0.05, nu_init=1.0), **common)
    if kind == 2:
        return "synth", AdversarialClassifier(attack=GeneratorSynth(epsilon=0.1, latent_dim=16),
                                              **common)
    return "proxy", AdversarialClassifier(
        attack=PGD(epsilon=0.1, steps=5), valid_attack=PGD(epsilon=0.1, steps=3),
        proxy_data=GaussianMixtureProxy(pca_components=10, mixture_components=1, random_state=0),
        proxy_memory=os.path.join(workdir, "proxy-cache"), **{**common, "random_state": 0})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10,
                   help="rounds before the baseline (every kind of round has run once by 10)")
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--n-eval", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits_images()
    perm = np.random.RandomState(0).permutation(len(X))
    X, y = X[perm], y[perm]
    Xtr, ytr = X[: args.n_train], y[: args.n_train]
    Xte, yte = X[-args.n_eval:], y[-args.n_eval:]
    rss, fds, times = [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        for i in range(args.iterations):
            t0 = time.perf_counter()
            name, clf = make(i, workdir)
            clf.fit(Xtr, ytr)
            score = clf.robust_score(Xte, yte, check=(i % 10 == 9))
            path = os.path.join(workdir, "model.pt")
            clf.save(path)
            loaded = AdversarialClassifier.load(path)
            assert (loaded.predict(Xte) == clf.predict(Xte)).all()
            del clf, loaded
            gc.collect()
            times.append(time.perf_counter() - t0)
            rss.append(rss_mb())
            fds.append(open_fds())
            print(f"round {i + 1:3d} {name:6s} robust {score:.3f}  rss {rss[-1]:8.1f} MB  "
                  f"fds {fds[-1]:3d}  {times[-1]:5.1f} s", flush=True)
    w = min(args.warmup, args.iterations) - 1
    after = np.arange(w, len(rss))
    slope = np.polyfit(after, np.asarray(rss)[after], 1)[0] if len(after) > 1 else float("nan")
    print()
    print(f"rounds: {args.iterations} (warm-up {args.warmup}); {np.sum(times):.0f} s in all")
    print(f"resident memory: {rss[w]:.1f} MB after the warm-up, {rss[-1]:.1f} MB at the end, "
          f"growth {rss[-1] - rss[w]:+.1f} MB (max {max(rss[w:]):.1f} MB); "
          f"slope {slope:+.3f} MB/round")
    print(f"open file descriptors: {fds[w]} after the warm-up, {fds[-1]} at the end "
          f"(max {max(fds[w:])})")
    print("goal: growth < 50 MB after the warm-up:", "met" if rss[-1] - rss[w] < 50 else "NOT met")


if __name__ == "__main__":
    main()
