"""Grid search on a Dask cluster: one single-threaded worker per GPU.

scikit-learn's ``GridSearchCV`` hands its fits to joblib; joblib's ``"dask"``
backend sends them to the workers of a ``dask.distributed`` cluster, and the
fitted estimators and scores come back to this process. Each worker is a
separate process pinned to one GPU with ``CUDA_VISIBLE_DEVICES``, so inside it
that GPU is ``cuda:0`` and ``device="auto"`` trains on it. Without a GPU the
same script runs on CPU workers (``--workers``, 2 by default).

    python examples/dask_grid_search.py [--workers 2] [--epochs 3]

Needs ``pip install 'robustfit[dask]'`` (dask and distributed).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import joblib
import torch
from distributed import Client, Nanny, Scheduler, SpecCluster
from sklearn.model_selection import GridSearchCV

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.datasets import load_digits_images
from robustfit.metrics import make_robust_scorer


def pinned_cluster(n_workers=None):
    """A local Dask cluster with one single-threaded worker process per GPU.

    Worker ``i`` runs with ``CUDA_VISIBLE_DEVICES=i``: it sees only GPU ``i``,
    as ``cuda:0``, so ``device="auto"`` (or ``"cuda"``) uses that GPU and no
    other. Workers are started by dask's nanny in fresh processes (the
    ``spawn`` start method, dask's default), never forked from a process that
    may already hold a CUDA context. On a machine without GPUs it starts
    ``n_workers`` CPU workers that see no GPU (``CUDA_VISIBLE_DEVICES=""``).

    Parameters
    ----------
    n_workers : int or None
        Number of workers; ``None`` is one per visible GPU (at least 1).
        With GPUs, at most the number of GPUs.

    Returns
    -------
    cluster : distributed.SpecCluster
        Pass it to ``distributed.Client``; close it when done.
    """
    # device_count() asks the driver without creating a CUDA context here
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_workers is None:
        n_workers = max(n_gpus, 1)
    if n_gpus and n_workers > n_gpus:
        raise ValueError(f"n_workers={n_workers} but only {n_gpus} GPU(s) are visible: "
                         "one worker per GPU at most")
    workers = {
        f"worker-{i}": {
            "cls": Nanny,
            "options": {
                "host": "127.0.0.1",  # a cluster on this machine only
                "nthreads": 1,  # one fit at a time per GPU
                "silence_logs": logging.WARNING,
                "env": {"CUDA_VISIBLE_DEVICES": str(i) if n_gpus else ""},
            },
        }
        for i in range(n_workers)
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=logging.WARNING)


def visible_devices():
    """This process's ``CUDA_VISIBLE_DEVICES`` (run on each worker)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=None, help="default: one per GPU, else 2")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    n_workers = args.workers or (None if torch.cuda.is_available() else 2)

    X, y = load_digits_images()
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=3), max_epochs=args.epochs,
                                train_split=None, device="auto", random_state=0)
    search = GridSearchCV(
        clf, {"attack__epsilon": [0.05, 0.1], "lr": [1e-3, 3e-3]}, cv=3, refit=False,
        scoring={"accuracy": "accuracy",
                 "robust": make_robust_scorer(PGD(epsilon=0.1, steps=10, random_start=False))},
    )
    t0 = time.perf_counter()
    with pinned_cluster(n_workers) as cluster, Client(cluster) as client:
        print(f"cluster up in {time.perf_counter() - t0:.1f} s")
        print("workers:", client.run(visible_devices))
        with joblib.parallel_backend("dask"):
            t0 = time.perf_counter()
            search.fit(X, y)
            print(f"grid search: {time.perf_counter() - t0:.1f} s")
    res = search.cv_results_
    for params, acc, rob in zip(res["params"], res["mean_test_accuracy"], res["mean_test_robust"]):
        print(f"{params}  accuracy {acc:.3f}  robust {rob:.3f}")


if __name__ == "__main__":
    main()
