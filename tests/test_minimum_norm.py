"""MinimumNorm: the minimum-norm attack on its own (box, verification, distances,
the exact distance of a linear model, validation)."""

from __future__ import annotations

import doctest
import importlib
import re

import numpy as np
import pytest
import torch
from sklearn.base import clone

from robustfit.attacks import MinimumNorm, perturbation_norm
from robustfit.metrics import average_robustness


def _wrong(module, x, y):
    with torch.no_grad():
        return module(x).argmax(1) != y


def _linear_net(w, b):
    """Two logits (f, -f) with f = w.x + b: the boundary is the hyperplane f = 0."""
    net = torch.nn.Linear(len(w), 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor(np.stack([w, -w]), dtype=torch.float32))
        net.bias.copy_(torch.tensor([b, -b], dtype=torch.float32))
    return net


def _linear_problem(seed=1, n=40, d=6):
    rng = np.random.RandomState(seed)
    w, b = rng.randn(d), 0.2
    X = rng.randn(n, d).astype(np.float32)
    f = X @ w + b
    return _linear_net(w, b), X, (f < 0).astype(np.int64), f, w


@pytest.fixture(scope="module")
def batch(digits_small):
    _, _, X, y = digits_small
    return torch.as_tensor(X[:40]), torch.as_tensor(y[:40])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_points_are_in_the_box_misclassified_and_at_their_distance(std_module, batch, norm):
    X, y = batch
    X_adv, dist = MinimumNorm(norm=norm, steps=10, search_steps=8, n_targets=1).run(std_module, X, y)
    assert X_adv.shape == X.shape and dist.shape == (len(X),)
    assert float(X_adv.min()) >= 0.0 and float(X_adv.max()) <= 1.0
    finite = torch.isfinite(dist)
    assert float(finite.float().mean()) > 0.9  # a standard model has adversarial points nearby
    # every finite distance comes with a misclassified point at that distance
    assert bool(_wrong(std_module, X_adv, y)[finite].all())
    np.testing.assert_allclose(perturbation_norm(X_adv, X, norm)[finite].numpy(), dist[finite].numpy(),
                               atol=1e-5)
    # 0 exactly where the clean point is misclassified; the clean point where nothing was found
    assert torch.equal(dist == 0, _wrong(std_module, X, y))
    keep = ~finite | (dist == 0)
    assert torch.equal(X_adv[keep], X[keep])


def test_points_stay_in_a_custom_box():
    net, X, y, _, _ = _linear_problem()
    X = np.clip(X, -1.0, 1.5)
    for norm in ("linf", "l2"):
        X_adv, dist = MinimumNorm(norm=norm, bounds=(-1.0, 1.5), steps=10, search_steps=6).run(net, X, y)
        assert float(X_adv.min()) >= -1.0 and float(X_adv.max()) <= 1.5
        assert bool(_wrong(net, X_adv, torch.as_tensor(y))[torch.isfinite(dist)].all())


@pytest.mark.parametrize("norm, dual", [("l2", 2), ("linf", 1)])
def test_linear_model_gives_the_distance_to_the_hyperplane(norm, dual):
    net, X, y, f, w = _linear_problem()
    X_adv, dist = MinimumNorm(norm=norm, bounds=None).run(net, X, y)
    analytic = np.abs(f) / np.linalg.norm(w, ord=dual)
    dist = dist.numpy()
    # an upper bound of the distance, within 2% of it
    assert np.all(dist >= analytic * (1 - 1e-4))
    np.testing.assert_allclose(dist, analytic, rtol=0.02, atol=1e-4)
    assert bool(_wrong(net, X_adv, torch.as_tensor(y)).all())


def test_max_epsilon_caps_the_search():
    net, X, y, f, w = _linear_problem(n=60)
    analytic = np.abs(f) / np.linalg.norm(w)
    cap = float(np.median(analytic))
    _, dist = MinimumNorm(norm="l2", bounds=None, max_epsilon=cap).run(net, X, y)
    dist = dist.numpy()
    found = np.isfinite(dist)
    assert np.all(dist[found] <= cap + 1e-6)
    assert not found[analytic > cap].any()
    assert found[analytic < 0.5 * cap].all()


def test_call_returns_the_points_of_run(batch, std_module):
    X, y = batch
    attack = MinimumNorm(norm="l2", steps=5, search_steps=4, n_targets=1)  # no random start: deterministic
    X_adv, _ = attack.run(std_module, X.numpy(), y.numpy())
    assert torch.equal(attack(std_module, X, y), X_adv)
    assert not std_module.training


def test_parameters_clone_and_no_epsilon():
    attack = MinimumNorm(norm="l2", steps=7, max_epsilon=2.0)
    params = clone(attack).get_params()
    assert params == attack.get_params() and params["max_epsilon"] == 2.0
    assert "epsilon" not in params and "epsilon" not in MinimumNorm._parameter_constraints


@pytest.mark.parametrize("params, name", [
    ({"norm": "l1"}, "norm"), ({"steps": 0}, "steps"), ({"restarts": 0}, "restarts"),
    ({"n_targets": -1}, "n_targets"), ({"search_steps": 0}, "search_steps"), ({"eps_init": 0.0}, "eps_init"),
    ({"max_epsilon": -1.0}, "max_epsilon"), ({"bounds": (1.0, 0.0)}, "bounds"),
])
def test_invalid_parameters_name_class_parameter_and_value(params, name):
    net, X, y, _, _ = _linear_problem(n=4)
    value = repr(next(iter(params.values())))
    with pytest.raises(ValueError, match=rf"MinimumNorm: {name} must be .*got {re.escape(value)}"):
        MinimumNorm(**params).run(net, np.clip(X, 0, 1), y)


def test_data_outside_the_box_is_rejected():
    net, X, y, _, _ = _linear_problem(n=4)
    with pytest.raises(ValueError, match="outside the declared input box"):
        MinimumNorm()(net, X + 5.0, y)


def test_average_robustness_reports_the_attack_distances(std_module, batch):
    X, y = batch
    res = average_robustness(std_module, X, y, "l2", steps=8, search_steps=6)
    _, dist = MinimumNorm(norm="l2", steps=8, search_steps=6).run(std_module, X, y)
    np.testing.assert_array_equal(res.distances, dist.numpy().astype(np.float64))


def test_average_robustness_names_bad_arguments(batch, std_module):
    X, y = batch
    with pytest.raises(ValueError, match="average_robustness: steps must be an integer >= 1, got 0"):
        average_robustness(std_module, X, y, steps=0)
    with pytest.raises(ValueError, match="average_robustness: confidence must be"):
        average_robustness(std_module, X, y, confidence=1.5)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(40,\)"):
        average_robustness(std_module, X, y, sample_weight=np.ones(3))


def test_docstring_example():
    result = doctest.testmod(importlib.import_module("robustfit.attacks.minimum_norm"))
    assert result.attempted > 0 and result.failed == 0
