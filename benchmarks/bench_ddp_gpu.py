"""Data-parallel training on GPUs: robustfit under torchrun against one process.

The same script trains ``AdversarialClassifier(ResNet18, attack=PGD(...))`` (PGD-10 at
l_inf 8/255, step 2/255, CIFAR-shaped random input, ``attack_warmup=0``, no validation
split), each configuration in a fresh process:

  single B    one process, global batch B (``--batch``);
  single NB   one process, global batch N*B;
  k=N         ``torchrun --standalone --nproc_per_node=N``, one rank per GPU (NCCL),
              global batch N*B: each rank trains on B samples per step;
  k=2 shared  on a machine with one GPU: 2 ranks on that GPU with the gloo backend,
              global batch 2B. Not a speed figure: a check that data-parallel training
              (sharding, DistributedDataParallel, the reductions, CUDA graphs and
              folding per rank) runs on CUDA where only one GPU is lent.

Every configuration runs ``--batches`` steps per epoch. Reported: images/s per epoch after
the first (the first pays for start-up, cuDNN plans and CUDA graphs), the weak-scaling
efficiency ``images/s(k=N) / (N * images/s(single B))``, and the training losses: k=N
does the optimization of ``single NB`` (same global batch and seed), so their losses agree
up to the GPUs' non-determinism, which checks the data-parallel path on the device (the
test suite runs it with gloo on the CPU), **provided the batch-norm statistics are the global
batch's**: with plain BatchNorm each rank normalizes with its own B samples, as in any
DistributedDataParallel training, so ResNet-18's losses differ. ``--sync-bn`` converts the
network's batch norm to :class:`torch.nn.SyncBatchNorm` in every configuration (one
process included, where it acts as BatchNorm), for the exact comparison.

    python benchmarks/bench_ddp_gpu.py                  # all visible GPUs (make gpu-check)
    python benchmarks/bench_ddp_gpu.py --gpus 2 --epochs 4
    python benchmarks/bench_ddp_gpu.py --smoke          # CPU, gloo, 2 ranks, tiny (the tests)

With ``--out`` the lines also go to a file, and the figures to a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_ddp import run

HERE = Path(__file__).resolve()


def worker(args):
    import torch

    from robustfit import AdversarialClassifier
    from robustfit._distributed import world_size
    from robustfit.attacks import PGD
    from robustfit.models import ResNet18

    class SyncBNResNet18(ResNet18):
        """ResNet-18 with SyncBatchNorm: statistics of the global batch in data-parallel
        training, plain batch norm in one process."""

        def __init__(self, n_classes=10, in_channels=3):  # the signature robustfit fills in
            super().__init__(n_classes=n_classes, in_channels=in_channels)
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(self)  # replaces the children

    torch.set_num_threads(1)
    if args.backend and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        torch.distributed.init_process_group(args.backend)  # fit uses the script's group
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.batches
    X = torch.rand(n, 3, args.size, args.size, generator=g)
    y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)].numpy()  # every class present
    clf = AdversarialClassifier(
        SyncBNResNet18 if args.sync_bn else ResNet18, attack=PGD(epsilon=8 / 255, steps=args.steps, step_size=2 / 255),
        max_epochs=args.epochs, batch_size=args.batch, attack_warmup=0, train_split=None,
        random_state=0, device=args.device)
    clf.fit(X, y)
    dist = torch.distributed
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps({"durs": [float(d) for d in clf.history[:, "dur"]], "n": n,
                          "world_size": world_size(),
                          "device": str(next(clf.module_.parameters()).device),
                          "backend": dist.get_backend() if dist.is_initialized() else None,
                          "train_loss": [float(v) for v in clf.history[:, "train_loss"]]}))
    if dist.is_initialized():
        dist.barrier()  # destroyed together: see examples/ddp_train.py
        dist.destroy_process_group()
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=None, help="ranks of the largest run (all GPUs)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batches", type=int, default=8, help="global batches per epoch")
    p.add_argument("--batch", type=int, default=512, help="samples per rank and step")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--size", type=int, default=32, help="image height and width")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    p.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm in every configuration (the exact comparison)")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, gloo, 2 ranks, tiny sizes")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.gpus, args.epochs, args.batches = "cpu", 2, 2, 2
        args.batch, args.steps, args.size = 8, 2, 8
    if args.worker:
        return worker(args)
    import torch

    if args.gpus is None:
        args.gpus = torch.cuda.device_count()
    if args.gpus < 1:
        p.error("no GPU visible: pass --gpus N (N ranks on the CPU with gloo) or --smoke")
    if args.device == "auto" and not torch.cuda.is_available():
        args.device = "cpu"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = open(args.out, "w", buffering=1) if args.out else None

    def line(text):
        print(text, flush=True)
        if out:
            out.write(text + "\n")

    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]))
    common = [str(HERE), "--worker", "--epochs", str(args.epochs), "--batches", str(args.batches),
              "--steps", str(args.steps), "--size", str(args.size), "--device", args.device,
              *(["--sync-bn"] if args.sync_bn else [])]

    def single(batch):
        return [sys.executable, *common, "--batch", str(batch)]

    def torchrun(k, batch, *extra):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={k}", *common, "--batch", str(batch), *extra]

    B, N = args.batch, args.gpus
    shared = N == 1 and torch.cuda.is_available() and args.device != "cpu"
    k = 2 if shared else N
    configs = {f"single {B}": single(B)}
    if k > 1:
        name = "k=2 shared" if shared else f"k={k}"
        configs[f"single {k * B}"] = single(k * B)
        configs[name] = torchrun(k, k * B, *(["--backend", "gloo"] if shared else []))
    line(f"bench_ddp_gpu.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    line(f"  ResNet-18, PGD-{args.steps}, {args.size}x{args.size} input, {B} samples per rank and "
         f"step, {args.batches} steps per epoch, {args.epochs} epochs; torch {torch.__version__}, "
         f"{torch.cuda.device_count()} GPU(s) visible")
    results = {}
    for name, cmd in configs.items():
        t = time.perf_counter()
        res = run(cmd, env)
        res["wall_s"] = round(time.perf_counter() - t, 1)
        steady = res["durs"][1:] or res["durs"]
        res["images_per_s"] = res["n"] / (sum(steady) / len(steady))
        results[name] = res
        line(f"{name:>12}: {res['images_per_s']:,.0f} images/s (epochs after the first: "
             + ", ".join(f"{d:.2f} s" for d in res["durs"][1:]) + f"), world size "
             f"{res['world_size']}, backend {res['backend']}, {res['device']}, train_loss "
             + " ".join(f"{v:.4f}" for v in res["train_loss"]) + f"; {res['wall_s']} s with start-up")
    if k > 1:
        name = "k=2 shared" if shared else f"k={k}"
        ref, par = results[f"single {k * B}"], results[name]
        gap = max(abs(a - b) / abs(a) for a, b in zip(ref["train_loss"], par["train_loss"]))
        line(f"{name} against single {k * B} (the same optimization, batch-norm statistics "
             f"{'of the global batch' if args.sync_bn else 'per rank'}): largest relative "
             f"difference of the epoch losses {gap:.2e}")
        if not shared:
            eff = par["images_per_s"] / (k * results[f"single {B}"]["images_per_s"])
            line(f"k={k} against single {B}: images/s x{par['images_per_s'] / results[f'single {B}']['images_per_s']:.2f}"
                 f", weak-scaling efficiency {eff:.3f} (1.0: linear)")
    if out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
