"""Data-parallel overhead on the CPU: 2 gloo ranks against 1 process.

Trains the same PGD-7 digits model (DigitsCNN, all 1,797 images, global batch
128, no validation split) on one process and on ``torchrun --standalone
--nproc_per_node=2``, each process with one thread, and reports the time per
epoch (epochs after the first; the first pays for start-up) and the images
trained per second, and the CPU time per epoch summed over the processes
(``time.process_time`` of every rank, gloo's threads included). On a 2-core
machine this measures the overhead of the all-reduces, the global-batch
random draws and the sharded batches against the one-process run, not a
speed-up that would carry over to GPUs: the two ranks share the two cores
with everything else on the machine, so the wall-clock times move with the
machine's load, and the CPU time is the steadier measure of the extra work.
A third run, one process with batches of 64 (the share of each rank, twice
as many steps), separates the cost of smaller batches (per-operation
overhead, large for a network this small) from that of the communication.
Each configuration runs ``--repeats`` times, interleaved; mean, standard
deviation and range are printed. The final training loss, equal across the
configurations, shows that they trained the same model.

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
    from skorch.callbacks import Callback

    from robustfit import AdversarialClassifier
    from robustfit.attacks import PGD
    from robustfit.datasets import load_digits_images

    class EpochCPU(Callback):
        """CPU seconds of this process per epoch, in the history as ``cpu``."""

        def on_epoch_begin(self, net, **kwargs):
            self.start_ = time.process_time()

        def on_epoch_end(self, net, **kwargs):
            net.history.record("cpu", time.process_time() - self.start_)

    torch.set_num_threads(args.threads)
    X, y = load_digits_images()
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=args.steps), max_epochs=args.epochs,
                                batch_size=args.batch, lr=1e-2, train_split=None, random_state=0,
                                device="cpu", callbacks=[("cpu", EpochCPU())])
    clf.fit(X, y)
    dist = torch.distributed
    cpu = [float(c) for c in clf.history[:, "cpu"]]
    if dist.is_initialized():
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, cpu)
        cpu = [sum(col) for col in zip(*every)]
    if not dist.is_initialized() or dist.get_rank() == 0:
        durs = [float(d) for d in clf.history[:, "dur"]]
        print(json.dumps({"durs": durs, "cpu": cpu, "n": len(X),
                          "train_loss": float(clf.history[-1, "train_loss"])}))
    if dist.is_initialized():
        dist.barrier()  # destroyed together: see examples/ddp_train.py
        dist.destroy_process_group()


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
    p.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--with-threads", action="store_true",
                   help="also time one process with 2 threads (slow on a loaded machine)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]))
    common = [str(HERE), "--worker", "--epochs", str(args.epochs), "--steps", str(args.steps)]
    configs = {
        "1 process, 1 thread": [sys.executable, *common, "--threads", "1"],
        # the same steps of 64 samples that the 2 ranks take together: the per-operation
        # cost of smaller batches, without any communication
        "1 process, batch 64": [sys.executable, *common, "--threads", "1", "--batch", "64"],
    }
    if args.with_threads:
        configs["1 process, 2 threads"] = [sys.executable, *common, "--threads", "2"]
    configs["2 ranks (gloo), 1 thread each"] = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        *common, "--threads", "1"]
    wall = {name: [] for name in configs}
    cpu = {name: [] for name in configs}
    losses = {name: [] for name in configs}
    for _ in range(args.repeats):  # interleaved, so load changes hit every configuration
        for name, cmd in configs.items():
            out = run(cmd, env)
            wall[name].append(np.mean(out["durs"][1:]))
            cpu[name].append(np.mean(out["cpu"][1:]))
            losses[name].append(out["train_loss"])
            n = out["n"]
    print(f"PGD-{args.steps} training on digits ({n} images, global batch 128), per epoch "
          f"(epochs 2-{args.epochs}), {args.repeats} runs each: mean ± std [min, max]")
    base_wall = np.mean(wall["1 process, 1 thread"])
    base_cpu = np.mean(cpu["1 process, 1 thread"])
    for name in configs:
        w, c = np.asarray(wall[name]), np.asarray(cpu[name])
        print(f"  {name:<30} wall {w.mean():.3f} ± {w.std():.3f} s [{w.min():.3f}, {w.max():.3f}]"
              f" ({n / w.mean():.0f} img/s, x{base_wall / w.mean():.2f})"
              f"  CPU {c.mean():.3f} ± {c.std():.3f} s [{c.min():.3f}, {c.max():.3f}]"
              f" (x{c.mean() / base_cpu:.2f} of 1 process)"
              f"  final train_loss {np.mean(losses[name]):.4f}")


if __name__ == "__main__":
    main()
