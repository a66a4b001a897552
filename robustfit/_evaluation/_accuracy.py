"""Robust accuracy and scikit-learn scorers built on it."""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.pipeline import Pipeline

from .._utils import random_source, seed_of
from .._validation import check_bounds, check_in_bounds, dataset_arrays, encode_labels
from ..attacks._base import Attack, _as_tensors, eval_mode
from ..attacks.autoattack import ATTACK_ALIASES, resolve_attack


def resolve_estimator(estimator, X):
    """Split a (pipeline of) estimator(s) into the torch module, its device,
    the transformed ``X`` and the fitted classifier (or None)."""
    if isinstance(estimator, Pipeline):
        if len(estimator.steps) > 1:
            X = estimator[:-1].transform(X)
        estimator = estimator[-1]
    if isinstance(estimator, torch.nn.Module):
        return estimator, X, None
    if hasattr(estimator, "_check_fitted"):
        estimator._check_fitted()
    module = getattr(estimator, "module_", None)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            "estimator must be a fitted robustfit/skorch classifier, a Pipeline "
            f"ending in one, or a torch.nn.Module; got {type(estimator).__name__}"
        )
    return module, X, estimator


def encode_for(classifier, y):
    """Labels as class indices of ``classifier`` (unchanged for a bare module)."""
    classes = getattr(classifier, "classes_", None)
    y = np.asarray(y.cpu() if torch.is_tensor(y) else y)
    if classes is None:
        return y.astype(np.int64)
    return encode_labels(classes, y)


def evaluation_seed(random_state, classifier):
    """The seed of an evaluation: ``random_state``, else the classifier's own (or None)."""
    if random_state is None and classifier is not None:
        random_state = getattr(classifier, "random_state", None)
    return seed_of(random_state)


def evaluation_copy(attack):
    """The attack an evaluation runs: a private copy of an :class:`Attack`, so
    that state it builds on first use (a generator) never lands on the caller's
    object; other callables as they are."""
    return copy.deepcopy(attack) if isinstance(attack, Attack) else attack


def robust_accuracy(estimator, X, y=None, attack=None, batch_size=256, *, epsilon=None, norm=None,
                    random_state=None):
    """Fraction of samples classified correctly both clean and under attack.

    Parameters
    ----------
    estimator : AdversarialClassifier, Pipeline or torch.nn.Module
        A fitted classifier, a fitted :class:`~sklearn.pipeline.Pipeline`
        whose last step is one (the attack then perturbs the input of that last
        step), or a module returning logits.
    X : array-like or torch.Tensor or Dataset
        Inputs in the attack's box. A dataset holding arrays (as skorch passes
        to callbacks) is accepted, with its labels already encoded.
    y : array-like, default=None
        Labels (the classifier's original labels; class indices for a bare
        module). May be None only when ``X`` is a dataset with labels.
    attack : robustfit.attacks.Attack, callable or str, default=None
        The attack, called as ``attack(module, X, y)``, or a name such as
        ``"autoattack"`` (see :func:`~robustfit.attacks.resolve_attack`).
        ``None`` takes the estimator's
        :meth:`~robustfit.AdversarialClassifier.default_evaluation_attack`.
    batch_size : int, default=256
        Samples attacked at once.
    epsilon : float, default=None
        Budget of a named attack, or a new ``epsilon`` for a given Attack
        (a clone is used). A name without ``epsilon`` takes the threat model
        of the estimator's training attack.
    norm : {"linf", "l2"}, default=None
        Norm of a named attack, or a new ``norm`` for a given Attack.
    random_state : int, numpy RandomState or None, default=None
        Seeds the attack's random draws (random starts, Square's proposals),
        through a random source private to this call: the same evaluation
        gives the same figure in any process and any thread. ``None`` uses
        the estimator's ``random_state`` (an
        :class:`~robustfit.AdversarialClassifier`'s), and for a bare module or
        an unseeded estimator the enclosing source or torch's global
        generator. The attack passed in is never changed (a copy runs).

    Returns
    -------
    accuracy : float
        Robust accuracy in [0, 1]. A sample counts as robust only if it is
        classified correctly without the attack as well.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import PGD
    >>> from robustfit.metrics import robust_accuracy
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> X, y = torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,))
    >>> 0.0 <= robust_accuracy(net, X, y, attack=PGD(epsilon=0.1, steps=3)) <= 1.0
    True
    >>> 0.0 <= robust_accuracy(net, X, y, attack="autoattack", epsilon=0.1) <= 1.0
    True
    """
    module, X, clf = resolve_estimator(estimator, X)
    if y is None:
        arrays = dataset_arrays(X)
        if arrays is None or arrays[1] is None:
            raise ValueError("y is None: pass labels, or a dataset that holds them")
        X, y_idx = arrays
    else:
        y_idx = encode_for(clf, y) if clf is not None else y
    attack = resolve_attack(attack, epsilon=epsilon, norm=norm, estimator=clf)
    if attack is None:
        if clf is None or not hasattr(clf, "default_evaluation_attack"):
            raise ValueError("attack is None and the estimator has no default attack; pass attack=...")
        attack = clf.default_evaluation_attack()
    x, y_t = _as_tensors(module, X, y_idx)
    if isinstance(attack, Attack):
        attack.validate_params()
        check_in_bounds(x, check_bounds(attack.bounds))
        run = evaluation_copy(attack).perturb
    elif callable(attack):
        run = attack
    else:
        raise TypeError(f"attack must be an Attack or a callable, got {attack!r}")
    robust = torch.zeros((), dtype=torch.long, device=x.device)
    with eval_mode(module), random_source(evaluation_seed(random_state, clf)):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y_t[start:start + batch_size]
            with torch.no_grad():
                clean_ok = module(xb).argmax(1) == yb
            x_adv = run(module, xb, yb)
            with torch.no_grad():
                adv_ok = module(x_adv).argmax(1) == yb
            robust += (clean_ok & adv_ok).sum()
    return robust.item() / max(len(x), 1)


