"""Data-parallel overhead on the CPU: 2 gloo ranks against 1 process.

Trains the same PGD-7 digits model (DigitsCNN, all 1,797 images, global batch
128, no validation split) on one process and on ``torchrun --standalone
--nproc_per_node=2``, each process with one thread, and reports the time per
epoch (epochs after the first; the first pays for start-up) and the images
trained per second. On a 2-core machine this measures the overhead of the
all-reduces, the global-batch random draws and the sharded batches against
the one-process run, not a speed-up that would carry over to GPUs: the two
ranks share the two cores with everything else on the machine. Each
configuration runs ``--repeats`` times; mean and spread are printed.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_ddp.py [--repeats 3] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def worker(args):
    import torch

    from robustfit import AdversarialClassifier
    from robustfit.attacks import PGD
    from robustfit.datasets import load_digits_images

    torch.set_num_threads(args.threads)
    X, y = load_digits_images()
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=args.steps), max_epochs=args.epochs,
                                batch_size=128, lr=1e-2, train_split=None, random_state=0,
                                device="cpu")
    start = time.perf_counter()
    clf.fit(X, y)
    total = time.perf_counter() - start
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        durs = [float(d) for d in clf.history[:, "dur"]]
        print(json.dumps({"durs": durs, "total": total, "n": len(X),
                          "train_loss": float(clf.history[-1, "train_loss"])}))


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]))
    common = [str(HERE), "--worker", "--epochs", str(args.epochs), "--steps", str(args.steps)]
    configs = {
        "1 process, 1 thread": [sys.executable, *common, "--threads", "1"],
        "1 process, 2 threads": [sys.executable, *common, "--threads", "2"],
        "2 ranks (gloo), 1 thread each": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc_per_node=2", *common, "--threads", "1"],
    }
    results = {name: [] for name in configs}
    losses = {name: [] for name in configs}
    for _ in range(args.repeats):  # interleaved, so load changes hit every configuration
        for name, cmd in configs.items():
            out = run(cmd, env)
            results[name].append(np.mean(out["durs"][1:]))
            losses[name].append(out["train_loss"])
            n = out["n"]
    print(f"PGD-{args.steps} training on digits ({n} images, global batch 128), seconds per epoch "
          f"(epochs 2-{args.epochs}), {args.repeats} runs each: mean ± std [min, max]")
    base = np.mean(results["1 process, 1 thread"])
    for name, vals in results.items():
        vals = np.asarray(vals)
        print(f"  {name:<32} {vals.mean():.3f} ± {vals.std():.3f} s  [{vals.min():.3f}, {vals.max():.3f}]"
              f"  {n / vals.mean():6.0f} img/s  x{base / vals.mean():.2f} vs 1 process, 1 thread"
              f"  (final train_loss {np.mean(losses[name]):.4f})")


if __name__ == "__main__":
    main()
