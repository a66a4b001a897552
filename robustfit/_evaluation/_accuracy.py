"""Robust accuracy and scikit-learn scorers built on it."""

from __future__ import annotations

import copy
from numbers import Integral

import numpy as np
import torch
from sklearn.pipeline import Pipeline

from .._distributed import all_reduce_sum, broadcast_object, rank, world_size
from .._utils import randint, random_source, seed_of
from .._validation import (
    CheckedAttack,
    Interval,
    check_attack,
    check_bounds,
    check_in_bounds,
    check_labels,
    check_param,
    dataset_arrays,
    encode_labels,
)
from ..attacks._base import Attack, _as_tensors, eval_mode
from ..attacks.autoattack import ATTACK_ALIASES, resolve_attack


def resolve_estimator(estimator, X):
    """Split a (pipeline of) estimator(s) into the torch module, the input of
    its last step and the fitted classifier (or None for a bare module).

    The steps before the last transform ``X``, as at prediction time: samplers
    (steps with ``fit_resample``, such as a proxy distribution in an
    imbalanced-learn pipeline) act during ``fit`` only and are skipped.
    """
    if isinstance(estimator, Pipeline):
        for _, step in estimator.steps[:-1]:
            if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
                continue
            X = step.transform(X)
        estimator = estimator.steps[-1][1]
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
    y = check_labels(y)
    if classes is None:
        return y.astype(np.int64)
    return encode_labels(classes, y)


def robust_mask(module, x, y, run, batch_size):
    """Per point: classified correctly both clean and on ``run``'s output.

    The points are cut into batches of ``batch_size``, and batch ``b`` is
    attacked with robustfit's random draws seeded by ``base + b``, where
    ``base`` is drawn once from the current random source. The result
    therefore does not depend on which process attacks which batch: under
    ``torchrun`` (an initialized process group) the batches are dealt to
    the ranks in turn (batch ``b`` to rank ``b % world_size``) and the
    per-point results are summed over the ranks (one all-reduce), so every
    rank gets the mask one process computes on the same points. Every rank
    must call it, with the same points.

    Parameters
    ----------
    module : torch.nn.Module
        The network, in eval mode.
    x, y : torch.Tensor
        Inputs and class indices on the module's device.
    run : callable
        ``run(module, x, y) -> x_adv``.
    batch_size : int
        Points attacked at once.

    Returns
    -------
    mask : torch.Tensor of bool, shape (n,)
    """
    n = len(x)
    base = broadcast_object(int(randint(0, 2**31, (), device="cpu")))  # rank 0's draw
    world, me = world_size(), rank()
    ok_all = torch.zeros(n, dtype=torch.int32, device=x.device)
    for b, start in enumerate(range(0, n, batch_size)):
        if b % world != me:
            continue
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with random_source(base + b):
            with torch.no_grad():
                ok = module(xb).argmax(1) == yb
            x_adv = run(module, xb, yb)
            with torch.no_grad():
                ok &= module(x_adv).argmax(1) == yb
        ok_all[start:start + len(xb)] = ok.to(torch.int32)
    if world > 1:
        ok_all = all_reduce_sum(ok_all)
    return ok_all > 0


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

    Notes
    -----
    Each batch of ``batch_size`` points is attacked with random draws seeded
    from one draw of the current random source plus the batch's index, so
    the figure does not depend on how batches are spread over processes.
    Under ``torchrun`` (a :mod:`torch.distributed` process group is
    initialized) the batches are dealt to the ranks and the per-point results
    gathered: the figure equals the one-process figure on the same points,
    and every rank must call the function with the same points.

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
    check_param(batch_size, "batch_size", [Interval(Integral, 1, None)], "robust_accuracy")
    module, X, clf = resolve_estimator(estimator, X)
    if y is None:
        arrays = dataset_arrays(X)
        if arrays is None or arrays[1] is None:
            raise ValueError("y is None: pass labels, or a dataset that holds them")
        X, y_idx = arrays
    elif isinstance(X, torch.utils.data.Dataset):
        raise ValueError(
            f"X is a Dataset ({type(X).__name__}) and y is given: pass y=None to use the labels "
            "it holds, or X and y as arrays")
    else:
        y_idx = encode_for(clf, y) if clf is not None else check_labels(y)
        if clf is None and y_idx.dtype.kind not in "iuf":
            raise ValueError(
                f"y must hold class indices (integers) for a bare torch module, got dtype "
                f"{y_idx.dtype}; pass a fitted classifier to use other labels"
            )
    attack = resolve_attack(attack, epsilon=epsilon, norm=norm, estimator=clf)
    if attack is None:
        if clf is None or not hasattr(clf, "default_evaluation_attack"):
            raise ValueError("attack is None and the estimator has no default attack; pass attack=...")
        attack = clf.default_evaluation_attack()
    check_attack(attack, "attack", "robust_accuracy")
    x, y_t = _as_tensors(module, X, y_idx)
    if len(x) == 0:
        raise ValueError("robust_accuracy: X has 0 samples")
    if isinstance(attack, Attack):
        check_in_bounds(x, check_bounds(attack.bounds))
        run = evaluation_copy(attack).perturb
    else:
        check_in_bounds(x, None)  # NaN and inf
        run = CheckedAttack(attack, "attack")  # checks its first output
    with eval_mode(module), random_source(evaluation_seed(random_state, clf)):
        _check_label_range(module, x, y_t)
        mask = robust_mask(module, x, y_t, run, batch_size)
    return int(mask.sum()) / max(len(x), 1)


def _check_label_range(module, x, y):
    """Class indices must index the module's logits."""
    with torch.no_grad():
        n_logits = module(x[:1]).shape[-1]
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= n_logits:
        raise ValueError(
            f"y has class indices in [{low}, {high}], but the module returns {n_logits} logits per sample"
        )


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
    check_param(batch_size, "batch_size", [Interval(Integral, 1, None)], "make_robust_scorer")
    # Fail early on an unknown name or a misplaced epsilon/norm. A name without
    # epsilon is resolved per candidate, in its training threat model.
    if isinstance(attack, str) and epsilon is None:
        if attack.lower() not in ATTACK_ALIASES:
            raise ValueError(f"unknown attack name {attack!r}; choose among {ATTACK_ALIASES}")
    else:
        resolve_attack(attack, epsilon=epsilon, norm=norm)
    return RobustScorer(attack=attack, batch_size=batch_size, epsilon=epsilon, norm=norm,
                        random_state=random_state)
