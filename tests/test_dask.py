"""Model selection on a Dask cluster through joblib's ``"dask"`` backend.

The cluster is the one ``examples/dask_grid_search.py`` builds (and the
"Scaling out" page shows): single-threaded worker processes, each pinned with
``CUDA_VISIBLE_DEVICES`` (here, on a machine without GPUs, to none). Seeded
searches on it give the scores of ``n_jobs=1``, and fitted estimators come back
to this process and pickle. Skipped without ``robustfit[dask]``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV, cross_validate

from robustfit import AdversarialClassifier
from robustfit._validation import resolve_device
from robustfit.attacks import PGD
from robustfit.metrics import make_robust_scorer

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dask_grid_search.py"


def _example():
    spec = importlib.util.spec_from_file_location("dask_grid_search", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def client():
    example = _example()
    with example.pinned_cluster(2) as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=120)
        yield c


@pytest.fixture(scope="module")
def data(digits):
    X, y = digits
    return X[:300], y[:300]


def _clf():
    return AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), max_epochs=2, batch_size=64,
                                 train_split=None, random_state=0)


SCORING = {"accuracy": "accuracy",
           # no random start: the score is a function of the fitted model alone
           "robust": make_robust_scorer(PGD(epsilon=0.1, steps=3, random_start=False))}


@pytest.fixture()
def one_thread():
    # the workers run torch with one thread (dask sets OMP_NUM_THREADS=1 in
    # them); so does the sequential run, so both do the same arithmetic
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_workers_are_pinned_single_threaded_spawned_processes(client):
    info = client.scheduler_info()["workers"]
    assert len(info) == 2 and all(w["nthreads"] == 1 for w in info.values())
    example = _example()
    # pinned to no GPU on this machine: "auto" resolves to the CPU in each worker
    assert set(client.run(example.visible_devices).values()) == {""}
    assert set(client.run(resolve_device, "auto").values()) == {"cpu"}
    # worker processes are started fresh, never forked after CUDA is initialized
    assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids


def test_grid_search_on_dask_gives_the_sequential_scores(client, data, one_thread):
    X, y = data
    grid = {"attack__epsilon": [0.05, 0.1]}
    seq = GridSearchCV(_clf(), grid, cv=2, scoring=SCORING, refit=False, n_jobs=1).fit(X, y)
    dist = GridSearchCV(_clf(), grid, cv=2, scoring=SCORING, refit=False, n_jobs=-1)
    with joblib.parallel_backend("dask", client=client):
        dist.fit(X, y)
    keys = [k for k in seq.cv_results_ if k.startswith("split") and "_test_" in k]
    assert len(keys) == 4
    for key in keys:
        np.testing.assert_allclose(dist.cv_results_[key], seq.cv_results_[key], rtol=0, atol=1e-12,
                                   err_msg=key)
    # the scores are not all equal by accident: the two epsilons give different models
    assert seq.cv_results_["params"] == dist.cv_results_["params"]


def test_fitted_estimators_return_from_the_workers_and_pickle(client, data, one_thread):
    X, y = data
    seq = cross_validate(_clf(), X, y, cv=2, return_estimator=True, n_jobs=1)
    with joblib.parallel_backend("dask", client=client):
        dist = cross_validate(_clf(), X, y, cv=2, return_estimator=True, n_jobs=-1)
    np.testing.assert_array_equal(dist["test_score"], seq["test_score"])
    for est_seq, est_dist in zip(seq["estimator"], dist["estimator"]):
        assert isinstance(est_dist, AdversarialClassifier) and est_dist.device == "cpu"
        back = pickle.loads(pickle.dumps(est_dist))
        np.testing.assert_allclose(back.predict_proba(X[:50]), est_seq.predict_proba(X[:50]),
                                   rtol=0, atol=1e-6)
