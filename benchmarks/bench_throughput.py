"""Training throughput: AdversarialClassifier against a hand-written PyTorch
PGD-7 loop doing the same work, measured interleaved in one run.

Same data (MNIST, kept as tensors on the device), same model (MnistCNN), batch
128, Adam, PGD-7 at epsilon 0.3 with a random start, the attack run in eval
mode, one optimizer step per batch. Each round trains one pass over
``--chunk`` images with each contender, alternating which goes first; the
script prints the median images/s of each and their ratio.

    python benchmarks/bench_throughput.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from _common import mnist_split, parser

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.classifier import resolve_device
from robustfit.models import MnistCNN

EPS, STEPS, ALPHA, BATCH = 0.3, 7, 0.1, 128


def plain_pgd(model, x, y):
    """PGD-7 as one would write it by hand (random start, sign step, projection
    onto the ball and the [0, 1] box after each step)."""
    model.eval()
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(STEPS):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + ALPHA * g.sign()).clamp(-EPS, EPS)
        delta = (x + delta).clamp(0, 1) - x
    model.train()
    return (x + delta).detach()


def plain_epoch(model, opt, X, y):
    perm = torch.randperm(len(X), device=X.device)
    for i in range(0, len(X), BATCH):
        idx = perm[i:i + BATCH]
        xb, yb = X[idx], y[idx]
        xa = plain_pgd(model, xb, yb)
        opt.zero_grad()
        loss = F.cross_entropy(model(xa), yb)
        loss.backward()
        opt.step()
        loss.item()  # the per-batch loss readout every logging loop does


def main():
    p = parser(__doc__)
    p.add_argument("--chunk", type=int, default=2048, help="images per timed pass")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    device = resolve_device(args.device)
    (Xtr, ytr), _ = mnist_split(args.data)
    Xc, yc = Xtr[: args.chunk], ytr[: args.chunk]
    Xt, yt = torch.as_tensor(Xc, device=device), torch.as_tensor(yc, device=device)

    torch.manual_seed(0)
    model = MnistCNN().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clf = AdversarialClassifier(
        MnistCNN, attack=PGD(epsilon=EPS, steps=STEPS, step_size=ALPHA), max_epochs=1,
        batch_size=BATCH, lr=1e-3, lr_schedule=None, attack_warmup=0, train_split=None, device=device,
        amp=None, random_state=0,
    )
    clf.partial_fit(Xc[:BATCH], yc[:BATCH])  # initialize + warm up
    plain_epoch(model, opt, Xt[:BATCH], yt[:BATCH])

    def time_it(fn):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        return len(Xc) / (time.perf_counter() - t)

    rf, pl = [], []
    for r in range(args.rounds):
        runs = [("rf", lambda: clf.partial_fit(Xc, yc)), ("pl", lambda: plain_epoch(model, opt, Xt, yt))]
        for name, fn in (runs if r % 2 == 0 else runs[::-1]):
            (rf if name == "rf" else pl).append(time_it(fn))
    rf_m, pl_m = statistics.median(rf), statistics.median(pl)
    print(f"device={device} threads={torch.get_num_threads()} model=MnistCNN batch={BATCH} "
          f"PGD-{STEPS} eps={EPS} chunk={len(Xc)} rounds={args.rounds}")
    print(f"robustfit AdversarialClassifier: {rf_m:8.1f} images/s (median; runs: "
          + ", ".join(f"{v:.0f}" for v in rf) + ")")
    print(f"plain PyTorch loop:              {pl_m:8.1f} images/s (median; runs: "
          + ", ".join(f"{v:.0f}" for v in pl) + ")")
    print(f"ratio robustfit/plain: {rf_m / pl_m:.3f}")


if __name__ == "__main__":
    main()
