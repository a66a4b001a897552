"""The two CPU kernels behind GeneratorSynth's second speed pass (docs/synth.rst, issue 16).

Prints the median time (ms) of interleaved calls, one thread, batch 128:

1. the generator's last layer, a 4x4 stride-2 transposed convolution from 8 channels at
   14x14 to 1 channel at 28x28: torch's ``conv_transpose2d`` against the matrix product and
   fold of ``robustfit.models._FoldConvTranspose2d`` (forward only; its backward is torch's);
2. MnistCNN's first convolution (1 to 16 channels, 28x28 to 14x14): its backward pass with
   only the input's gradient, only the weight's (and bias's), and both, as
   ``torch.ops.aten.convolution_backward`` computes them.

    python benchmarks/bench_synth_kernels.py --repeats 40
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from robustfit.models import _FoldConvTranspose2d


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.randn(128, 8, 14, 14)
    fold = _FoldConvTranspose2d(8, 1, 4, stride=2, padding=1)
    x = torch.rand(128, 1, 28, 28)
    w, b = torch.randn(16, 1, 4, 4), torch.randn(16)
    grad_out = torch.randn_like(F.conv2d(x, w, b, 2, 1))

    def conv1_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            grad_out, x, w, [16], [2, 2], [1, 1], [1, 1], False, [0, 0], 1, mask)

    calls = {
        "generator last layer, torch conv_transpose2d": lambda: F.conv_transpose2d(
            g, fold.weight, fold.bias, 2, 1),
        "generator last layer, matrix product + fold": lambda: fold(g),
        "first conv backward, input gradient only": conv1_backward([True, False, False]),
        "first conv backward, weight gradient only": conv1_backward([False, True, True]),
        "first conv backward, both": conv1_backward([True, True, True]),
    }
    with torch.no_grad():
        diff = (fold(g) - F.conv_transpose2d(g, fold.weight, fold.bias, 2, 1)).abs().max()
    print(f"max |fold - conv_transpose2d| = {float(diff):.2e}")
    times = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[name].append(1000 * (time.perf_counter() - t0))
    for name, ts in times.items():
        print(f"{name:<48}{statistics.median(ts):8.2f} ms")


if __name__ == "__main__":
    main()
