"""skorch callbacks that robustfit adds to training."""

from __future__ import annotations

from skorch.callbacks import Callback


class RobustValidation(Callback):
    """Record robust accuracy on the validation split after every epoch.

    Added by :class:`~robustfit.AdversarialClassifier` under the name
    ``valid_robust_acc`` when ``valid_attack`` is set; it can also be passed in
    ``callbacks`` directly. The score goes into the history as ``name``.

    Parameters
    ----------
    attack : robustfit.attacks.Attack
        The attack run on the validation split.
    name : str, default="valid_robust_acc"
        History key.
    lower_is_better : bool, default=False
        Whether lower scores are better (for checkpointing callbacks).
    """

    def __init__(self, attack, name="valid_robust_acc", lower_is_better=False):
        self.attack = attack
        self.name = name
        self.lower_is_better = lower_is_better

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        if dataset_valid is None:
            return
        from .metrics import robust_accuracy

        score = robust_accuracy(net, dataset_valid, None, attack=self.attack)
        net.history.record(self.name, score)
        best = net.history[:-1, self.name] if len(net.history) > 1 else []
        best = [b for b in best if b is not None]
        is_best = not best or (
            score < min(best) if self.lower_is_better else score > max(best)
        )
        net.history.record(self.name + "_best", bool(is_best))


class Progress(Callback):
    """Progress bars over epochs and over the batches of each epoch (tqdm).

    Added by :class:`~robustfit.AdversarialClassifier` when ``verbose >= 1``.
    The outer bar counts epochs and shows the last train loss and validation
    accuracies; the inner bar counts the batches of the current epoch.
    """

    def initialize(self):
        self.epoch_bar_ = None
        self.batch_bar_ = None
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        from tqdm.auto import tqdm

        self.epoch_bar_ = tqdm(total=net.max_epochs, desc="epochs", position=0)

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        from tqdm.auto import tqdm

        n = -(-len(dataset_train) // net.batch_size) if dataset_train is not None else None
        self.batch_bar_ = tqdm(total=n, desc="batches", position=1, leave=False)

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.batch_bar_ is not None:
            self.batch_bar_.update(1)

    def on_epoch_end(self, net, **kwargs):
        if self.batch_bar_ is not None:
            self.batch_bar_.close()
        row = net.history[-1]
        shown = {k: f"{row[k]:.4f}" for k in ("train_loss", "valid_acc", "valid_robust_acc")
                 if isinstance(row.get(k), float)}
        self.epoch_bar_.set_postfix(shown)
        self.epoch_bar_.update(1)

    def on_train_end(self, net, **kwargs):
        if self.epoch_bar_ is not None:
            self.epoch_bar_.close()
