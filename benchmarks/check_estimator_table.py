"""scikit-learn's estimator checks on AdversarialClassifier and on plain skorch, side by side.

Runs every check of :func:`sklearn.utils.estimator_checks.check_estimator`
(legacy checks included) on

* ``AdversarialClassifier`` with its default tabular module (small
  ``max_epochs``), and
* plain skorch ``NeuralNetClassifier`` with a small module that adapts to the
  data: ``LazyLinear`` layers for the number of features, float32 casting in
  ``forward``, and a callback that sizes the output layer from ``y`` at
  ``on_train_begin`` (skorch builds the module before it sees the data, and
  does not encode labels: ``max(y) + 1`` outputs for integer labels);

and prints one row per check: ``passed``, ``failed`` (with the first line of
the error) or ``skipped``. ``tests/test_conformance.py`` imports this module:
its ``EXPECTED_FAILED_CHECKS`` is the list of checks AdversarialClassifier is
allowed to fail, each with a one-line reason, and every one of them must fail
for plain skorch too.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/check_estimator_table.py [--markdown]
"""

from __future__ import annotations

import argparse
import time
import unittest
import warnings

import numpy as np
import torch
from sklearn.utils.estimator_checks import estimator_checks_generator
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from torch import nn

from robustfit import AdversarialClassifier

#: Checks AdversarialClassifier fails, each with the reason; plain skorch fails them too.
EXPECTED_FAILED_CHECKS = {
    "check_no_attributes_set_in_init": (
        "skorch's NeuralNet.__init__ sets history_, initialized_ and virtual_params_ "
        "(inherited; plain skorch fails it the same way)"
    ),
    "check_set_params": (
        "skorch's get_params exposes its internal _params_to_validate set; the check sets it "
        "to a float and skorch's set_params then fails (plain skorch fails the same way)"
    ),
}


class LazyMLP(nn.Module):
    """A small MLP that adapts to the number of features (LazyLinear) and casts to float32."""

    def __init__(self, n_classes=2, hidden=16):
        super().__init__()
        self.n_classes = n_classes
        self.body = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        )

    def forward(self, x):
        return self.body(x.float())


class OutputsFromY(Callback):
    """Size LazyMLP's output layer from ``y`` when training begins (plain skorch has no hook for it)."""

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if y is None:
            return
        y = np.asarray(y)
        k = int(y.max()) + 1 if y.dtype.kind in "iu" and len(y) else len(np.unique(y))
        if net.module_.n_classes != k:
            net.module_ = LazyMLP(k).to(net.device)
            net.initialize_optimizer()


def make_robustfit(max_epochs=3):
    """AdversarialClassifier as the checks run it: tabular default module, a few epochs."""
    return AdversarialClassifier(max_epochs=max_epochs, batch_size=32, random_state=0, device="cpu")


def make_skorch(max_epochs=3):
    """Plain skorch NeuralNetClassifier with :class:`LazyMLP`."""
    return NeuralNetClassifier(
        LazyMLP, criterion=nn.CrossEntropyLoss, max_epochs=max_epochs, lr=0.1, batch_size=32,
        callbacks=[("outputs_from_y", OutputsFromY())], train_split=None, verbose=0,
    )


def check_name(check):
    """The name of a check as the generator yields it (a function or a partial)."""
    func = getattr(check, "func", check)
    return getattr(func, "__name__", repr(func))


def run_checks(estimator, only=None):
    """Run scikit-learn's checks on ``estimator``.

    Parameters
    ----------
    estimator : estimator
    only : collection of str or None
        Names of the checks to run (all when None).

    Returns
    -------
    results : dict
        Check name to ``(status, message)``, status one of "passed",
        "failed", "skipped"; in the order the checks ran. A check that runs
        several times (once per variant) counts as failed if any run fails.
    """
    results = {}
    for est, check in estimator_checks_generator(estimator, legacy=True):
        name = check_name(check)
        if only is not None and name not in only:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                check(est)
                status, message = "passed", ""
            except unittest.SkipTest as exc:
                status, message = "skipped", str(exc).splitlines()[0] if str(exc) else ""
            except Exception as exc:  # noqa: BLE001 - a failed check, whatever it raised
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                status, message = "failed", f"{type(exc).__name__}: {first}"[:160]
        previous = results.get(name)
        if previous is None or previous[0] != "failed":
            results[name] = (status, message)
    return results


def table(rf, sk, markdown=False):
    """Rows ``check | robustfit | skorch``."""
    names = list(dict.fromkeys(list(rf) + list(sk)))
    lines = []
    if markdown:
        lines += ["| check | robustfit | skorch |", "| --- | --- | --- |"]
    for name in names:
        a, b = rf.get(name, ("-", ""))[0], sk.get(name, ("-", ""))[0]
        lines.append(f"| {name} | {a} | {b} |" if markdown else f"{name:55s} {a:8s} {b:8s}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--max-epochs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rf = run_checks(make_robustfit(args.max_epochs))
    t1 = time.perf_counter()
    sk = run_checks(make_skorch(args.max_epochs))
    t2 = time.perf_counter()
    print(table(rf, sk, markdown=args.markdown))
    print()
    for label, res, secs in (("robustfit", rf, t1 - t0), ("skorch", sk, t2 - t1)):
        counts = {s: sum(v[0] == s for v in res.values()) for s in ("passed", "failed", "skipped")}
        print(f"{label}: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped of {len(res)} checks ({secs:.1f} s)")
    print("\nrobustfit failures:")
    for name, (status, message) in rf.items():
        if status == "failed":
            reason = EXPECTED_FAILED_CHECKS.get(name, "NOT IN EXPECTED_FAILED_CHECKS")
            print(f"  {name}: {message}\n    expected: {reason}")
    worse = [n for n, (s, _) in rf.items() if s == "failed" and sk.get(n, ("",))[0] == "passed"]
    print(f"\nchecks robustfit fails but skorch passes: {worse or 'none'}")


if __name__ == "__main__":
    main()
