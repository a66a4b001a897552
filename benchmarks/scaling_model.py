"""The scaling model of data-parallel PGD-10 training on N GPUs (on paper, no GPU needed).

Each step of data-parallel training costs every GPU its share of the compute
and one all-reduce of the gradients. This script counts both for ResNet-18
and WRN-34-10 on CIFAR-shaped input (3x32x32) and prints the efficiency that
the model predicts, and the interconnect bandwidth above which it stays over
90%.

* **Compute per image and step.** Counted, not timed: torch's
  ``FlopCounterMode`` counts the FLOPs of one real PGD-10 training step of the
  actual networks (robustfit's ``ResNet18`` and the WRN-34-10 below) on a
  batch of 2 images on the CPU: ten attack iterations (forward pass and a
  backward pass to the *input* only, the weights' gradients are not formed)
  and the training forward and backward passes. The often quoted "11 forward
  and backward passes" (33 forward passes' worth) is printed next to it.
* **Communication per step.** DistributedDataParallel all-reduces the
  gradients once per step: ``4 * P`` bytes in fp32 (``2 * P`` for bf16
  gradients), and a ring all-reduce sends and receives ``2 (N - 1) / N`` times
  that per GPU. The attack all-reduces nothing.
* **Efficiency.** ``E = t_compute / (t_compute + t_allreduce)``, with
  ``t_compute = local_batch * flops_per_image / X`` and
  ``t_allreduce = 2 (N - 1) / N * bytes / BW``. No overlap of communication
  and computation is assumed (DDP overlaps the all-reduce with the training
  backward pass only, a small part of a PGD-10 step), so ``E`` is a lower
  bound under these assumptions. Latency terms are ignored (a few all-reduce
  calls of ~25 MB buckets per step).

``X``, the sustained FLOP/s of one GPU, is an *assumption* (``--tflops``,
default 200 TFLOP/s, about 20% of an H100's dense bf16 peak), not a
measurement; measure your own with ``benchmarks/bench_gpu.py`` and pass it.
The bandwidths are the nominal figures of common interconnects (per GPU, one
direction), also assumptions.

Run::

    python benchmarks/scaling_model.py [--tflops 200] [--bf16-grads]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from robustfit.attacks import PGD
from robustfit.models import ResNet18

#: Nominal bandwidth per GPU, one direction, in GB/s (spec sheets; assumptions).
INTERCONNECTS = {
    "NVLink 4 (H100 SXM)": 450.0,
    "InfiniBand NDR 400 Gb/s": 50.0,
    "PCIe 4.0 x16": 25.0,
    "Ethernet 100 Gb/s": 12.5,
    "Ethernet 25 Gb/s": 3.125,
}


class _WideBlock(nn.Module):
    """Pre-activation basic block of a wide ResNet (BN-ReLU-conv, twice)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


def wide_resnet(depth=34, widen=10, n_classes=10):
    """WRN-depth-widen (Zagoruyko & Komodakis 2016) for 32x32 input: the
    network of Madry et al. and TRADES on CIFAR-10 at depth 34, width 10."""
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)]
    c = widths[0]
    for group, stride in zip(widths[1:], (1, 2, 2)):
        for i in range(n):
            layers.append(_WideBlock(c, group, stride if i == 0 else 1))
            c = group
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes)]
    return nn.Sequential(*layers)


def count_step_flops(net, batch=2, steps=10):
    """FLOPs per image of one forward pass and of one PGD-``steps`` training step."""
    x = torch.rand(batch, 3, 32, 32)
    y = torch.arange(batch) % 10
    net.eval()
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            net(x)
    attack = PGD(epsilon=8 / 255, steps=steps)
    with FlopCounterMode(display=False) as step:
        x_adv = attack(net, x, y)  # eval mode, input gradients only
        net.train()
        F.cross_entropy(net(x_adv), y).backward()
    return fwd.get_total_flops() / batch, step.get_total_flops() / batch


def efficiency(local_batch, flops_per_image, tflops, grad_bytes, n_gpus, bandwidth_gbs):
    t_compute = local_batch * flops_per_image / (tflops * 1e12)
    t_comm = 2 * (n_gpus - 1) / n_gpus * grad_bytes / (bandwidth_gbs * 1e9)
    return t_compute / (t_compute + t_comm), t_compute, t_comm


def bandwidth_for(target, local_batch, flops_per_image, tflops, grad_bytes, n_gpus):
    """Bandwidth (GB/s) above which the efficiency exceeds ``target``."""
    t_compute = local_batch * flops_per_image / (tflops * 1e12)
    allowed = t_compute * (1 / target - 1)
    return 2 * (n_gpus - 1) / n_gpus * grad_bytes / allowed / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tflops", type=float, default=200.0,
                   help="sustained TFLOP/s of one GPU (an assumption; default %(default)s)")
    p.add_argument("--bf16-grads", action="store_true", help="2 bytes per gradient instead of 4")
    p.add_argument("--gpus", type=int, nargs="+", default=[2, 8, 64, 256])
    args = p.parse_args(argv)
    torch.manual_seed(0)
    grad_bytes_per_param = 2 if args.bf16_grads else 4
    nets = {"ResNet-18": (ResNet18(), 512), "WRN-34-10": (wide_resnet(34, 10), 128)}
    print(f"assumed sustained throughput per GPU: {args.tflops:.0f} TFLOP/s; "
          f"gradients in {'bf16' if args.bf16_grads else 'fp32'}; no compute/communication overlap\n")
    for name, (net, global_batch) in nets.items():
        params = sum(p.numel() for p in net.parameters())
        fwd, step = count_step_flops(net)
        grad_bytes = grad_bytes_per_param * params
        print(f"{name}: {params / 1e6:.2f} M parameters, all-reduce payload {grad_bytes / 1e6:.1f} MB/step")
        print(f"  forward pass {fwd / 1e9:.2f} GFLOP/image; PGD-10 training step {step / 1e9:.1f} "
              f"GFLOP/image counted ({step / fwd:.1f} forward passes; '11 full forward+backward "
              f"passes' would be {33 * fwd / 1e9:.1f})")
        for regime, local_of in (
            (f"fixed global batch {global_batch} (batch_size={global_batch})", lambda n, b=global_batch: b / n),
            (f"{global_batch} per GPU (batch_size={global_batch} x N)", lambda n, b=global_batch: b),
        ):
            print(f"  {regime}:")
            head = "    N    step compute   " + "  ".join(f"{k[:22]:>22}" for k in INTERCONNECTS) \
                + "   BW for 90%"
            print(head)
            for n in args.gpus:
                local = local_of(n)
                if local < 1:
                    continue
                cells = []
                t_c = None
                for bw in INTERCONNECTS.values():
                    e, t_c, t_comm = efficiency(local, step, args.tflops, grad_bytes, n, bw)
                    cells.append(f"{e:>21.1%} ")
                need = bandwidth_for(0.9, local, step, args.tflops, grad_bytes, n)
                print(f"    {n:<4} {t_c * 1e3:>9.1f} ms   " + "  ".join(cells) + f"   {need:>7.1f} GB/s")
        print()


if __name__ == "__main__":
    main()
