"""AdversarialClassifier: skorch's NeuralNetClassifier trained on adversarial
examples.

The training loop is skorch's. This module is glue: it overrides skorch's
narrow hooks and hands every other concern to the layer that owns it.

* :meth:`AdversarialClassifier.train_step_single` - one training step: the
  attack replaces the clean batch, the objective turns logits into the loss,
  the attack may add a regularizer;
* ``initialize_module``, ``get_iterator``, ``infer`` - the network built from
  the data, device-resident batches, mixed precision;
* ``fit``/``partial_fit``/``predict_proba``/``robust_score`` - validation
  (:mod:`robustfit._validation`), seeding, scoring (:mod:`robustfit._evaluation`);
* schedules are callbacks (:mod:`robustfit.callbacks`), the proxy pool lives
  in :mod:`robustfit._proxy_pool`, batches in :mod:`robustfit._loader`;
* saving, loading and resuming (:mod:`robustfit._classifier_saving`) and the
  data-parallel hooks (:mod:`robustfit._classifier_ddp`) are mixins the
  classifier inherits.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from skorch import NeuralNetClassifier
from skorch.callbacks import EpochScoring
from skorch.dataset import ValidSplit, get_len, unpack_data
from skorch.utils import is_dataset, to_numpy, to_tensor
from torch.utils.data import DataLoader

from ._classifier_ddp import DataParallelMixin
from ._classifier_saving import SavingMixin, _pool_digest, training_state_path
from ._distributed import (
    all_reduce_sum,
    batch_shard,
    is_main,
    rank,
    run_on_main,
    world_size,
)
from ._evaluation import check_gradient_masking, robust_accuracy
from ._loader import MixedLoader, TensorLoader
from ._proxy_pool import PROXY_MIXINGS, build_proxy_pool, proxy_kind
from ._utils import (
    GLOBAL_RNG_LOCK,
    amp_dtype,
    autocast,
    fitted_copy,
    random_source,
    split_nested_params,
    torch_seeded,
)
from ._validation import (
    CheckedAttack,
    Interval,
    Options,
    ParamsValidationMixin,
    check_array,
    check_attack,
    check_bounds,
    check_device,
    check_in_bounds,
    check_labels,
    check_proxy_pair,
    dataset_arrays,
    encode_labels,
    resolve_device,
    truthy,
    valid_split_or_fallback,
)
from .attacks import AutoAttack, resolve_attack
from .attacks._base import Attack, eval_mode
from .attacks._fold import folded, release_folded
from .attacks._graph import clear_graphs, cuda_graphs
from .callbacks import (
    SCHEDULES,
    EpsilonWarmup,
    LRSchedule,
    Progress,
    RobustValidation,
    _callback_states,
    _load_callback_states,
)
from .losses import AdversarialCE, Objective
from .models import default_module, fill_module_arguments
from .recipes import AWP, EMA, CollapseGuard

_NESTED = ("attack", "valid_attack", "objective", "proxy_data", "ema", "awp", "guard")
#: parameters that install a callback, and its name in ``callbacks_``
_CALLBACK_OF = {"lr_schedule": "lr_schedule", "attack_warmup": "attack_warmup",
                "valid_attack": "valid_robust_acc", "guard": "guard", "ema": "ema",
                "verbose": "progress"}
_ATTACK = [None, Attack, "callable"]

__all__ = ["AdversarialClassifier", "training_state_path"]


def _same_setting(old, new):
    """Whether a parameter set again is unchanged: the same object, or one of the
    same class with equal parameters, or an equal plain value."""
    if old is new:
        return True
    if hasattr(old, "get_params") and type(old) is type(new):
        try:
            return bool(old.get_params(deep=False) == new.get_params(deep=False))
        except Exception:  # parameters that do not compare (arrays)
            return False
    try:
        return bool(old == new) and type(old) is type(new)
    except Exception:
        return False


class AdversarialClassifier(ParamsValidationMixin, SavingMixin, DataParallelMixin, NeuralNetClassifier):
    """A scikit-learn classifier that trains a PyTorch network adversarially.

    A subclass of skorch's :class:`~skorch.classifier.NeuralNetClassifier`.
    Every training batch is replaced by adversarial examples from ``attack``
    before the forward pass (Madry et al. 2018); ``attack=None`` gives
    standard training. Everything skorch offers (callbacks, ``module__`` and
    ``optimizer__`` parameters, ``history``, ``save_params``) works as usual.

    **Module mode during attacks.** Attacks run with the module in eval mode:
    BatchNorm layers use, and do not update, their running statistics, and
    dropout is off. Gradients are taken with respect to the input only, so an
    attack never changes parameters, their ``.grad`` or BatchNorm buffers.
    The parameter update that follows runs in train mode as usual.

    **Data-parallel training.** Under ``torchrun`` (a :mod:`torch.distributed`
    process group initialized by the script, or by ``fit`` from torchrun's
    variables), the same ``fit`` trains data-parallel: every rank passes the
    same data, each global batch of ``batch_size`` is split across the ranks,
    the module is wrapped in ``DistributedDataParallel`` for the training
    step (the attack runs on the plain module, on each rank's share), and
    every rank ends with the same estimator, whose ``module_`` is the plain
    module. With the same seed, N ranks train the model one process trains.
    See :doc:`/scaling`.

    **Batch losses** stay on the device during an epoch; they are read every
    ``loss_check_every`` batches and at the epoch's end (no host-device
    synchronization per batch). A NaN or infinite training loss stops
    ``fit`` with a ``ValueError`` naming the epoch and the batch.

    Parameters
    ----------
    module : torch.nn.Module class, callable, instance or None, default=None
        The network; it must return logits. A class or factory receives
        ``module__*`` parameters, and ``n_classes`` / ``in_channels`` are filled
        in from the data when its signature has them and they are not given.
        ``None`` builds :func:`robustfit.models.default_module` from the data:
        a small CNN for square images, an MLP otherwise.
    attack : robustfit.attacks.Attack or None, default=None
        The training attack, e.g. ``PGD(epsilon=0.3, steps=7)``. Its parameters
        are reachable as ``attack__epsilon`` etc. for grid searches. A fitted
        copy is kept as ``attack_``.
    objective : robustfit.losses.Objective or None, default=None
        How the batch's logits become the loss: ``None`` is
        :class:`~robustfit.losses.AdversarialCE` (the criterion on the
        adversarial batch); :class:`~robustfit.losses.TRADES` and
        :class:`~robustfit.losses.PrimalDual` (DALE, with
        ``attack=Langevin(...)``) also use the clean batch. Grid-searchable as
        ``objective__beta`` etc.; the fitted copy, with its state, is
        ``objective_``.
    proxy_data : ProxyDistribution, (X, y) pair, Dataset or None, default=None
        Extra training data from a proxy distribution (Sehwag et al. 2022).
        A :mod:`robustfit.proxy` estimator (anything with ``fit(X, y)`` and
        ``sample(n, random_state)``) is cloned and fitted inside ``fit`` on the
        training part of the data only (after ``train_split``), so neither the
        validation split nor a cross-validation fold ever reaches it; then
        ``proxy_samples`` samples are drawn. An ``(X, y)`` pair or a torch
        ``Dataset`` of ``(x, y)`` items is used as given (labels as in ``y``).
        Parameters are grid-searchable as ``proxy_data__*``.
    proxy_ratio : float, default=0.5
        Fraction of every training batch taken from the proxy data, in
        ``[0, 1)``. An epoch stays one pass over the real training data.
    proxy_mixing : {"split", "append"}, default="split"
        ``"split"``: the proxy samples take ``proxy_ratio`` of the
        ``batch_size`` samples of a batch. ``"append"``: they are added to a
        full batch of ``batch_size`` real samples, so the batch grows to
        ``batch_size / (1 - proxy_ratio)`` (at 0.5, a full real batch plus a
        full synthetic one, as Sehwag et al. train). Either way the loss is
        the mean over all samples of the batch, so real and proxy samples
        weigh ``1 - proxy_ratio`` and ``proxy_ratio`` of it; ``"append"``
        takes ``1 / (1 - proxy_ratio)`` times the compute per step for the
        same number of steps per epoch.
    proxy_samples : int or None, default=None
        Samples drawn from a ProxyDistribution per ``fit``. ``None`` draws as
        many as one epoch uses, so no proxy sample repeats within an epoch.
    proxy_memory : str, joblib.Memory or None, default=None
        Cache for fitting a ProxyDistribution and sampling from it (a
        directory, or a :class:`joblib.Memory` of which only the location is
        used), keyed on the proxy's class and parameters, the training data,
        ``proxy_samples`` and the seed. Entries hold tensors and plain values
        and are read with ``torch.load(weights_only=True)``, never unpickled
        (see :doc:`/persistence`).
    criterion : torch loss class, default=torch.nn.CrossEntropyLoss
        Loss on the module's logits.
    optimizer : torch optimizer class, default=torch.optim.Adam
        Optimizer; settings via ``optimizer__*``.
    lr : float, default=3e-3
        Peak learning rate (of the one-cycle schedule by default).
    lr_schedule : {"onecycle", "cosine", "constant", None}, default="onecycle"
        Per-batch learning-rate schedule over the ``max_epochs`` of each
        ``fit`` (or ``partial_fit``) call. ``"onecycle"`` warms up linearly over
        the first 20% of training and then decays along a cosine to zero;
        ``"cosine"`` decays from the start; ``"constant"``/``None`` keep ``lr``.
        It runs as the callback :class:`~robustfit.callbacks.LRSchedule`,
        named ``lr_schedule`` (``callbacks__lr_schedule=None`` removes it); a
        skorch ``LRScheduler`` of your own in ``callbacks`` replaces it.
    attack_warmup : float or "auto", default="auto"
        Epochs over which the attack's epsilon grows linearly from 0 to its
        value, counted from the start of each ``fit``/``partial_fit`` call.
        ``"auto"`` ramps over the first 20% of ``max_epochs``, alongside the
        learning-rate warm-up; ``0`` uses the full budget from the first batch.
        Without a ramp, large budgets such as MNIST at 0.3 can collapse
        training to a constant prediction (measured: 11% accuracy after 20
        epochs, against 89.5% robust accuracy under PGD-20 with the ramp).
        It runs as the callback :class:`~robustfit.callbacks.EpsilonWarmup`,
        named ``attack_warmup``. It ramps robustfit's attack objects (those
        with an ``epsilon`` parameter); a plain callable attack is not ramped
        (a warning says so when it has an ``epsilon`` attribute).
    max_epochs : int, default=10
        Passes over the training data per ``fit``. A ``fit`` whose history was
        restored by skorch's ``LoadInitState`` (a resumed run) trains only the
        epochs that remain, so it ends with ``max_epochs`` epochs of history
        where plain skorch would train ``max_epochs`` more (see
        :doc:`/persistence`); ``partial_fit`` always trains ``max_epochs`` more.
    batch_size : int, default=128
        Samples per training and inference batch. In data-parallel training
        it is the global batch, all ranks together.
    train_split : callable or None, default=ValidSplit(10, stratified=True)
        How skorch holds out validation data for the per-epoch history (here
        10%, the same split every time). ``None`` trains on all data;
        ``skorch.helper.predefined_split(dataset)`` uses a given set.
    valid_attack : robustfit.attacks.Attack, RobustValidation or None, default=None
        If set, robust accuracy on the validation split under this attack is
        recorded every epoch as ``valid_robust_acc`` (opt-in: it costs an attack
        pass over the validation data per epoch). A
        :class:`~robustfit.callbacks.RobustValidation` measures every n epochs
        on a fixed subset, keeps and restores the most robust epoch's weights
        (``restore_best=True``) and stops early (``patience``).
    ema : robustfit.recipes.EMA or None, default=None
        Keep an exponential moving average of the weights; prediction,
        scoring and pickling use it (see :doc:`/recipes`). Grid-searchable as
        ``ema__decay``.
    awp : robustfit.recipes.AWP or None, default=None
        Adversarial weight perturbation (Wu et al. 2020): every step's
        gradient is taken at weights perturbed to raise the objective.
        Grid-searchable as ``awp__gamma``; the fitted copy is ``awp_``.
    guard : robustfit.recipes.CollapseGuard or None, default=None
        The catastrophic-overfitting guard for fast (FGSM) training: a PGD
        check on a training subset after every epoch that restores the last
        good weights on a collapse.
    random_state : int, numpy RandomState or None, default=None
        Seeds weight initialization, shuffling, validation split and the
        attacks' random starts, through generators private to each call (so
        seeded fits repeat in threads too). The global torch generator is
        restored after ``fit``, so seeding here does not affect other code.
        It is also the default seed of :meth:`robust_score` and the
        :mod:`robustfit.metrics` evaluations.
    device : {"auto", "cpu", "cuda", ...}, default="auto"
        Compute device. ``"auto"`` picks CUDA when it is available.
    amp : {"auto", "bf16", None}, default="auto"
        Mixed precision. ``"auto"`` uses bfloat16 autocast (and channels-last
        memory for images) on CUDA and full precision on the CPU.
    compile : bool, default=False
        skorch's parameter: run the module (and the criterion) through
        :func:`torch.compile`, with ``compile__*`` parameters passed on
        (``compile__mode="max-autotune"``, ``compile__dynamic=True``, ...).
        The training attack, the training step and the evaluation attacks all
        call the same compiled ``module_``; each combination of train/eval
        mode, gradient mode and batch shape compiles once, on first use.
        ``GeneratorSynth(feature_layer=...)`` reads a layer through a forward
        hook that compiled code does not run, so it needs ``compile=False``.
        Whether compiling pays depends on the model and device: see the
        "Scaling out" docs page.
    cuda_graphs : {"auto", True, False}, default="auto"
        Record the training attack's ascent loop (PGD and FGSM on the
        cross-entropy) as a CUDA graph and replay it with one launch per
        batch, instead of launching each kernel of each step from Python.
        The random start is drawn outside the graph and epsilon and the step
        size are its inputs (the epsilon warm-up replays one graph), so the
        examples are those of the eager loop. A graph is recorded the second
        time a batch shape is seen and costs memory (0.44 GiB for ResNet-18
        at batch 512); a module that cannot be recorded runs eagerly after
        one warning. On an H200 the attack ran 12.6x faster on a small CNN
        (launch-bound) and 1.3x on ResNet-18 (see the "Scaling out" page).
        ``"auto"`` is on for a CUDA device unless ``compile=True``; ``True``
        needs a CUDA device. Langevin's noisy steps, GeneratorSynth, TRADES'
        KL attack, the restarts of ``PGD(restarts=k)`` and the evaluation
        attacks always run eagerly. The graphs are dropped when ``fit`` ends.
    fold_batchnorm : {"auto", True, False}, default="auto"
        Run the training attack (PGD, FGSM, Langevin, which differentiate
        with respect to the input only) on the module with each batch-norm
        layer that follows a convolution folded into it: in eval mode batch
        norm is a per-channel affine map, so the pair is one convolution,
        and batch norm's memory-bound forward and backward passes are
        skipped. The module is traced with :mod:`torch.fx` once; one that
        cannot be traced, has forward hooks or is compiled is attacked as it
        is. The examples are those of the unfolded network up to float
        rounding; evaluation attacks always run on the module itself.
        ``"auto"`` is on for a CUDA device.
    iterator_train, iterator_valid : class, default=TensorLoader
        Batch iterators. :class:`~robustfit._loader.TensorLoader` keeps the data
        on the device and slices batches; pass
        :class:`torch.utils.data.DataLoader` for datasets that do not fit.
    verbose : int, default=0
        ``>= 1`` shows progress bars over epochs and batches and prints the
        per-epoch table.
    **kwargs
        Any other skorch parameter (``callbacks``, ``module__*``,
        ``optimizer__*``, ``iterator_train__*``, ``warm_start``, ...).

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network.
    attack_ : robustfit.attacks.Attack, CheckedAttack or None
        The attack used in training (a clone of ``attack``; a plain callable
        is wrapped in :class:`~robustfit._validation.CheckedAttack`, which
        checks its output on the first training batch: shape, finiteness and,
        when the callable has ``epsilon``/``norm``/``bounds`` attributes, the
        epsilon-ball and the box).
    classes_ : numpy.ndarray
        The class labels, in the order of the logits.
    n_features_in_ : int
        Number of input values per sample.
    input_shape_ : tuple of int
        Shape of one input sample.
    history : skorch.history.History
        Per-epoch ``train_loss``, ``valid_loss``, ``valid_acc``, ``dur``; with
        ``valid_attack``, ``valid_robust_acc``; with ``objective=PrimalDual(...)``,
        ``dual_nu`` and ``clean_loss``; with ``guard``, ``guard_robust_acc`` (and
        ``guard_collapse`` at a collapse); per-batch ``train_loss`` and
        ``train_batch_size`` (of the global batch in data-parallel training).
    objective_ : robustfit.losses.Objective
        The objective used in training, with its state.
    awp_ : robustfit.recipes.AWP or None
        The weight perturbation used in training (a clone of ``awp``).
    proxy_ : ProxyDistribution or None
        The proxy distribution fitted on the training data, when
        ``proxy_data`` is one.

    Examples
    --------
    >>> from robustfit import AdversarialClassifier
    >>> from robustfit.attacks import PGD
    >>> from robustfit.datasets import load_digits_images
    >>> X, y = load_digits_images()
    >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=3),
    ...                             max_epochs=2, random_state=0)
    >>> clf.fit(X[:500], y[:500]).predict(X[:3]).shape
    (3,)
    """

    def __init__(
        self,
        module=None,
        *,
        attack=None,
        objective=None,
        proxy_data=None,
        proxy_ratio=0.5,
        proxy_samples=None,
        proxy_memory=None,
        proxy_mixing="split",
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=3e-3,
        lr_schedule="onecycle",
        attack_warmup="auto",
        max_epochs=10,
        batch_size=128,
        train_split=ValidSplit(10, stratified=True),
        valid_attack=None,
        ema=None,
        awp=None,
        guard=None,
        random_state=None,
        device="auto",
        amp="auto",
        cuda_graphs="auto",
        fold_batchnorm="auto",
        iterator_train=TensorLoader,
        iterator_valid=TensorLoader,
        verbose=0,
        **kwargs,
    ):
        super().__init__(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            iterator_train=iterator_train,
            iterator_valid=iterator_valid,
            device=device,
            verbose=verbose,
            **kwargs,
        )
        self.attack = attack
        self.objective = objective
        self.proxy_data = proxy_data
        self.proxy_ratio = proxy_ratio
        self.proxy_samples = proxy_samples
        self.proxy_memory = proxy_memory
        self.proxy_mixing = proxy_mixing
        self.lr_schedule = lr_schedule
        self.attack_warmup = attack_warmup
        self.valid_attack = valid_attack
        self.ema = ema
        self.awp = awp
        self.guard = guard
        self.random_state = random_state
        self.amp = amp
        self.cuda_graphs = cuda_graphs
        self.fold_batchnorm = fold_batchnorm

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # skorch's AccelerateMixin replaces train_step_single with a clean step:
        # the attack would silently never run
        owner = next(k for k in cls.__mro__ if "train_step_single" in vars(k))
        if owner is not AdversarialClassifier and owner.__name__ == "AccelerateMixin":
            raise TypeError(
                f"{cls.__name__} mixes skorch's AccelerateMixin into AdversarialClassifier: its "
                "train_step_single trains on clean data, so the attack would never run. robustfit "
                "trains data-parallel without it (torchrun; see the 'Scaling out' docs page), and "
                "uses bf16 autocast on CUDA by default (amp='auto')."
            )

    _parameter_constraints = {
        "attack": _ATTACK,
        "valid_attack": _ATTACK + [RobustValidation],
        "ema": [None, EMA],
        "awp": [None, AWP],
        "guard": [None, CollapseGuard],
        "objective": [None, Objective],
        "proxy_ratio": [Interval(Real, 0, 1, closed="left")],
        "proxy_samples": [None, Interval(Integral, 1, None)],
        "proxy_mixing": [Options(PROXY_MIXINGS)],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "lr_schedule": [None, Options(SCHEDULES)],
        "attack_warmup": [Options(("auto",)), Interval(Real, 0, None)],
        "max_epochs": [Interval(Integral, 0, None)],
        "batch_size": [Interval(Integral, 1, None), Options((-1,))],
        "random_state": ["random_state"],
        "amp": [None, Options(("auto", "bf16", False))],
        "cuda_graphs": [Options(("auto",)), "boolean"],
        "fold_batchnorm": [Options(("auto",)), "boolean"],
        "device": [None, str, torch.device],
        "compile": ["boolean"],
        "train_split": [None, "callable"],
        "verbose": [Interval(Integral, 0, None), "boolean"],
    }

    # ------------------------------------------------------------------ device
    # ``device`` is stored as given ("auto" included) so that get_params and
    # clone round-trip it; every internal use sees the resolved device.
    @property
    def device(self):
        return resolve_device(self.__dict__.get("device", "cpu"))

    @device.setter
    def device(self, value):
        self.__dict__["device"] = value

    def get_params(self, deep=True, **kwargs):
        params = super().get_params(deep=deep, **kwargs)
        params["device"] = self.__dict__.get("device")
        return params

    def set_params(self, **params):
        """Set parameters, including nested ones such as ``attack__epsilon``.

        On a fitted classifier the change applies to the next ``partial_fit``
        or warm-start ``fit``: the callbacks that ``lr_schedule``,
        ``attack_warmup``, ``valid_attack``, ``guard``, ``ema`` and
        ``verbose`` install are rebuilt from their new values (a new ``ema``
        puts the raw training weights back into the module and averages
        afresh; ``ema__decay`` and the like change the running average's
        settings and keep it), and a new ``lr`` becomes the base of the
        learning-rate schedule.

        Parameters
        ----------
        **params
            Estimator parameters.

        Returns
        -------
        self : AdversarialClassifier
        """
        nested, params = split_nested_params(params, _NESTED)
        fitted = getattr(self, "initialized_", False) and hasattr(self, "callbacks_")
        lrs = self._group_lrs() if fitted else None
        before = {k: getattr(self, k, None) for k in params if k in _CALLBACK_OF}
        # skorch rebuilds every callback when a callbacks* parameter changes: the
        # weights a callback keeps beside the module (EMA's) go to the new one
        kept = (_callback_states(self) if fitted and any(k.startswith("callbacks") for k in params)
                else None)
        super().set_params(**params)
        if kept:
            _load_callback_states(self, kept)
        for head, sub in nested.items():
            obj = getattr(self, head)
            if obj is None or not hasattr(obj, "set_params"):
                raise ValueError(
                    f"cannot set {', '.join(head + '__' + k for k in sub)}: "
                    f"{head} is {obj!r}"
                )
            obj.set_params(**sub)
        if fitted:
            self._rebase_schedule(lrs)
            changed = {_CALLBACK_OF[k] for k in nested if k in _CALLBACK_OF}
            changed |= {_CALLBACK_OF[k] for k, old in before.items()
                        if not _same_setting(old, getattr(self, k))}
            if "ema" in nested and "ema" not in params and isinstance(self.ema, EMA):
                current = dict(self.callbacks_).get("ema")
                if isinstance(current, EMA):  # same average, new settings
                    current.set_params(**self.ema.get_params())
                    changed.discard("ema")
            if changed:
                self._rebuild_callbacks(changed)
        return self

    def _group_lrs(self):
        optimizer = getattr(self, "optimizer_", None)
        return None if optimizer is None else [g["lr"] for g in optimizer.param_groups]

    def _rebase_schedule(self, before):
        """A parameter group whose learning rate ``set_params`` changed gets it as
        the base of the schedule (torch's ``initial_lr``, set at the first fit)."""
        optimizer = getattr(self, "optimizer_", None)
        if before is None or optimizer is None:
            return
        for group, lr in zip(optimizer.param_groups, before):
            if group["lr"] != lr and "initial_lr" in group:
                group["initial_lr"] = group["lr"]

    def _rebuild_callbacks(self, names):
        """Rebuild, from the current parameters, the installed callbacks ``names``
        (``callbacks_`` names) on a fitted classifier; the others keep their state."""
        if self.callbacks == "disable":
            return
        installed = list(self.callbacks_)
        ema = dict(installed).get("ema")
        if "ema" in names and isinstance(ema, EMA):
            ema.show_raw(self)  # the module goes on from the raw weights
        fresh = {}
        for name, cb in self._default_callbacks:
            if name not in names or hasattr(self, "callbacks__" + name):
                continue  # unchanged, or the user's callbacks__<name>=... stays
            params = self.get_params_for("callbacks__" + name)
            fresh[name] = (cb.set_params(**params) if params else cb).initialize()
        result = []
        for name, cb in installed:
            if name in fresh:
                result.append((name, fresh.pop(name)))
            elif name not in names or hasattr(self, "callbacks__" + name):
                result.append((name, cb))
            # else: its parameter is None now, so the callback goes
        order = [n for n, _ in self._default_callbacks]
        for name, cb in fresh.items():  # newly installed (the parameter was None before)
            # where a fresh build puts it: after the default callbacks before it
            # (so a user's Checkpoint monitoring valid_robust_acc_best runs after it)
            before = set(order[:order.index(name)])
            at = max((i + 1 for i, (n, _) in enumerate(result) if n in before), default=0)
            result.insert(at, (name, cb))
        self.callbacks_ = result

    def __setstate__(self, state):
        raw = state.get("device")
        if raw == "auto":
            state["device"] = resolve_device(raw)
        super().__setstate__(state)
        if raw == "auto":
            self.__dict__["device"] = raw

    # --------------------------------------------------------------- callbacks
    @property
    def _default_callbacks(self):
        # skorch's valid_acc compares predict() (original labels) with the
        # dataset's y (encoded here): score on class indices instead
        callbacks = [
            (name, EpochScoring(_encoded_accuracy, name="valid_acc", lower_is_better=False))
            if name == "valid_acc" else (name, cb)
            for name, cb in super()._default_callbacks
        ]
        extra = [
            ("lr_schedule", LRSchedule(self.lr_schedule)),
            ("attack_warmup", EpsilonWarmup(self.attack_warmup)),
        ]
        valid = self.valid_attack
        if valid is not None:
            extra.append(("valid_robust_acc", clone(valid) if isinstance(valid, RobustValidation)
                          else RobustValidation(valid)))
        if isinstance(self.guard, CollapseGuard):  # other values: fit's checks raise
            extra.append(("guard", clone(self.guard)))
        if truthy(self.verbose):  # any value set_params may store, arrays included
            extra.append(("progress", Progress()))
        # the weight average goes first: every later callback sees the averaged weights
        first = [("ema", clone(self.ema))] if isinstance(self.ema, EMA) else []
        return first + callbacks[:-1] + extra + callbacks[-1:]  # the print log stays last

    # ---------------------------------------------------------- validation
    def __setattr__(self, name, value):
        # skorch takes any torch module set on the net for a component and
        # refuses it outside initialize(); attack=nn.Linear(...) must instead
        # reach fit's validation, whose error says what an attack is
        if name in _NESTED:
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def _validate_params_extra(self):
        check_attack(self.attack, "attack", type(self).__name__)
        if not isinstance(self.valid_attack, RobustValidation):
            check_attack(self.valid_attack, "valid_attack", type(self).__name__)
        for name in ("objective", "valid_attack", "ema", "awp", "guard"):
            if getattr(getattr(self, name), "validate_params", None) is not None:
                getattr(self, name).validate_params()
        if self.max_epochs == 0 and not self.warm_start:
            raise self._param_error(
                "max_epochs", "= 0 trains nothing; use max_epochs >= 1 (0 is allowed only with "
                "warm_start=True, where fit then leaves a fitted model unchanged)")
        proxy_kind(self.proxy_data)
        device = check_device(self.__dict__.get("device"))
        if self.cuda_graphs is True and (device is None or torch.device(device).type != "cuda"):
            raise self._param_error(
                "cuda_graphs", f"needs a CUDA device (device={self.device!r}): use "
                "cuda_graphs='auto' (on for CUDA, off elsewhere) or False")
        if self.compile and getattr(self.attack, "feature_layer", None) is not None:
            raise self._param_error(
                "compile", "cannot be True together with the attack's feature_layer="
                f"{self.attack.feature_layer!r}: that layer's output is read through "
                "a forward hook, which the compiled module does not run; use compile=False, or "
                "feature_layer=None")

    def _bounds(self):
        return check_bounds(getattr(self.attack, "bounds", None)) if self.attack is not None else None

    def _check_X(self, X, bounds=None, reset=False):
        """Validate X; return it as a float32 array or tensor (a Dataset as is).

        Unless ``reset``, a fitted classifier also checks the sample shape.
        """
        if is_dataset(X):
            return X
        X = check_array(X)
        shape = getattr(self, "input_shape_", None)
        if not reset and shape is not None and tuple(X.shape[1:]) != shape:
            name = type(self).__name__
            if X.ndim == 2 and len(shape) == 1:
                raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting "
                                 f"{shape[0]} features as input")
            raise ValueError(f"X has samples of shape {tuple(X.shape[1:])}, but {name} was "
                             f"fitted on {shape}")
        check_in_bounds(X, bounds)
        return X

    def _check_y(self, X, y, reset):
        y = check_labels(y, len(X))
        if reset:
            classes = np.asarray(self.classes) if self.classes is not None else np.unique(y)
            if self.classes is not None and len(np.unique(classes)) != len(classes):
                raise self._param_error(
                    "classes", f"has repeated labels ({classes.tolist()[:10]}); give each once")
            if len(classes) < 2:
                raise ValueError(
                    f"y has {len(classes)} class(es), {classes.tolist()}; a classifier "
                    "needs at least 2"
                )
            self.classes_inferred_ = classes
        return encode_labels(self.classes_, y)

    def _prepare_fit(self, X, y, reset):
        """Validate parameters and data; encode labels; record input shape."""
        self.validate_params()
        if is_dataset(X):
            arrays = dataset_arrays(X)
            sample = arrays[0][0] if arrays is not None else X[0][0]
            shape = tuple(sample.shape)
            if reset and y is None:
                super().check_data(X, None)  # infers classes_ from the Dataset
        else:
            X = self._check_X(X, self._bounds(), reset=reset)
            y = self._check_y(X, y, reset)
            shape = tuple(X.shape[1:])
        if not reset and getattr(self, "input_shape_", shape) != shape:
            raise ValueError(
                f"X has samples of shape {shape}, but the classifier was fitted on {self.input_shape_}"
            )
        self.input_shape_ = shape
        self.n_features_in_ = int(np.prod(shape))
        self._fitted_copy("attack", reset)
        if self.attack_ is not None and not isinstance(self.attack_, Attack):
            # a plain callable: its output on the first training batch is checked
            inner = self.attack_.attack if isinstance(self.attack_, CheckedAttack) else self.attack_
            self.attack_ = CheckedAttack(inner, "attack")
            if reset and hasattr(inner, "epsilon") and self.attack_warmup != 0:
                warnings.warn(
                    f"attack_warmup={self.attack_warmup!r} does not ramp a plain callable attack "
                    f"({type(inner).__name__}, epsilon={inner.epsilon!r}): robustfit changes the "
                    "epsilon of its fitted copy of an Attack only, and a callable is used as "
                    "given. Subclass robustfit.attacks.Attack, or pass attack_warmup=0 to "
                    "silence this warning", UserWarning, stacklevel=3)
        if proxy_kind(self.proxy_data) == "arrays" and self.proxy_ratio > 0:
            check_proxy_pair(self.proxy_data, self.classes_)
        # fitted state that may hold CUDA tensors (a generator, the dual variable,
        # a diffusion model): skorch pickles these with a map_location on load,
        # so a model trained on a GPU unpickles on a CPU-only machine
        extra = [a for a in ("attack_", "objective_", "proxy_") if a not in self.cuda_dependent_attributes_]
        if extra:
            self.cuda_dependent_attributes_ = list(self.cuda_dependent_attributes_) + extra
        self._fitted_copy("objective", reset)
        self._fitted_copy("awp", reset)
        if self.objective_ is None:
            self.objective_ = AdversarialCE()
        if reset:
            self.objective_.reset()
            self.proxy_refit_ = True
        return X, y

    def _fitted_copy(self, name, reset):
        attr, params = name + "_", name + "_params_"
        copy, new = fitted_copy(getattr(self, name), getattr(self, attr, None),
                                getattr(self, params, None), reset)
        setattr(self, attr, copy)
        setattr(self, params, new)

    def check_data(self, X, y):
        # Labels are validated and encoded in fit/partial_fit; skorch's version
        # would overwrite classes_ with the encoded labels.
        pass

    def _check_fitted(self):
        if not hasattr(self, "classes_inferred_") or getattr(self, "module_", None) is None:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call "
                "'fit' with appropriate arguments before using this estimator."
            )

    # ------------------------------------------------------------ seeding
    def _seed(self):
        rs = self.random_state
        if rs is None:
            # data-parallel fit without a seed: one seed drawn on rank 0, shared
            return getattr(self, "_shared_seed_", None)
        return int(rs) if isinstance(rs, numbers.Integral) else int(check_random_state(rs).randint(2**31))

    @contextlib.contextmanager
    def _seeded(self, offset=0):
        # robustfit's own draws (attack starts, shuffling, noise) come from a
        # RandomSource private to this call, so seeded fits repeat in threads;
        # torch's global generator (weight init, dropout) is forked and seeded too.
        # In data-parallel training the RandomSource is the same on every rank
        # (shared shuffling, per-sample draws sliced from the global batch's),
        # while torch's global generator differs per rank, so dropout masks
        # are independent across ranks; it is seeded again at every epoch from
        # (seed, rank, epoch), so a resumed data-parallel run draws them again.
        seed = self._seed()
        seed = None if seed is None else seed + offset
        torch_seed = None if seed is None else seed + 1_000_003 * rank()
        run = self._distributed_run()
        if run is not None:  # reseeded at every epoch (DataParallelMixin.on_epoch_begin)
            run.torch_seed = torch_seed
        with torch_seeded(torch_seed), random_source(seed):
            yield

    def get_split_datasets(self, X, y=None, **fit_params):
        split = self.train_split
        if isinstance(split, ValidSplit) and y is not None:
            # a shuffled split follows random_state; without one, a data-parallel
            # fit still splits alike on every rank (the seed rank 0 drew)
            seed = self.random_state if self.random_state is not None else self._seed()
            if split.random_state is None and seed is not None \
                    and not isinstance(split.cv, numbers.Integral):
                split = ValidSplit(cv=split.cv, stratified=split.stratified, random_state=seed)
            train, valid = valid_split_or_fallback(split, self.get_dataset(X, y), y, **fit_params)
        else:
            train, valid = super().get_split_datasets(X, y, **fit_params)
        # The proxy sees the training part only: never the validation split, and
        # (since fit only gets the training fold) never a cross-validation fold.
        self._prepare_proxy(train)
        return train, valid

    def _prepare_proxy(self, dataset_train):
        """Build the proxy pool ``proxy_X_``/``proxy_y_`` from ``proxy_data``."""
        if proxy_kind(self.proxy_data) is None or self.proxy_ratio == 0:
            self.proxy_ = self.proxy_X_ = self.proxy_y_ = None
            return
        if not getattr(self, "proxy_refit_", True) and getattr(self, "proxy_X_", None) is not None:
            return  # partial_fit: keep the pool of the first call
        self.proxy_refit_ = False
        # data-parallel: the pool is built once, on rank 0, and sent to the
        # other ranks (each trains on its own share of every batch's proxy part)
        self.proxy_, self.proxy_X_, self.proxy_y_ = run_on_main(lambda: build_proxy_pool(
            self.proxy_data, dataset_train, classes=self.classes_, input_shape=self.input_shape_,
            bounds=self._bounds(), batch_size=self.batch_size, proxy_ratio=self.proxy_ratio,
            proxy_samples=self.proxy_samples, memory=self.proxy_memory, seed=self._seed(),
            mixing=self.proxy_mixing,
        ))
        resumed = self.__dict__.pop("_resume_proxy_", None)
        if resumed is not None:  # a run resumed from a checkpoint: the same pool
            if "X" in resumed:
                self.proxy_X_, self.proxy_y_ = resumed["X"], resumed["y"]
            elif _pool_digest(self.proxy_X_, self.proxy_y_) != resumed["digest"]:
                raise ValueError(
                    "the proxy pool rebuilt for this resumed fit differs from the one the "
                    "checkpoint was trained with; resume with the same data, proxy_data, "
                    "proxy_samples and random_state"
                )

    # ---------------------------------------------------------- fit / predict
    def fit(self, X, y=None, **fit_params):
        """Initialize the network and train it for ``max_epochs`` epochs.

        Parameters
        ----------
        X : array-like, torch.Tensor or Dataset
            Inputs, shape ``(n, d)`` or ``(n, C, H, W)``, inside the attack's
            ``bounds``.
        y : array-like of shape (n,)
            Class labels of any type (strings too).
        **fit_params
            Passed to the module's ``forward`` and to ``train_split``.

        Returns
        -------
        self : AdversarialClassifier
        """
        fresh = not (self.warm_start and self.initialized_)
        X, y = self._prepare_fit(X, y, reset=fresh)
        self._prepare_distributed(X, y)
        self.schedule_origin_ = 0 if fresh else len(self.history)
        try:
            # a warm-start call goes on with new draws (shuffling, attack starts), as
            # partial_fit does; a fresh one starts from the seed
            with self._seeded(0 if fresh else len(self.history)):
                return super().fit(X, y, **fit_params)
        finally:
            self._end_distributed()
            self._release_attack_caches()

    def _release_attack_caches(self):
        """Drop the CUDA graphs and the folded copy of ``module_`` that the training
        attack used (``partial_fit`` keeps them for the next call)."""
        module = getattr(self, "module_", None)
        if isinstance(module, torch.nn.Module):
            traced = release_folded(module)
            if traced is not None:
                clear_graphs(traced)
            clear_graphs(module)

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Continue training for ``max_epochs`` epochs without re-initializing.

        Parameters
        ----------
        X : array-like, torch.Tensor or Dataset
            Inputs, as for :meth:`fit`.
        y : array-like of shape (n,)
            Class labels; must be among ``classes_`` after the first call.
        classes : array-like, default=None
            All labels, for a first call whose ``y`` may not show every class.
        **fit_params
            Passed to the module's ``forward`` and to ``train_split``.

        Returns
        -------
        self : AdversarialClassifier
        """
        if fit_params.get("_routing_method") == "fit":  # called from fit: data checked
            return super().partial_fit(X, y, **fit_params)
        first = not self.initialized_ or not hasattr(self, "classes_inferred_")
        reset = first
        if first and classes is not None and self.classes is None:
            classes = np.unique(np.asarray(classes))
            if len(classes) < 2:
                raise ValueError(f"classes has {len(classes)} label(s); a classifier needs at least 2")
            self.classes_inferred_ = classes
            reset = False
        X, y = self._prepare_fit(X, y, reset=reset)
        self._prepare_distributed(X, y)
        offset = len(self.history) if self.initialized_ and self.history is not None else 0
        self.schedule_origin_ = offset
        try:
            with self._seeded(offset):
                return super().partial_fit(X, y, **fit_params)
        finally:
            self._end_distributed()

    def fit_loop(self, X, y=None, epochs=None, **kwargs):
        # A fit resumed by LoadInitState (history restored in on_train_begin)
        # trains the epochs that remain of max_epochs.
        if epochs is None:
            done = len(self.history) - getattr(self, "schedule_origin_", 0)
            epochs = max(self.max_epochs - done, 0)
        return super().fit_loop(X, y, epochs=epochs, **kwargs)

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits).

        Parameters
        ----------
        X : array-like, torch.Tensor or Dataset
            Inputs.

        Returns
        -------
        proba : numpy.ndarray of shape (n, n_classes)
            Columns follow ``classes_``.
        """
        self._check_fitted()
        X = self._check_X(X)
        if not is_dataset(X) and tuple(X.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"X has samples of shape {tuple(X.shape[1:])}, but the classifier "
                f"was fitted on {self.input_shape_}"
            )
        return super().predict_proba(X)

    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        X : array-like, torch.Tensor or Dataset
            Inputs.

        Returns
        -------
        y_pred : numpy.ndarray of shape (n,)
            Labels from ``classes_``.
        """
        proba = self.predict_proba(X)  # first: raises NotFittedError when unfitted
        return self.classes_[proba.argmax(axis=1)]

    def default_evaluation_attack(self):
        """The attack :meth:`robust_score` uses when none is given.

        The fast ensemble, ``AutoAttack(version="fast")``: APGD-CE, then
        APGD-T towards the 3 most likely wrong classes, 100 iterations each, in
        the training attack's threat model (``epsilon``, ``norm``,
        ``bounds``). It is parameter-free and stronger than PGD with a fixed
        step size, but it is not the standard AutoAttack suite (which adds 6
        more APGD-T targets, FAB-T and Square): report its figures as "fast
        ensemble (APGD-CE + APGD-T x3)", and pass ``attack="autoattack"`` to
        :meth:`robust_score` for figures to be called AutoAttack.

        Returns
        -------
        attack : robustfit.attacks.AutoAttack
            The evaluation attack (its ``label`` names it).
        """
        att = self.attack
        if att is None or not hasattr(att, "epsilon"):
            raise ValueError(
                "this classifier has no training attack (attack=None), so there is "
                "no threat model to evaluate in; pass attack=PGD(epsilon=...)"
            )
        return AutoAttack(
            epsilon=att.epsilon, norm=getattr(att, "norm", "linf"),
            bounds=getattr(att, "bounds", (0.0, 1.0)),
        )

    def robust_score(self, X, y, attack=None, check=True, random_state=None):
        """Robust accuracy on ``(X, y)``.

        Under ``torchrun`` every rank must call it with the same points: the
        points are sharded across the ranks and the per-point results gathered
        (see :func:`~robustfit.metrics.robust_accuracy`).

        Parameters
        ----------
        X : array-like or torch.Tensor
            Inputs.
        y : array-like of shape (n,)
            True labels.
        attack : robustfit.attacks.Attack or str, default=None
            The attack, or a name such as ``"autoattack"`` (the standard
            AutoAttack suite) or ``"autoattack-fast"``, in the training
            attack's threat model; ``None`` uses
            :meth:`default_evaluation_attack`, the fast ensemble (APGD-CE +
            APGD-T x3), which is cheaper than, and not the same as, AutoAttack.
        check : bool, default=True
            Also run :func:`~robustfit.metrics.check_gradient_masking` in the
            attack's threat model, on at most 500 samples, with ``attack`` as
            the white-box reference, and issue a
            :class:`~robustfit.metrics.RobustnessWarning` for each failed check.
            Skipped for attacks without ``epsilon`` (plain callables).
        random_state : int, numpy RandomState or None, default=None
            Seeds the attacks' random starts (see
            :func:`~robustfit.metrics.robust_accuracy`); ``None`` uses this
            classifier's ``random_state``, so a seeded classifier scores the
            same in every process.

        Returns
        -------
        score : float
            Fraction of samples classified correctly both clean and under the
            attack.

        Warns
        -----
        RobustnessWarning
            When ``check=True`` and the evaluation shows a symptom of gradient
            masking; the score is then probably an overestimate.
        """
        self._check_fitted()
        X = self._check_X(X)
        attack = resolve_attack(attack, estimator=self)  # names such as "autoattack"
        if attack is None:
            attack = self.default_evaluation_attack()
        batch_size = max(self.batch_size, 256)
        score = robust_accuracy(self, X, y, attack=attack, batch_size=batch_size,
                                random_state=random_state)
        if check and hasattr(attack, "epsilon") and attack.epsilon > 0:
            report = check_gradient_masking(
                self, X, y, attack.epsilon, norm=getattr(attack, "norm", "linf"),
                bounds=getattr(attack, "bounds", (0.0, 1.0)), attack=attack,
                max_samples=500, batch_size=batch_size, random_state=random_state,
            )
            if is_main():  # data-parallel: every rank has the report; one warns
                report.warn(stacklevel=2)
        return score

    # ------------------------------------------------------------ training
    def initialize_module(self):
        # weight init draws from torch's global generator: seed it under a lock,
        # so a fit in another thread cannot interleave its own draws
        with GLOBAL_RNG_LOCK, torch_seeded(self._seed()):
            return self._build_module()

    def _build_module(self):
        kwargs = self.get_params_for("module")
        module = self.module
        shape = getattr(self, "input_shape_", None)
        n_classes = len(self.classes_inferred_) if hasattr(self, "classes_inferred_") else None
        if module is None:
            if shape is None or n_classes is None:
                raise NotFittedError(
                    "module=None builds the network from the data; call fit first"
                )
            # module__* parameters go to the constructor here: skorch would
            # otherwise rebuild the instance as type(module)(**kwargs) and lose
            # the shape-derived arguments
            module, kwargs = default_module(shape, n_classes, **kwargs), {}
        elif not isinstance(module, torch.nn.Module):
            kwargs = fill_module_arguments(module, kwargs, shape, n_classes)
        self.module_ = self.initialized_instance(module, kwargs)
        if amp_dtype(self.amp, self.device) is not None and shape is not None and len(shape) == 3:
            self.module_ = self.module_.to(memory_format=torch.channels_last)
        return self

    def get_iterator(self, dataset, training=False):
        iterator = self.iterator_train if training else self.iterator_valid
        sharded = training and self._distributed_run() is not None
        if sharded:
            # data-parallel: every rank cuts the same global batches and keeps its share
            self._check_shardable(dataset)
            if iterator is DataLoader:  # the DataLoader options go to the streaming loader
                iterator = TensorLoader
            elif not (isinstance(iterator, type) and issubclass(iterator, TensorLoader)):
                raise ValueError(
                    f"iterator_train={getattr(iterator, '__name__', iterator)!r} cannot shard "
                    "batches across ranks in data-parallel training; keep the default "
                    "TensorLoader (it streams Datasets through a DataLoader: pass its options "
                    "as iterator_train__num_workers=... etc.)")
        if training and getattr(self, "proxy_X_", None) is not None:
            loader = MixedLoader(dataset, self.proxy_X_, self.proxy_y_, self.proxy_ratio,
                                 mixing=self.proxy_mixing,
                                 **self._iterator_kwargs("iterator_train", dataset, True))
        elif isinstance(iterator, type) and issubclass(iterator, TensorLoader):
            prefix = "iterator_train" if training else "iterator_valid"
            loader = iterator(dataset, **self._iterator_kwargs(prefix, dataset, training))
        else:
            loader = super().get_iterator(dataset, training=training)
        if training:
            # the schedules' pace: batches per epoch as the loader really yields them
            # (mixed proxy batches hold fewer real samples than batch_size)
            try:
                self.train_batches_ = len(loader)
            except TypeError:
                self.train_batches_ = None
        return loader

    def _iterator_kwargs(self, prefix, dataset, training):
        kwargs = self.get_params_for(prefix)
        kwargs.setdefault("batch_size", self.batch_size)
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        kwargs.setdefault("shuffle", training)
        kwargs.setdefault("device", self.device)
        if training and self._distributed_run() is not None:
            kwargs.update(num_replicas=world_size(), rank=rank())
        return kwargs

    def _autocast(self):
        return autocast(self.amp, self.device)

    def _attack_module(self, attack, x):
        """The module the training attack runs on: ``module_``, or it with batch
        norm folded (``fold_batchnorm``) for an input-gradient attack."""
        fold = self.fold_batchnorm
        if fold == "auto":
            fold = torch.device(self.device).type == "cuda"
        if fold and getattr(attack, "_input_gradients_only", False):
            return folded(self.module_, example=x)
        return self.module_

    def _graphs_on(self):
        """Whether the training attack runs through CUDA graphs (``cuda_graphs``)."""
        if self.cuda_graphs == "auto":
            return not self.compile and torch.device(self.device).type == "cuda"
        return bool(self.cuda_graphs)

    def infer(self, x, **fit_params):
        with self._autocast():
            out = super().infer(x, **fit_params)
        # logits come out of autocast in bfloat16 (float16): predict_proba would hand them
        # to numpy, which has no such type, and the loss is better taken in float32
        if torch.is_tensor(out) and out.dtype in (torch.bfloat16, torch.float16):
            out = out.float()
        return out

    def train_step_single(self, batch, **fit_params):
        """One training step on the adversarial version of ``batch``.

        The attack (if any) runs first, with the module in eval mode (see the
        class docstring); then the module is put in train mode, the loss on the
        adversarial batch is computed and back-propagated.

        Parameters
        ----------
        batch : tuple
            ``(X, y)`` from the iterator.
        **fit_params
            Passed to the module's ``forward``.

        Returns
        -------
        step : dict
            ``{"loss": loss, "y_pred": logits}``.
        """
        Xi, yi = unpack_data(batch)
        Xi = to_tensor(Xi, device=self.device)
        yi = to_tensor(yi, device=self.device)
        # data-parallel: the rows of the global batch this rank holds; inside
        # the block per-sample draws are the global batch's, sliced
        shard = getattr(batch, "shard", None)
        with batch_shard(shard):
            objective = self.objective_
            # an objective that ignores the adversarial batch (TRADES with beta=0)
            # skips the attack: the step is then exactly a clean training step
            attack = self.attack_ if objective.needs_adv else None
            X_adv = Xi
            if attack is not None:
                # the unwrapped module, on this rank's shard: attacks take
                # gradients w.r.t. the input only, so nothing is all-reduced
                with self._autocast(), cuda_graphs(self._graphs_on()):
                    if isinstance(attack, Attack):
                        X_adv = attack.train_perturb(self._attack_module(attack, Xi), Xi, yi)
                    else:  # in eval mode, as Attack objects run (batch norm, dropout)
                        with eval_mode(self.module_):
                            X_adv = attack(self.module_, Xi, yi)
            self._set_training(True)
            # adversarial weight perturbation: the gradient is taken at perturbed
            # weights (in data-parallel training every rank perturbs by the
            # global batch's weight gradient, all-reduced inside AWP.perturb)
            if self.awp_ is not None:
                self.awp_.perturb(self, Xi, X_adv, yi, **fit_params)
            if isinstance(attack, Attack):
                attack.before_training_forward(self.module_)
            y_pred = self._train_forward(X_adv, **fit_params)
            logits_clean = None
            if objective.needs_clean:
                logits_clean = y_pred if X_adv is Xi else self.infer(Xi, **fit_params)
            loss = objective.loss(self, y_pred, yi, logits_clean)
            if isinstance(attack, Attack):
                with self._autocast():
                    extra = attack.regularizer(self.module_, Xi, X_adv, yi, y_pred)
                if extra is not None:
                    loss = loss + extra
            # DistributedDataParallel averages gradients over ranks; weighting
            # each rank's mean loss by its share makes that average the gradient
            # of the global batch's mean loss, also for uneven shards
            inputs = None
            if X_adv is not Xi and torch.is_tensor(X_adv) and X_adv.requires_grad:
                # the attack keeps a graph to its batch (GeneratorSynth's shared
                # generator step): back-propagate to the weights only, which
                # skips the first layer's gradient with respect to the batch
                inputs = [p for _, p in self.get_all_learnable_params() if p.requires_grad] or None
            (loss if shard is None else loss * shard.weight).backward(inputs=inputs)
            if self.awp_ is not None:
                self.awp_.restore(self)  # the weights go back exactly; the gradient stays
        return {"loss": loss, "y_pred": y_pred}

    def _train_forward(self, x, **fit_params):
        """The training forward pass: through DistributedDataParallel in a
        data-parallel fit (so that the backward pass all-reduces gradients),
        else :meth:`infer`."""
        run = self._distributed_run()
        if run is None or run.ddp is None:
            return self.infer(x, **fit_params)
        x = to_tensor(x, device=self.device)
        with self._autocast():
            if isinstance(x, Mapping):
                return run.ddp(**self._merge_x_and_fit_params(x, fit_params))
            return run.ddp(x, **fit_params)

    #: Training batches between two checks of the batch losses (one host-device
    #: synchronization each, and one all-reduce in data-parallel training).
    loss_check_every = 50

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        """One pass over ``iterator``, with the batch losses kept on the device.

        skorch's version reads ``loss.item()`` after every batch, a
        host-device synchronization that stalls the GPU's queue. Here the
        losses stay on the device and are read every ``loss_check_every``
        batches and at the end of the epoch; they are then written into the
        batch rows of the history (``train_loss``/``valid_loss``, as skorch
        records them), so the epoch's ``train_loss`` keeps its meaning. In
        data-parallel training the batch losses (and ``train_batch_size``)
        are those of the global batch, reduced across ranks.

        A non-finite training loss stops training with a ``ValueError`` naming
        the epoch and the batch (see :meth:`_check_losses`).

        Parameters
        ----------
        iterator : iterable or None
            The batches; ``None`` skips the pass.
        training : bool
            Training or validation pass.
        prefix : str
            ``"train"`` or ``"valid"``, for the history keys.
        step_fn : callable
            ``step_fn(batch, **fit_params) -> {"loss": ..., ...}``.
        **fit_params
            Passed to ``step_fn``.
        """
        if iterator is None:
            return
        rows = self.history[-1]["batches"]
        first_row = len(rows)
        pending = []  # (row, loss tensor) not yet read
        count = 0
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            shard = getattr(batch, "shard", None)
            loss = step["loss"].detach().float().reshape(())
            if shard is None:
                size = get_len(batch[0]) if isinstance(batch, (tuple, list)) else get_len(batch)
            else:  # this rank's part of the global batch's mean loss
                size, loss = shard.total, loss * (shard.size / shard.total)
            pending.append((count, loss))
            self.history.record_batch(prefix + "_batch_size", size)
            self.notify("on_batch_end", batch=batch, training=training, **step)
            count += 1
            if training and len(pending) >= self.loss_check_every:
                self._check_losses(pending, prefix, first_row, training)
                pending = []
        self._check_losses(pending, prefix, first_row, training)
        if training and count == 0:
            n = getattr(getattr(iterator, "real", iterator), "n", None)
            raise ValueError(
                f"the training pass of epoch {len(self.history)} had no batch: "
                f"{'the' if n is None else n} training samples make no batch of "
                f"batch_size={self.batch_size} (iterator_train__drop_last=True with a batch_size "
                "above the training split's size?); use a smaller batch_size or drop_last=False")
        self.history.record(prefix + "_batch_count", count)
        if training:
            self._average_buffers()  # data-parallel: every rank validates the same model

    def _check_losses(self, pending, prefix, first_row, training):
        """Read the pending ``(batch index, loss)`` pairs (one synchronization),
        record them in the batch rows from ``first_row`` on, and stop on a
        non-finite training loss."""
        if not pending:
            return
        values = torch.stack([loss for _, loss in pending])
        if training and self._distributed_run() is not None:
            values = all_reduce_sum(values)  # global batch means, the same on every rank
        values = values.cpu().tolist()
        rows = self.history[-1]["batches"]
        for (index, _), value in zip(pending, values):
            rows[first_row + index][prefix + "_loss"] = value
        bad = [i for i, v in enumerate(values) if not np.isfinite(v)]
        if training and bad:
            index, _ = pending[bad[0]]
            raise ValueError(self._divergence_message(values[bad[0]], index + 1))

    def _divergence_message(self, value, batch):
        epoch = len(self.history)
        att = self.attack
        eps = getattr(att, "epsilon", None)
        hints = [f"a learning rate too high (lr={self.lr!r}: try a smaller one)"]
        if eps is not None:
            hints.append(
                f"an attack budget too large for its warm-up (epsilon={eps!r}, "
                f"attack_warmup={self.attack_warmup!r}: ramp epsilon over more epochs)")
        hints.append("bad data (values far outside the attack's bounds, mislabelled "
                     "or degenerate samples), or a module that overflows")
        return (
            f"the training loss became {value} at epoch {epoch}, batch {batch}; training "
            f"stopped, since the parameters are no longer finite. Likely causes: "
            + "; ".join(hints) + "."
        )

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_end(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)
        objective = getattr(self, "objective_", None)
        if objective is not None:
            for key, value in objective.on_epoch_end().items():
                self.history.record(key, value)

def _encoded_accuracy(net, X, y):
    """Accuracy on skorch's validation data, whose labels are class indices."""
    y_pred = net.predict_proba(X).argmax(axis=1)
    return float(np.mean(y_pred == to_numpy(y)))