class RobustScorer:
    """A scikit-learn scorer returning :func:`robust_accuracy`.

    Made by :func:`make_robust_scorer`; called as ``scorer(estimator, X, y)``.

    Parameters
    ----------
    attack : robustfit.attacks.Attack, str or None
        The attack or attack name, or ``None`` for each estimator's default
        evaluation attack.
    batch_size : int
        Samples attacked at once.
    epsilon, norm : float and str, or None
        Threat model of a named attack (see :func:`robust_accuracy`).
    random_state : int, RandomState or None, default=None
        Seed of the attack's draws; ``None``: each estimator's own.
    """

    def __init__(self, attack=None, batch_size=256, epsilon=None, norm=None, random_state=None):
        self.attack = attack
        self.batch_size = batch_size
        self.epsilon = epsilon
        self.norm = norm
        self.random_state = random_state

    def __call__(self, estimator, X, y, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("RobustScorer does not support sample_weight")
        return robust_accuracy(
            estimator, X, y, attack=self.attack, batch_size=self.batch_size,
            epsilon=self.epsilon, norm=self.norm, random_state=self.random_state,
        )

    def __repr__(self):
        extra = "".join(
            f", {k}={v!r}" for k, v in (("epsilon", self.epsilon), ("norm", self.norm)) if v is not None
        )
        return f"make_robust_scorer(attack={self.attack!r}{extra})"


def make_robust_scorer(attack=None, batch_size=256, *, epsilon=None, norm=None, random_state=None):
    """Make a scorer for :class:`~sklearn.model_selection.GridSearchCV`,
    :func:`~sklearn.model_selection.cross_validate` and friends.

    Parameters
    ----------
    attack : robustfit.attacks.Attack or str, default=None
        The attack every candidate is scored under, or its name (e.g.
        ``"autoattack"``). Fix it (rather than ``None``, which uses each
        candidate's own default) when comparing candidates trained with
        different attacks, so that all face the same threat model.
    batch_size : int, default=256
        Samples attacked at once.
    epsilon : float, default=None
        Budget of a named attack, or a new ``epsilon`` for a given Attack.
        Set it for a name when the candidates' training budgets differ.
    norm : {"linf", "l2"}, default=None
        Norm of a named attack, or a new ``norm`` for a given Attack.
    random_state : int, numpy RandomState or None, default=None
        Seed of the attack's random draws; ``None`` uses each candidate's own
        ``random_state`` (see :func:`robust_accuracy`).

    Returns
    -------
    scorer : RobustScorer
        A callable ``scorer(estimator, X, y) -> float``; higher is better.

    Examples
    --------
    >>> from robustfit.attacks import PGD
    >>> from robustfit.metrics import make_robust_scorer
    >>> scorer = make_robust_scorer(PGD(epsilon=0.3, steps=20))
    >>> scorer = make_robust_scorer("autoattack", epsilon=0.3)
    """
    # Fail early on an unknown name or a misplaced epsilon/norm. A name without
    # epsilon is resolved per candidate, in its training threat model.
    if isinstance(attack, str) and epsilon is None:
        if attack.lower() not in ATTACK_ALIASES:
            raise ValueError(f"unknown attack name {attack!r}; choose among {ATTACK_ALIASES}")
    else:
        resolve_attack(attack, epsilon=epsilon, norm=norm)
    return RobustScorer(attack=attack, batch_size=batch_size, epsilon=epsilon, norm=norm,
                        random_state=random_state)
