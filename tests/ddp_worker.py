"""Scenarios of the data-parallel tests (tests/test_distributed.py).

Run under ``torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT``
(or two ``torchrun --nnodes=2 --nproc_per_node=1`` agents meeting at one
rendezvous point, as two nodes would) each rank runs every scenario and writes ``OUT/rank{r}.pt``; imported by the
tests, the same functions give the one-process reference. Kept small: 2 CPU
cores, a few hundred digits, 2 epochs.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings

import numpy as np
import torch
from skorch.callbacks import Callback, Checkpoint
from skorch.dataset import ValidSplit
from torch.utils.data import TensorDataset

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD, AutoAttack, GeneratorSynth, Langevin
from robustfit.datasets import load_digits_images
from robustfit.losses import PrimalDual
from robustfit.metrics import robust_accuracy, robustness_curve
from robustfit.recipes import AWP, EMA


def digits(n, offset=0):
    X, y = load_digits_images()
    perm = np.random.RandomState(0).permutation(len(X))
    idx = perm[offset:offset + n]
    return X[idx], y[idx]


def summary(clf):
    """What two runs must agree on: weights and history."""
    hist = clf.history
    keys = [k for k in ("train_loss", "valid_loss", "valid_acc", "dual_nu", "clean_loss")
            if k in hist[-1]]
    return {
        "weights": torch.cat([p.detach().reshape(-1).cpu() for p in clf.module_.parameters()]),
        "history": {k: [float(v) for v in hist[:, k]] for k in keys},
        "batch_losses": [float(b["train_loss"]) for row in hist for b in row["batches"]
                         if "train_batch_size" in b],
        "batch_sizes": [int(b["train_batch_size"]) for row in hist for b in row["batches"]
                        if "train_batch_size" in b],
    }


def fit_pgd():
    """PGD with the default validation split (valid_loss, valid_acc)."""
    X, y = digits(600)
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=3), max_epochs=2, batch_size=64,
                                lr=0.01, random_state=0, device="cpu")
    return clf.fit(X, y)


def fit_dale():
    """Langevin + PrimalDual, no validation split, 541 samples: the last
    batch (29) splits unevenly over 2 ranks."""
    X, y = digits(541)
    clf = AdversarialClassifier(
        attack=Langevin(epsilon=0.1, steps=3, temperature=1e-2),
        objective=PrimalDual(margin=0.1, dual_lr=0.05), max_epochs=2, batch_size=64, lr=0.01,
        train_split=None, random_state=0, device="cpu")
    return clf.fit(X, y)


def fit_proxy():
    """Proxy data as an (X, y) pair, mixed into every batch."""
    X, y = digits(400)
    Xp, yp = digits(300, offset=1000)
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), proxy_data=(Xp, yp),
                                proxy_ratio=0.5, max_epochs=2, batch_size=64, train_split=None, lr=0.01,
                                random_state=0, device="cpu")
    return clf.fit(X, y)


def fit_stream():
    """A torch Dataset without arrays: streamed through a DataLoader, sharded."""
    X, y = digits(300)
    data = TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), max_epochs=2, batch_size=64,
                                train_split=None, lr=0.01, random_state=0, device="cpu")
    return clf.fit(data, None)


def fit_synth():
    """GeneratorSynth: the generator trains data-parallel (one epoch)."""
    X, y = digits(200)
    clf = AdversarialClassifier(attack=GeneratorSynth(epsilon=0.1), max_epochs=1, batch_size=64,
                                train_split=None, lr=0.01, random_state=0, device="cpu")
    clf.fit(X, y)
    gen = clf.attack_.generator_
    return torch.cat([t.detach().reshape(-1).float() for t in
                      list(gen.parameters()) + list(gen.buffers())])


def fit_awp():
    """Adversarial weight perturbation: every rank moves the weights by the
    global batch's weight gradient, as one process does."""
    X, y = digits(300)
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), awp=AWP(gamma=0.05),
                                max_epochs=2, batch_size=64, train_split=None, lr=0.01,
                                random_state=0, device="cpu")
    return clf.fit(X, y)


