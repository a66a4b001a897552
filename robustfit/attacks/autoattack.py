"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020): attacks run in
sequence, each on the points all earlier ones left robust; the per-point worst
case over all of them.

``version="standard"`` is the standard suite of the paper and of its reference
implementation; ``version="fast"`` (the default of ``robust_score``) is a
cheaper white-box subset, and is named so wherever it is printed.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import clone

from .._validation import InstanceOf, Interval, Options, check_bounds, check_in_bounds
from ._base import Attack, _as_tensors, eval_mode
from ._steps import attack_score
from .apgd import APGD
from .fab import FAB
from .pgd import FGSM, PGD
from .square import Square

#: Attack names the ensemble understands, in AutoAttack's spelling.
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")

#: The presets of ``version``: members, target classes and, for the standard
#: suite, the budgets it fixes.
VERSIONS = {
    "fast": {"attacks": ("apgd-ce", "apgd-t"), "n_target_classes": 3},
    "standard": {
        "attacks": ("apgd-ce", "apgd-t", "fab-t", "square"),
        "n_target_classes": 9, "steps": 100, "restarts": 1, "n_queries": 5000,
    },
    "custom": {"n_target_classes": 9},
}

_SHORT = {"apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T", "fab-t": "FAB-T",
          "square": "Square"}


