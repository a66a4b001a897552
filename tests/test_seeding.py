"""Seeded fits repeat in threads; evaluations repeat in other processes; nothing passed in changes.

* Fits with the same ``random_state`` in two threads at once give the weights of a fit run
  alone, and ``GridSearchCV`` with joblib's threading backend gives the scores of ``n_jobs=1``.
* ``robust_accuracy``, ``robust_score``, ``robustness_curve`` and ``check_gradient_masking`` use
  the estimator's ``random_state`` (or their own): the same figure in a fresh process, whatever
  torch's global generator holds, and the global generator is left alone.
* The evaluation paths and the robust validation callback never mutate the attack they get.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from joblib import parallel_backend
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback

from robustfit import AdversarialClassifier
from robustfit._utils import (
    GLOBAL_RNG_LOCK,
    RandomSource,
    rand_like,
    random_source,
    random_streams_kept,
    torch_seeded,
)
from robustfit.attacks import PGD, GeneratorSynth, Square
from robustfit.metrics import (
    check_gradient_masking,
    make_robust_scorer,
    robust_accuracy,
    robustness_curve,
)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.one_thread  # see conftest.py


@pytest.fixture(scope="module")
def data(digits):
    X, y = digits
    return X[:240], y[:240], X[1500:1560], y[1500:1560]


def _clf(**kwargs):
    params = dict(attack=PGD(epsilon=0.1, steps=2), max_epochs=2, batch_size=48, random_state=3,
                  device="cpu")
    params.update(kwargs)
    return AdversarialClassifier(**params)


def _weights(clf):
    return [t.clone() for t in clf.module_.state_dict().values()]


def test_seeded_fits_in_threads_repeat_exactly(data):
    Xtr, ytr, _, _ = data
    alone = _weights(_clf().fit(Xtr, ytr))
    with ThreadPoolExecutor(2) as pool:
        fits = list(pool.map(lambda _: _weights(_clf().fit(Xtr, ytr)), range(2)))
    for weights in fits:
        assert all(torch.equal(a, b) for a, b in zip(alone, weights))


class _OneThreadHere(Callback):
    """Pin torch to one intra-op thread in the thread that fits. OpenMP's thread
    count is per thread: joblib's worker threads do not inherit the main
    thread's ``torch.set_num_threads(1)``, and a different thread count sums in
    a different order, which can flip a borderline prediction."""

    def on_train_begin(self, net, **kwargs):
        torch.set_num_threads(1)


def test_grid_search_with_threads_equals_one_job(data):
    Xtr, ytr, _, _ = data
    grid = {"attack__epsilon": [0.05, 0.1]}
    scoring = make_robust_scorer(PGD(epsilon=0.1, steps=3))

    def search(n_jobs):
        clf = _clf(max_epochs=1, train_split=None, callbacks=[("one_thread", _OneThreadHere())])
        gs = GridSearchCV(clf, grid, scoring=scoring, cv=2, n_jobs=n_jobs, refit=False)
        return gs.fit(Xtr, ytr).cv_results_

    serial = search(1)
    with parallel_backend("threading", n_jobs=2):
        threaded = search(2)
    for key in ("split0_test_score", "split1_test_score"):
        assert np.array_equal(serial[key], threaded[key])


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    Xtr, ytr, Xte, yte = data
    clf = _clf(max_epochs=3).fit(Xtr, ytr)
    path = tmp_path_factory.mktemp("seed") / "model.pt"
    clf.save(path)
    return clf, path


def _evaluations(clf, X, y):
    attack = PGD(epsilon=0.15, steps=3)  # random start: a draw per sample
    return {
        "robust_accuracy": robust_accuracy(clf, X, y, attack=attack),
        "robust_score": clf.robust_score(X, y, attack=attack, check=False),
        "curve": robustness_curve(clf, X, y, [0.05, 0.15], attack=attack).accuracies.tolist(),
        "square": robust_accuracy(clf, X, y, attack=Square(epsilon=0.15, n_queries=20)),
        "masking": check_gradient_masking(clf, X, y, 0.15, checks=["steps"], steps=2,
                                          restarts=2).steps_accuracies,
    }


def test_evaluations_repeat_in_another_process(fitted, data):
    clf, path = fitted
    _, _, Xte, yte = data
    torch.manual_seed(123)
    state = torch.get_rng_state()
    here = _evaluations(clf, Xte, yte)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    torch.manual_seed(7)  # whatever the global generator holds
    assert _evaluations(clf, Xte, yte) == here
    other = robust_accuracy(clf, Xte, yte, attack=PGD(epsilon=0.15, steps=3), random_state=99)
    assert 0 <= other <= 1
    np.save(path.with_name("X.npy"), Xte)
    np.save(path.with_name("y.npy"), yte)
    code = textwrap.dedent(f"""
        import json, sys, numpy as np, torch
        torch.set_num_threads(1)
        torch.manual_seed(2024)
        sys.path.insert(0, r"{Path(__file__).parent}")
        from test_seeding import _evaluations
        from robustfit import AdversarialClassifier
        clf = AdversarialClassifier.load(r"{path}")
        X, y = np.load(r"{path.with_name('X.npy')}"), np.load(r"{path.with_name('y.npy')}")
        print(json.dumps(_evaluations(clf, X, y)))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(here))


