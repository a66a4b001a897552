"""A training script resumed the documented way; tests/test_resume.py runs it as a subprocess.

    python tests/resume_run.py METHODS DIRNAME [--hang EPOCH BATCH READY_FILE] [--resumable]
    torchrun --standalone --nproc_per_node=2 --max-restarts=1 tests/resume_run.py ...

trains a digits classifier for each of METHODS (comma-separated: pgd, dale,
synth, ema, dropout) with skorch's ``Checkpoint`` (every epoch, into DIRNAME/<method>) and
``LoadInitState`` (``--resumable``: robustfit's ``ResumableCheckpoint``). Started again with the same arguments it resumes from the
last checkpoint. ``--hang`` makes the run create READY_FILE after BATCH
training batches of epoch EPOCH and then wait, so that the test can kill it in
the middle of that epoch. At the end of each method the weights, optimizer,
history and attack/objective state are written to DIRNAME/<method>/final.pt and
the epochs this process trained to DIRNAME/<method>/trained.json.

Under torchrun every rank hangs at the same batch (READY_FILE gets the rank
and the process id: ``READY_FILE.rank<r>``), only in the first attempt
(``TORCHELASTIC_RESTART_COUNT`` 0), so that the agent's restart resumes; each
rank writes ``final<r>.pt`` and ``trained<r>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from skorch.callbacks import Callback, Checkpoint, LoadInitState

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD, GeneratorSynth, Langevin
from robustfit.callbacks import ResumableCheckpoint
from robustfit.datasets import load_digits_images
from robustfit.losses import PrimalDual
from robustfit.proxy import GaussianMixtureProxy
from robustfit.recipes import EMA

MAX_EPOCHS = 4
_RANK = int(os.environ["RANK"]) if "WORLD_SIZE" in os.environ else None  # under torchrun


class Hang(Callback):
    """Signal readiness in the middle of an epoch, then wait until killed."""

    def __init__(self, epoch, batch, ready):
        self.epoch = epoch
        self.batch = batch
        self.ready = ready

    def on_batch_end(self, net, training=False, **kwargs):
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return  # restarted by torchrun's agent: resume, do not hang again
        batches = [b for b in net.history[-1]["batches"] if "train_batch_size" in b]
        if training and len(net.history) == self.epoch and len(batches) == self.batch:
            ready = self.ready + (f".rank{_RANK}" if _RANK is not None else "")
            with open(ready + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(ready + ".tmp", ready)
            while True:  # until the test kills this process
                time.sleep(1)


class RecordEpsilon(Callback):
    """The training attack's epsilon at every batch (the warm-up's position), in the history."""

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            net.history.record_batch("attack_epsilon", float(net.attack_.epsilon))


class CountEpochs(Callback):
    def initialize(self):
        self.trained_ = []
        return self

    def on_epoch_end(self, net, **kwargs):
        self.trained_.append(len(net.history))


class DropoutCNN(torch.nn.Module):
    """The digits CNN with dropout before its last layer."""

    def __init__(self, n_classes=10, in_channels=1):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Dropout(0.3), torch.nn.Linear(16 * 64, n_classes))

    def forward(self, x):
        return self.net(x)


def make(method, dirname, hang=None, resumable=False):
    counter = CountEpochs()
    if resumable:  # robustfit's one-callback form
        callbacks = [ResumableCheckpoint(dirname), counter, RecordEpsilon()]
    else:
        cp = Checkpoint(dirname=dirname, monitor=None)
        callbacks = [cp, LoadInitState(cp), counter, RecordEpsilon()]
    callbacks += [hang] if hang is not None else []
    common = dict(max_epochs=MAX_EPOCHS, batch_size=32, lr=3e-3, random_state=0, device="cpu",
                  callbacks=callbacks)
    if method == "pgd":  # PGD, with proxy samples mixed into every batch; the epsilon
        # warm-up lasts 3.5 epochs, so the kill in epoch 3 interrupts it
        clf = AdversarialClassifier(
            attack=PGD(epsilon=0.1, steps=3), valid_attack=PGD(epsilon=0.1, steps=2),
            attack_warmup=3.5,
            proxy_data=GaussianMixtureProxy(pca_components=8, mixture_components=1),
            proxy_ratio=0.25, **common)
    elif method == "dale":  # Langevin sampler and the primal-dual objective (dual variable)
        clf = AdversarialClassifier(
            attack=Langevin(epsilon=0.1, steps=3, temperature=1e-3),
            objective=PrimalDual(margin=0.05, dual_lr=0.05, nu_init=1.0), **common)
    elif method == "ema":  # an average of the weights beside the raw ones
        clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), ema=EMA(decay=0.9, warmup=0),
                                    **common)
    elif method == "dropout":  # a module drawing from torch's global generator
        clf = AdversarialClassifier(DropoutCNN, attack=PGD(epsilon=0.1, steps=2), **common)
    elif method == "synth":  # a generator network and its optimizer
        clf = AdversarialClassifier(attack=GeneratorSynth(epsilon=0.1, latent_dim=16), **common)
    else:
        raise SystemExit(f"unknown method {method!r}")
    return clf, counter


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("methods")
    parser.add_argument("dirname")
    parser.add_argument("--hang", nargs=3, default=None)
    parser.add_argument("--resumable", action="store_true", help="ResumableCheckpoint instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits_images()
    X, y = X[:400], y[:400]
    hang = None if args.hang is None else Hang(int(args.hang[0]), int(args.hang[1]), args.hang[2])
    for method in args.methods.split(","):
        dirname = os.path.join(args.dirname, method)
        clf, counter = make(method, dirname, hang, args.resumable)
        clf.fit(X, y)
        final = {
            "module": clf.module_.state_dict(),
            "optimizer": clf.optimizer_.state_dict(),
            "history": json.dumps(clf.history.to_list()),
            "attack": clf.attack_.get_fitted_state() if hasattr(clf.attack_, "get_fitted_state") else {},
            "nu": torch.tensor(getattr(clf.objective_, "nu_", float("nan"))),
            "proba": torch.as_tensor(clf.predict_proba(X)),
            "ema": [t.detach().clone() for t in getattr(dict(clf.callbacks_).get("ema"), "average_",
                                                        None) or []],
        }
        suffix = "" if _RANK is None else str(_RANK)
        torch.save(final, os.path.join(dirname, f"final{suffix}.pt"))
        with open(os.path.join(dirname, f"trained{suffix}.json"), "w") as f:
            json.dump(counter.trained_, f)

if __name__ == "__main__":
    main()