class AutoAttack(Attack):
    """AutoAttack's ensemble: the per-point worst case of several attacks.

    After Croce & Hein, ICML 2020. The attacks run in order, each only on the
    points that all earlier ones left correctly classified, so the ensemble
    costs little more than its first attack on a non-robust model.

    * ``version="standard"``: the standard suite of the paper, for l_inf and
      l_2 -- APGD-CE (100 iterations, no restarts), APGD-T (100 iterations
      towards each of the 9 most likely wrong classes), FAB-T (100 iterations,
      9 targets) and the black-box Square attack (5,000 queries). This is the
      setting whose figures may be called "AutoAttack".
    * ``version="fast"`` (the default, and the default of
      :meth:`~robustfit.AdversarialClassifier.robust_score`): APGD-CE, then
      APGD-T towards the 3 most likely wrong classes only; no FAB-T, no
      Square. Its :attr:`label` reads "fast ensemble (APGD-CE + APGD-T x3)";
      report its figures under that name, not as AutoAttack.
    * ``version="custom"``: the members in ``attacks``, with the budgets given.

    Called as ``attack(module, X, y)`` it returns adversarial inputs, as every
    attack, and works inside :func:`~robustfit.metrics.robust_accuracy`;
    :meth:`run` also tells which attack broke each point.

    Parameters
    ----------
    epsilon : float, default=0.3
        Radius of the threat model's ball.
    norm : {"linf", "l2"}, default="linf"
        Norm of the threat model.
    version : {"fast", "standard", "custom"}, default="fast"
        The preset. ``"fast"`` and ``"standard"`` fix the members and the
        number of target classes, and ``"standard"`` also ``steps``,
        ``restarts`` and ``n_queries``; changing any of them needs
        ``version="custom"``, so that a figure never carries a preset's name
        for another setting.
    attacks : sequence of str or None, default=None
        The members, in order, among ``"apgd-ce"``, ``"apgd-dlr"`` (APGD on
        the untargeted DLR loss), ``"apgd-t"``, ``"fab-t"`` and ``"square"``.
        ``None`` takes the version's; required for ``version="custom"``.
    steps : int, default=100
        Iterations of each APGD and FAB run.
    restarts : int, default=1
        Random restarts of each APGD and FAB run (per target class for the
        targeted ones). Square runs once, as in the reference.
    n_target_classes : int or None, default=None
        Target classes of APGD-T and FAB-T, capped at ``n_classes - 1``.
        ``None`` takes the version's: 9 for ``"standard"`` and ``"custom"``
        (as :class:`APGD` and :class:`FAB` alone), 3 for ``"fast"``: on the
        PGD-trained MNIST model of ``benchmarks/bench_eval.py`` (2,000 images,
        epsilon 0.3), 9 targets instead of 3 lowered the ensemble's robust
        accuracy by 0.1 point at 3x the cost.
    n_queries : int, default=5000
        Queries of the Square attack.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box adversarial inputs are clipped to; ``None`` for
        unbounded features.

    Attributes
    ----------
    label : str
        What the ensemble runs, for tables and plots (a property).

    See Also
    --------
    APGD, FAB, Square : The member attacks.
    robustfit.metrics.check_gradient_masking : Sanity checks of an evaluation.

    Notes
    -----
    Square reads images ``(n, C, H, W)``; for other inputs use
    ``version="custom"`` without it. As in the reference implementation, the
    ensemble's Square runs the window-size schedule of 10,000 queries
    unrescaled (``Square(rescale_schedule=False)``).

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import AutoAttack
    >>> AutoAttack(epsilon=0.1).label
    'fast ensemble (APGD-CE + APGD-T x3)'
    >>> AutoAttack(epsilon=0.1, version="standard").label
    'AutoAttack standard (APGD-CE + APGD-T x9 + FAB-T x9 + Square 5000q)'
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    >>> X, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    >>> attack = AutoAttack(epsilon=0.1, version="custom", steps=10,
    ...                     attacks=("apgd-ce", "apgd-t", "fab-t", "square"), n_queries=20)
    >>> attack.label
    'custom ensemble (APGD-CE + APGD-T x9 + FAB-T x9 + Square 20q, 10 steps)'
    >>> X_adv, broken_by = attack.run(net, X, y)
    >>> sorted(set(broken_by) - {"", "clean", "apgd-ce", "apgd-t", "fab-t", "square"})
    []
    """

    def __init__(
        self,
        epsilon=0.3,
        norm="linf",
        version="fast",
        attacks=None,
        steps=100,
        restarts=1,
        n_target_classes=None,
        n_queries=5000,
        bounds=(0.0, 1.0),
    ):
        self.epsilon = epsilon
        self.norm = norm
        self.version = version
        self.attacks = attacks
        self.steps = steps
        self.restarts = restarts
        self.n_target_classes = n_target_classes
        self.n_queries = n_queries
        self.bounds = bounds

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "version": [Options(tuple(VERSIONS))],
        "attacks": [None, InstanceOf((tuple, list), "a non-empty sequence of attack names")],
        "steps": [Interval(Integral, 1, None)],
        "restarts": [Interval(Integral, 1, None)],
        "n_target_classes": [None, Interval(Integral, 1, None)],
        "n_queries": [Interval(Integral, 1, None)],
    }

    def _validate_params_extra(self):
        preset = VERSIONS[self.version]
        if self.attacks is None:
            if self.version == "custom":
                raise self._param_error(
                    "attacks", f"is required with version='custom' (names among {ATTACK_NAMES})")
        else:
            if not len(self.attacks):
                raise self._param_error(
                    "attacks", f"must be a non-empty sequence of names among {ATTACK_NAMES}")
            unknown = [a for a in self.attacks if a not in ATTACK_NAMES]
            if unknown:
                raise self._param_error(
                    "attacks", f"has unknown name(s) {unknown}; choose among {ATTACK_NAMES}")
        if self.version == "custom":
            return
        fixed = {"attacks": self.attacks, "n_target_classes": self.n_target_classes,
                 "steps": self.steps, "restarts": self.restarts, "n_queries": self.n_queries}
        for name, value in fixed.items():
            if name not in preset or value is None:
                continue
            wanted = preset[name]
            if (tuple(value) if name == "attacks" else value) != wanted:
                raise self._param_error(
                    name, f"is fixed to {wanted!r} by version={self.version!r}; pass "
                    "version='custom' to change it (the figures then carry no preset's name)")

    @property
    def attack_names(self):
        """The members that run, in order (``attacks``, or the version's).

        Returns
        -------
        names : tuple of str

        Examples
        --------
        >>> from robustfit.attacks import AutoAttack
        >>> AutoAttack(version="standard").attack_names
        ('apgd-ce', 'apgd-t', 'fab-t', 'square')
        """
        if self.attacks is not None:
            return tuple(self.attacks)
        return VERSIONS.get(self.version, VERSIONS["fast"]).get("attacks", ())

    @property
    def target_classes(self):
        """Target classes of APGD-T and FAB-T (``n_target_classes``, or the
        version's).

        Returns
        -------
        n : int

        Examples
        --------
        >>> from robustfit.attacks import AutoAttack
        >>> AutoAttack().target_classes, AutoAttack(version="standard").target_classes
        (3, 9)
        """
        if self.n_target_classes is not None:
            return self.n_target_classes
        return VERSIONS.get(self.version, VERSIONS["custom"])["n_target_classes"]

    @property
    def label(self):
        """What the ensemble runs, named honestly, for tables and plots.

        Only ``version="standard"`` is called AutoAttack; the default is the
        "fast ensemble"; budgets that differ from the paper's are spelled out.

        Returns
        -------
        label : str

        Examples
        --------
        >>> from robustfit.attacks import AutoAttack
        >>> AutoAttack(steps=20).label
        'fast ensemble (APGD-CE + APGD-T x3, 20 steps)'
        """
        k = self.target_classes
        parts = []
        for name in self.attack_names:
            if name in ("apgd-t", "fab-t"):
                parts.append(f"{_SHORT[name]} x{k}")
            elif name == "square":
                parts.append(f"Square {self.n_queries}q")
            else:
                parts.append(_SHORT.get(name, name))
        extra = []
        if self.steps != 100:
            extra.append(f"{self.steps} steps")
        if self.restarts != 1:
            extra.append(f"{self.restarts} restarts")
        inside = " + ".join(parts) + "".join(f", {e}" for e in extra)
        title = {"standard": "AutoAttack standard", "fast": "fast ensemble"}.get(
            self.version, "custom ensemble")
        return f"{title} ({inside})"

    def member(self, name):
        """The attack the ensemble runs under ``name``.

        Parameters
        ----------
        name : {"apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"}

        Returns
        -------
        attack : APGD, FAB or Square
            Configured with the ensemble's threat model and budgets.

        Examples
        --------
        >>> from robustfit.attacks import AutoAttack
        >>> AutoAttack(epsilon=0.1).member("apgd-t").loss
        'dlr-targeted'
        >>> AutoAttack(epsilon=0.1, version="standard").member("fab-t").n_target_classes
        9
        """
        common = {"epsilon": self.epsilon, "norm": self.norm, "bounds": self.bounds}
        if name == "square":
            return Square(n_queries=self.n_queries, rescale_schedule=False, **common)
        if name == "fab-t":
            return FAB(steps=self.steps, n_target_classes=self.target_classes,
                       restarts=self.restarts, **common)
        loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}.get(name)
        if loss is None:
            raise ValueError(f"unknown attack name {name!r}; choose among {ATTACK_NAMES}")
        return APGD(
            steps=self.steps, loss=loss, restarts=self.restarts,
            n_target_classes=self.target_classes, **common,
        )

    def _run(self, module, x, y):
        """Ensemble on trusted tensors; returns ``(x_adv, code)`` with code -1
        for robust points, 0 for clean errors and ``k`` for the k-th attack."""
        x_adv = x.clone()
        best_score = attack_score(module, x, y)
        code = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        code[torch.isinf(best_score)] = 0
        if self.epsilon == 0:
            return x_adv, code
        if "square" in self.attack_names and x.dim() != 4:
            raise ValueError(
                f"AutoAttack: its Square member needs image inputs (n, C, H, W), got "
                f"inputs of shape {tuple(x.shape)}; for other inputs use version='custom' "
                "with attacks=('apgd-ce', 'apgd-t', 'fab-t')"
            )
        for k, name in enumerate(self.attack_names, start=1):
            todo = (code == -1).nonzero().flatten()
            if todo.numel() == 0:
                break
            candidate = self.member(name).perturb(module, x[todo], y[todo])
            score = attack_score(module, candidate, y[todo])
            better = score > best_score[todo]
            x_adv[todo[better]] = candidate[better]
            best_score[todo[better]] = score[better]
            code[todo[torch.isinf(score)]] = k
        return x_adv, code

    def _perturb(self, module, x, y):
        return self._run(module, x, y)[0]

    def run(self, module, X, y):
        """Run the ensemble and report which attack broke each point.

        Parameters
        ----------
        module : torch.nn.Module
            A network returning logits.
        X : torch.Tensor or numpy.ndarray
            Clean inputs inside ``bounds``.
        y : torch.Tensor or numpy.ndarray
            Integer class indices.

        Returns
        -------
        X_adv : torch.Tensor
            Per point, the worst case over the attacks: a misclassified input
            when any attack found one, else the input of highest
            cross-entropy. Inside the ball and the box.
        broken_by : numpy.ndarray of str, shape (n,)
            ``"clean"`` for points misclassified without attack, the name of
            the first attack that misclassified the point (e.g.
            ``"apgd-ce"``), or ``""`` for points that resisted every attack.
            The robust accuracy is ``np.mean(broken_by == "")``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from robustfit.attacks import AutoAttack
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
        >>> X_adv, broken_by = AutoAttack(epsilon=0.5, steps=10).run(net, X, y)
        >>> 0.0 <= float(np.mean(broken_by == "")) <= 1.0
        True
        """
        self.validate_params()
        x, y = _as_tensors(module, X, y)
        check_in_bounds(x, check_bounds(self.bounds))
        with eval_mode(module), torch.enable_grad():
            x_adv, code = self._run(module, x, y)
        names = np.array(["", "clean", *self.attack_names], dtype=object)
        return x_adv.detach(), names[code.cpu().numpy() + 1].astype(str)