def test_evaluations_and_validation_do_not_mutate_the_attack(fitted, data):
    clf, _ = fitted
    Xtr, ytr, Xte, yte = data
    synth = GeneratorSynth(epsilon=0.1, latent_dim=4)
    pgd = PGD(epsilon=0.1, steps=2)
    before = {id(a): copy.deepcopy(vars(a)) for a in (synth, pgd)}
    robust_accuracy(clf, Xte, yte, attack=synth)
    check_gradient_masking(clf, Xte, yte, 0.1, attack=synth, checks=["blackbox"], n_queries=5)
    robustness_curve(clf, Xte, yte, [0.1], attack=pgd)
    clf.robust_score(Xte, yte, attack=synth, check=False)
    fitted_valid = _clf(max_epochs=2, valid_attack=synth).fit(Xtr, ytr)
    again = _clf(max_epochs=2, valid_attack=synth).fit(Xtr, ytr)
    assert fitted_valid.history[:, "valid_robust_acc"] == again.history[:, "valid_robust_acc"]
    for a in (synth, pgd):
        assert vars(a).keys() == before[id(a)].keys()  # no generator_, no other fitted state
        assert all(vars(a)[k] == before[id(a)][k] for k in vars(a))


def test_random_streams_kept_puts_every_stream_back():
    # a measurement inside the block moves no stream the surrounding code draws from
    def draws():
        return (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random(),
                rand_like(torch.zeros(2)).tolist())

    def inside():
        torch.rand(5)
        np.random.rand(5)
        random.random()
        rand_like(torch.zeros(5))

    with random_source(RandomSource(4)):
        torch.manual_seed(1), np.random.seed(1), random.seed(1)
        expected = draws()
    with random_source(RandomSource(4)) as source:
        torch.manual_seed(1), np.random.seed(1), random.seed(1)
        with random_streams_kept("cpu"):
            inside()
            with random_source(RandomSource(9)):  # a private source of its own is fine too
                rand_like(torch.zeros(5))
        assert draws() == expected
        assert set(source._generators) == {torch.device("cpu")}


def test_torch_seeded_waits_for_another_threads_seeded_init():
    """A fit seeds (and later rewinds) torch's global generator for its whole run; doing so
    while another thread holds GLOBAL_RNG_LOCK between its seed and its weight draws gave that
    thread other initial weights (threaded grid searches differed from n_jobs=1)."""
    holding, release = threading.Event(), threading.Event()
    entered, inside, exited = threading.Event(), threading.Event(), threading.Event()

    def hold():
        with GLOBAL_RNG_LOCK:
            holding.set()
            release.wait(10)

    def seeded():
        with torch_seeded(5):
            entered.set()
            inside.wait(10)
        exited.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    user = threading.Thread(target=seeded)
    user.start()
    assert not entered.wait(0.3)  # the seeding waits for the lock
    release.set()
    holder.join(10)
    assert entered.wait(10)
    holding.clear()
    release.clear()
    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    inside.set()
    assert not exited.wait(0.3)  # so does the restore
    release.set()
    holder.join(10)
    user.join(10)
    assert exited.is_set()
