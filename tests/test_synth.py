"""GeneratorSynth (Robustness-via-Synthesis) and the Sinkhorn OT term."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD, GeneratorSynth, perturbation_norm
from robustfit.losses import sinkhorn_distance


@pytest.fixture(scope="module")
def digits_t(digits_small):
    Xtr, ytr, Xte, yte = digits_small
    return torch.as_tensor(Xtr), torch.as_tensor(ytr).long(), torch.as_tensor(Xte), torch.as_tensor(yte).long()


@pytest.mark.parametrize("norm,eps,conditional", [
    ("linf", 0.1, False), ("l2", 0.5, False), ("linf", 0.2, True), ("l2", 1.0, True),
])
def test_perturbations_inside_ball_and_box(std_module, digits_t, norm, eps, conditional):
    X, y = digits_t[0][:200], digits_t[1][:200]
    attack = GeneratorSynth(epsilon=eps, norm=norm, conditional=conditional)
    attack.fit_generator(std_module, X, y, epochs=2, batch_size=64, random_state=0)
    for x_adv in (attack(std_module, X, y), attack.train_perturb(std_module, X, y)):
        assert x_adv.shape == X.shape
        assert float(perturbation_norm(x_adv, X, norm).max()) <= eps * (1 + 1e-5) + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert float(perturbation_norm(x_adv, X, norm).mean()) > 0.2 * eps  # not trivially zero


def test_tabular_default_generator_and_unbounded_inputs():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    X, y = 3 * torch.randn(64, 5), torch.randint(0, 3, (64,))
    attack = GeneratorSynth(epsilon=0.5, bounds=None, conditional=True).fit_generator(net, X, y, epochs=1)
    assert attack.generator_.__class__.__name__ == "_VectorGenerator"
    assert float((attack(net, X, y) - X).abs().max()) <= 0.5 + 1e-6


def test_generator_steps_raise_the_loss_of_a_fixed_classifier(std_module, digits_t):
    X, y = digits_t[0], digits_t[1]
    attack = GeneratorSynth(epsilon=0.2, random_start=False, generator_ce_weight=1.0, generator_lr=1e-2)
    before = {k: v.clone() for k, v in std_module.state_dict().items()}
    torch.manual_seed(0)

    def loss():
        with torch.no_grad():
            return float(F.cross_entropy(std_module(attack(std_module, X, y)), y))

    attack.fit_generator(std_module, X[:64], y[:64], epochs=1, batch_size=64, random_state=0)
    start = loss()
    attack.fit_generator(std_module, X, y, epochs=5, batch_size=100, random_state=1)
    assert loss() > start + 0.1
    for k, v in std_module.state_dict().items():  # the classifier is untouched
        assert torch.equal(v, before[k])


def test_ot_generator_objective_rises(std_module, digits_t):
    """The authors' generator objective (OT only) increases over its steps."""
    X, y = digits_t[0], digits_t[1]
    attack = GeneratorSynth(epsilon=0.2, generator_lr=1e-2)
    attack.fit_generator(std_module, X[:64], y[:64], epochs=1, batch_size=64, random_state=0)
    torch.manual_seed(0)
    first = [float(attack._generator_step(std_module, X[:200], y[:200])) for _ in range(3)]
    attack.fit_generator(std_module, X, y, epochs=5, batch_size=100, random_state=1)
    last = [float(attack._generator_step(std_module, X[:200], y[:200])) for _ in range(3)]
    assert sum(last) > 1.2 * sum(first)


def test_sinkhorn_zero_for_identical_positive_for_different():
    torch.manual_seed(0)
    a = 3 * torch.randn(128, 10)
    assert abs(float(sinkhorn_distance(a, a))) < 1e-5
    assert abs(float(sinkhorn_distance(a, a.clone(), blur=1.0))) < 1e-5
    d = float(sinkhorn_distance(a, a + 0.5 * torch.randn_like(a)))
    assert d > 0.05
    assert float(sinkhorn_distance(a, a + 2.0)) > d  # a shift costs |shift|^2 / 2 per point
    assert float(sinkhorn_distance(a, a + 2.0, blur=0.01)) == pytest.approx(20.0, rel=0.05)
    b = a.clone().requires_grad_(True)
    sinkhorn_distance(a + 1.0, b).backward()
    assert b.grad is not None and float(b.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="blur"):
        sinkhorn_distance(a, a, blur=0)
    with pytest.raises(ValueError, match="feature sizes"):
        sinkhorn_distance(a, a[:, :5])


def test_pickle_keeps_generator_and_clone_is_fresh(std_module, digits_t):
    X, y = digits_t[0][:128], digits_t[1][:128]
    attack = GeneratorSynth(epsilon=0.1).fit_generator(std_module, X, y, epochs=1, random_state=0)
    restored = pickle.loads(pickle.dumps(attack))
    for p, q in zip(attack.generator_.parameters(), restored.generator_.parameters()):
        assert torch.equal(p, q)
    assert restored.n_generator_steps_ == attack.n_generator_steps_
    assert len(restored.generator_optimizer_.state) > 0
    torch.manual_seed(3)
    a = attack(std_module, X, y)
    torch.manual_seed(3)
    assert torch.equal(a, restored(std_module, X, y))
    fresh = clone(attack)
    assert not hasattr(fresh, "generator_") and fresh.get_params() == attack.get_params()