_BY_NAME = {
    "autoattack": lambda **kw: AutoAttack(version="standard", **kw),
    "autoattack-fast": lambda **kw: AutoAttack(version="fast", **kw),
    "apgd-ce": lambda **kw: APGD(loss="ce", **kw),
    "apgd-dlr": lambda **kw: APGD(loss="dlr", **kw),
    "apgd-t": lambda **kw: APGD(loss="dlr-targeted", **kw),
    "fab-t": lambda **kw: FAB(**kw),
    "square": lambda **kw: Square(**kw),
    "pgd": lambda **kw: PGD(steps=20, **kw),
    "fgsm": lambda **kw: FGSM(**kw),
}

#: Names :func:`resolve_attack` accepts.
ATTACK_ALIASES = tuple(_BY_NAME)


def resolve_attack(attack, *, epsilon=None, norm=None, estimator=None):
    """Turn an ``attack`` argument, possibly a name, into an attack object.

    Lets evaluation functions accept ``attack="autoattack", epsilon=0.3``.
    The threat model of a name is ``epsilon``/``norm`` when given, else the one
    of ``estimator``'s training attack; its ``bounds`` are the training
    attack's, else ``(0, 1)``.

    Parameters
    ----------
    attack : str, robustfit.attacks.Attack, callable or None
        A name among ``"autoattack"`` (the standard suite,
        ``AutoAttack(version="standard")``), ``"autoattack-fast"`` (the fast
        ensemble APGD-CE + APGD-T x3, ``robust_score``'s default),
        ``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"`` (9 targets), ``"fab-t"``
        (9 targets), ``"square"`` (5,000 queries), ``"pgd"`` (20 steps) and
        ``"fgsm"``; an attack, returned as is or, with ``epsilon``/``norm``
        given, as a clone with them set; any other callable, returned as is;
        or ``None``, returned as is (the caller's default applies).
    epsilon : float, default=None
        Radius of the threat model.
    norm : {"linf", "l2"}, default=None
        Norm of the threat model.
    estimator : object, default=None
        A classifier whose ``attack`` (if any) supplies the threat model of a
        name when ``epsilon``/``norm`` are not given.

    Returns
    -------
    attack : robustfit.attacks.Attack, callable or None
        The attack to run, or ``None`` for the caller's default.

    Raises
    ------
    ValueError
        For an unknown name, or a name without an epsilon to use.
    TypeError
        For ``epsilon``/``norm`` with a callable that is not an Attack.

    Examples
    --------
    >>> from robustfit.attacks import resolve_attack
    >>> resolve_attack("autoattack", epsilon=0.1, norm="l2")
    AutoAttack(epsilon=0.1, norm='l2', version='standard')
    >>> resolve_attack("autoattack-fast", epsilon=0.1).label
    'fast ensemble (APGD-CE + APGD-T x3)'
    """
    overrides = {k: v for k, v in (("epsilon", epsilon), ("norm", norm)) if v is not None}
    if attack is None:
        if overrides:
            raise ValueError(
                f"{', '.join(overrides)} given without an attack; pass attack=... "
                "(e.g. attack='autoattack')"
            )
        return None
    if isinstance(attack, str):
        key = attack.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown attack name {attack!r}; choose among {ATTACK_ALIASES}")
        trained = getattr(estimator, "attack", None)
        params = {
            "epsilon": getattr(trained, "epsilon", None),
            "norm": getattr(trained, "norm", "linf"),
            "bounds": getattr(trained, "bounds", (0.0, 1.0)),
        }
        params.update(overrides)
        if params["epsilon"] is None:
            raise ValueError(
                f"attack={attack!r} needs a threat model: pass epsilon=... (the "
                "estimator has no training attack to take it from)"
            )
        return _BY_NAME[key](**params)
    if overrides:
        if not isinstance(attack, Attack):
            raise TypeError(
                f"epsilon/norm can only be set on a robustfit Attack, got {attack!r}"
            )
        return clone(attack).set_params(**overrides)
    return attack
