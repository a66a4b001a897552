"""Data-parallel adversarial training and evaluation with torchrun.

The same script runs on one process or on N::

    python examples/ddp_train.py                                   # one process
    torchrun --standalone --nproc_per_node=4 examples/ddp_train.py # 4 ranks, one node
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=$HEAD:29500 examples/ddp_train.py          # 16 ranks, two nodes

Every rank runs the whole script with the same data. ``fit`` shards each global
batch of ``batch_size`` across the ranks (DistributedDataParallel averages the
gradients), ``robust_score`` shards the test points and gathers the results,
and every rank ends with the same fitted estimator; only rank 0 prints and
saves. On the same seed and global batch, N ranks train the model one process
trains (within float tolerance).

Data: the MNIST test split (first 8,000 images to train, last 2,000 to test)
when ``--data`` points to it, else scikit-learn's 8x8 digits. ``--quick`` is a
smoke test (digits, 2 epochs).
"""

from __future__ import annotations

import argparse
import os
import pickle
import time

import numpy as np
import torch
import torch.distributed as dist

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.datasets import load_digits_images, load_mnist


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("ROBUSTFIT_MNIST_DIR", ""),
                   help="folder with the MNIST IDX files (default: $ROBUSTFIT_MNIST_DIR; digits if unset)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch, all ranks together")
    p.add_argument("--epsilon", type=float, default=None, help="l_inf budget (0.3 MNIST, 0.1 digits)")
    p.add_argument("--device", default="auto", help="'auto': this rank's GPU when there is one")
    p.add_argument("--out", default="ddp_model.pkl", help="where rank 0 pickles the fitted model")
    p.add_argument("--quick", action="store_true", help="digits, 2 epochs: a smoke test")
    return p.parse_args(argv)


def load(args):
    if args.data and not args.quick:
        X, y = load_mnist(args.data, split="test")
        return (X[:8000], y[:8000]), (X[-2000:], y[-2000:]), args.epsilon or 0.3
    X, y = load_digits_images()
    perm = np.random.RandomState(0).permutation(len(X))
    X, y = X[perm], y[perm]
    n_train = 500 if args.quick else 1500
    return (X[:n_train], y[:n_train]), (X[1500:], y[1500:]), args.epsilon or 0.1


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.epochs = 2
    # What every torchrun script does; robustfit would also do it on its own
    # (from torchrun's variables) at the first fit.
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        cuda = args.device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1

    (X_train, y_train), (X_test, y_test), eps = load(args)
    clf = AdversarialClassifier(
        attack=PGD(epsilon=eps, steps=7), max_epochs=args.epochs, batch_size=args.batch_size,
        lr=1e-2, random_state=0, device=args.device, verbose=int(not args.quick),  # rank 0 prints
    )
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    # every rank calls the evaluation: the test points are sharded across ranks
    # (seeded, so that one process and N ranks print the same figure)
    torch.manual_seed(0)
    clean = clf.score(X_test, y_test)
    robust = clf.robust_score(X_test, y_test, attack=PGD(epsilon=eps, steps=20), check=False)
    if rank == 0:
        print(f"ranks={world} global_batch={args.batch_size} epochs={args.epochs} "
              f"fit={seconds:.1f}s train_loss={clf.history[-1, 'train_loss']:.4f}")
        print(f"clean accuracy {clean:.4f}  robust accuracy (PGD-20, eps={eps}) {robust:.4f}")
        with open(args.out, "wb") as f:  # the plain module: loads anywhere, on a CPU too
            pickle.dump(clf, f)
        print(f"saved {args.out}")
    if dist.is_initialized():
        # wait for rank 0's pickle: a gloo group destroyed while a peer is still
        # at work can abort the process, and torchrun then reports a failed run
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