def test_classifier_pickles_its_generator(digits_t):
    Xtr, ytr = digits_t[0][:300].numpy(), digits_t[1][:300].numpy()
    clf = AdversarialClassifier(
        attack=GeneratorSynth(epsilon=0.1, feature_layer="classifier.2"),
        max_epochs=2, lr=1e-2, random_state=0, train_split=None,
    ).fit(Xtr, ytr)
    gen = clf.attack_.generator_
    assert clf.attack_.n_generator_steps_ > 0 and not hasattr(clf.attack, "generator_")
    assert not clf.module_._forward_hooks and not any(m._forward_hooks for m in clf.module_.modules())
    restored = pickle.loads(pickle.dumps(clf))
    for p, q in zip(gen.parameters(), restored.attack_.generator_.parameters()):
        assert torch.equal(p, q)
    assert not hasattr(clone(clf).attack, "generator_")


def test_feature_layer_uses_the_hooked_representation(std_module, digits_t):
    X, y = digits_t[0][:64], digits_t[1][:64]
    attack = GeneratorSynth(epsilon=0.2, feature_layer="classifier.2")
    x_adv = attack.train_perturb(std_module, X, y)
    with torch.no_grad():
        logits = std_module(x_adv)  # the classifier's pass: the hook records the features
        term = attack.regularizer(std_module, X, x_adv, y, logits)
        feats = std_module.classifier[:3](std_module.features(torch.cat([X, x_adv])))
    assert torch.allclose(term, sinkhorn_distance(feats[:64], feats[64:], blur=0.1, scaling=0.3), atol=1e-5)
    assert not any(m._forward_hooks for m in std_module.modules())
    # during the epsilon warm-up the batch is the clean one: nothing to add
    assert GeneratorSynth(epsilon=0.2).regularizer(std_module, X, X, y, logits) is None


def test_label_smoothing_term_matches_torch(digits_t):
    torch.manual_seed(0)
    logits, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    attack = GeneratorSynth(ot_weight=0.0, label_smoothing=0.3)
    total = F.cross_entropy(logits, y) + attack.regularizer(None, None, None, y, logits)
    assert torch.allclose(total, F.cross_entropy(logits, y, label_smoothing=0.3), atol=1e-6)


def test_digits_model_trained_with_synth_beats_standard_under_pgd(digits_small, std_clf):
    Xtr, ytr, Xte, yte = digits_small
    clf = AdversarialClassifier(
        attack=GeneratorSynth(epsilon=0.1), max_epochs=10, lr=1e-2, random_state=0, train_split=None,
    ).fit(Xtr, ytr)
    pgd = PGD(epsilon=0.1, steps=20)
    robust = clf.robust_score(Xte, yte, attack=pgd, check=False)
    standard = std_clf.robust_score(Xte, yte, attack=pgd, check=False)
    assert clf.score(Xte, yte) > 0.85
    assert robust > standard + 0.1


@pytest.mark.parametrize("params,match", [
    ({"epsilon": -0.1}, "epsilon"),
    ({"norm": "l1"}, "norm"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"generator_lr": 0}, "generator_lr"),
    ({"ot_weight": -1}, "ot_weight"),
    ({"ot_blur": 0.0}, "ot_blur"),
    ({"ot_scaling": 1.0}, "ot_scaling"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"feature_layer": 3}, "feature_layer"),
    ({"conditional": "yes"}, "conditional"),
    ({"generator": "big"}, "generator"),
])
def test_bad_parameters_raise(std_module, digits_t, params, match):
    X, y = digits_t[0][:8], digits_t[1][:8]
    with pytest.raises(ValueError, match=match):
        GeneratorSynth(**params)(std_module, X, y)


def test_unknown_feature_layer_and_bad_generator(std_module, digits_t):
    X, y = digits_t[0][:16], digits_t[1][:16]
    with pytest.raises(ValueError, match="feature_layer='nope' is not a submodule"):
        GeneratorSynth(feature_layer="nope").fit_generator(std_module, X, y)
    bad = torch.nn.Sequential(torch.nn.Linear(64, 10))  # wrong output shape
    with pytest.raises(ValueError, match="shape"):
        GeneratorSynth(generator=bad).fit_generator(std_module, X, y)


def test_user_generator_is_copied_not_trained(std_module, digits_t):
    X, y = digits_t[0][:64], digits_t[1][:64]
    gen = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Unflatten(1, (1, 8, 8)))
    before = [p.clone() for p in gen.parameters()]
    attack = GeneratorSynth(epsilon=0.1, generator=gen).fit_generator(std_module, X, y, epochs=2)
    assert all(torch.equal(p, q) for p, q in zip(gen.parameters(), before))
    assert not all(torch.equal(p, q) for p, q in zip(attack.generator_.parameters(), before))


def test_train_perturb_reuses_the_generator_steps_batch(std_module, digits_t):
    """One generator forward pass per training batch: the classifier gets the
    batch the generator step was computed on (a fresh one on skipped steps)."""
    X, y = digits_t[0][:64], digits_t[1][:64]
    attack = GeneratorSynth(epsilon=0.2, generator_every=2)
    attack.fit_generator(std_module, X, y, epochs=1, batch_size=64, random_state=0)
    calls = []
    attack.generator_.register_forward_hook(lambda m, i, o: calls.append(o.detach().clone()))
    for _ in range(2):
        before = attack.n_generator_steps_
        x_adv = attack.train_perturb(std_module, X, y)
        assert len(calls) == 1
        raw = calls.pop()
        # x_adv was built from the only generator output of this call
        if attack.n_generator_steps_ > before:
            assert not x_adv.requires_grad
        inside = (x_adv > 1e-4) & (x_adv < 1 - 1e-4)
        assert float((x_adv - X)[inside].abs().max()) <= 0.2 + 1e-6 and raw.shape == X.shape
    assert attack.n_generator_steps_ == 2  # fit_generator's step + one of the two batches