class BatchNormCNN(torch.nn.Module):
    """A digits CNN with batch normalization (running statistics per rank)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))

    def forward(self, x):
        return self.net(x)


class RecordSplit(Callback):
    """The validation rows of every epoch, in the history."""

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        net.history.record("valid_rows", [int(i) for i in dataset_valid.indices])


def fit_batchnorm():
    """BatchNorm with an EMA of the weights: every rank must validate, and end
    with, the same model."""
    X, y = digits(300)
    clf = AdversarialClassifier(BatchNormCNN, attack=PGD(epsilon=0.1, steps=2), ema=EMA(warmup=0),
                                train_split=ValidSplit(0.2), callbacks=[RecordSplit()],
                                max_epochs=2, batch_size=64, lr=0.01, random_state=0, device="cpu")
    clf.fit(X, y)
    state = clf.module_.state_dict()
    ema = dict(clf.callbacks_)["ema"]
    return {"state": {k: v.detach().clone() for k, v in state.items()},
            "ema": [t.detach().clone() for t in ema.average_],
            "valid_loss": [float(v) for v in clf.history[:, "valid_loss"]],
            "valid_rows": clf.history[:, "valid_rows"],
            "proba": torch.as_tensor(clf.predict_proba(digits(100, offset=1500)[0]))}


def unseeded_split():
    """The validation rows of a shuffled split without random_state (the same on every rank)."""
    X, y = digits(200)
    clf = AdversarialClassifier(train_split=ValidSplit(0.2), callbacks=[RecordSplit()],
                                max_epochs=1, batch_size=64, device="cpu")
    return clf.fit(X, y).history[:, "valid_rows"]


def fit_checkpointed(dirname):
    X, y = digits(200)
    AdversarialClassifier(max_epochs=1, batch_size=64, train_split=None, random_state=0,
                          device="cpu", verbose=1,
                          callbacks=[Checkpoint(dirname=dirname, monitor=None)]).fit(X, y)
    return sorted(os.listdir(dirname)) if os.path.isdir(dirname) else []


def evaluate(clf):
    """Robust accuracy, a robustness curve, the AutoAttack-style ensemble and
    robust_score on 300 points."""
    X, y = digits(300, offset=1400)
    attack = PGD(epsilon=0.1, steps=5, random_start=True)
    torch.manual_seed(0)  # the random starts: unseeded evaluations follow torch's generator
    return {
        "robust_accuracy": robust_accuracy(clf, X, y, attack=attack, batch_size=64),
        "curve": robustness_curve(clf, X, y, [0.0, 0.05, 0.2], attack=attack,
                                  batch_size=64).accuracies.tolist(),
        "autoattack": robust_accuracy(clf, X, y, attack=AutoAttack(epsilon=0.1, steps=10),
                                      batch_size=64),
        "robust_score": clf.robust_score(X, y, attack=attack, check=False),
    }


def error_of(fn):
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return None


def bad_inputs(rank):
    X, y = digits(200)
    errors = {}
    errors["batch"] = error_of(lambda: AdversarialClassifier(
        batch_size=1, max_epochs=1, device="cpu", train_split=None).fit(X, y))
    n = 200 if rank == 0 else 190
    errors["sizes"] = error_of(lambda: AdversarialClassifier(
        max_epochs=1, device="cpu", train_split=None).fit(X[:n], y[:n]))
    errors["cuda"] = error_of(lambda: AdversarialClassifier(
        max_epochs=1, device="cuda", train_split=None).fit(X, y)) \
        if not torch.cuda.is_available() else "skipped: CUDA present"
    return errors


def main(out):
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(out, caught)


def run(out, caught):
    # no init_process_group here: the first fit initializes the group from
    # torchrun's variables (a script that calls it itself takes the same path)
    pgd = fit_pgd()
    rank = torch.distributed.get_rank()
    result = {"world_size": torch.distributed.get_world_size(),
              "local_rank": int(os.environ["LOCAL_RANK"])}
    result["pgd"] = summary(pgd)
    result["eval"] = evaluate(pgd)
    dale = fit_dale()
    result["dale"] = summary(dale)
    result["dale"]["nu"] = dale.objective_.nu_
    result["proxy"] = summary(fit_proxy())
    result["stream"] = summary(fit_stream())
    result["awp"] = summary(fit_awp())
    result["batchnorm"] = fit_batchnorm()
    result["unseeded_split"] = unseeded_split()  # differs from run to run
    result["synth_generator"] = fit_synth()
    result["checkpoint_files"] = fit_checkpointed(os.path.join(out, f"checkpoints{rank}"))
    result["errors"] = bad_inputs(rank)
    result["warnings"] = sorted({str(w.message) for w in caught})
    if rank == 0:
        with open(os.path.join(out, "pgd.pkl"), "wb") as f:
            pickle.dump(pgd, f)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.barrier()  # destroyed together: see examples/ddp_train.py
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
