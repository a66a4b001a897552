"""Saving, loading and resuming an :class:`~robustfit.AdversarialClassifier`.

The methods of :class:`SavingMixin` are the classifier's own (it inherits
them); they live here so that ``classifier.py`` stays the training glue.
Everything is written as JSON plus tensors and read back with
``torch.load(weights_only=True)`` (:mod:`robustfit._persist`): nothing
robustfit reads from disk can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings

import numpy as np
import torch
from skorch.callbacks import Checkpoint, LoadInitState, TrainEndCheckpoint
from skorch.exceptions import DeviceWarning
from skorch.history import History

from ._persist import (
    UnsupportedValue,
    atomic_write,
    class_path,
    decode,
    encode,
    fitted_state,
    import_class,
    load_payload,
    save_payload,
    set_fitted_state,
)
from ._utils import GLOBAL_RNG_LOCK, current_source, torch_seeded
from .attacks._base import Attack
from .callbacks import _callback_states, _load_callback_states
from .losses import AdversarialCE


class SavingMixin:
    """``save``/``load``, the fitted state, and the training state of a
    checkpoint (what skorch's ``Checkpoint`` files lack), for
    :class:`~robustfit.AdversarialClassifier`."""

    def get_fitted_state(self):
        """Everything ``fit`` learned, as plain values, tensors and parameter objects.

        The weights, optimizer and criterion states (``state_dict()`` of
        each), the history, the classes and input shape, the fitted attack,
        objective and proxy (with their own fitted state) and the proxy pool.
        :meth:`save` writes it without pickle; :meth:`set_fitted_state`
        restores it.

        Returns
        -------
        state : dict
            Empty for an unfitted classifier.
        """
        if not getattr(self, "initialized_", False) or not hasattr(self, "classes_inferred_"):
            return {}
        return {
            "classes_inferred_": np.asarray(self.classes_inferred_),
            "input_shape_": tuple(self.input_shape_),
            "history": _history_json(self.history),
            "schedule_origin_": int(getattr(self, "schedule_origin_", 0)),
            "module_": self.module_.state_dict(),
            "optimizer_": _state_dict(getattr(self, "optimizer_", None)),
            "criterion_": _state_dict(getattr(self, "criterion_", None)),
            "attack_": getattr(self, "attack_", None),
            "objective_": getattr(self, "objective_", None),
            "proxy_": getattr(self, "proxy_", None),
            "proxy_X_": getattr(self, "proxy_X_", None),
            "proxy_y_": getattr(self, "proxy_y_", None),
            "callback_weights_": _callback_states(self),
        }

    def set_fitted_state(self, state):
        """Restore the state of :meth:`get_fitted_state`: the classifier is then fitted.

        The network is built from the parameters (and, for ``module=None``,
        from the saved input shape and classes), then its weights, the
        optimizer and the history are loaded, so ``predict``, ``robust_score``
        and ``partial_fit`` work at once.

        Parameters
        ----------
        state : dict
            From :meth:`get_fitted_state`.

        Returns
        -------
        self : AdversarialClassifier
        """
        if not state:
            return self
        self.classes_inferred_ = np.asarray(state["classes_inferred_"])
        self.input_shape_ = tuple(int(d) for d in state["input_shape_"])
        self.n_features_in_ = int(np.prod(self.input_shape_))
        for name in ("attack", "objective"):
            setattr(self, name + "_", state.get(name + "_"))
            value = getattr(self, name)
            setattr(self, name + "_params_", value.get_params() if hasattr(value, "get_params") else None)
        if self.objective_ is None:
            self.objective_ = AdversarialCE()
        self.proxy_ = state.get("proxy_")
        self.proxy_X_, self.proxy_y_ = state.get("proxy_X_"), state.get("proxy_y_")
        self.proxy_refit_ = False
        # weight init of the network about to be overwritten: from a fork, so
        # loading leaves torch's global generator alone
        with GLOBAL_RNG_LOCK, torch_seeded(0):
            self.initialize()
        extra = [a for a in ("attack_", "objective_", "proxy_") if a not in self.cuda_dependent_attributes_]
        self.cuda_dependent_attributes_ = list(self.cuda_dependent_attributes_) + extra
        self._load_states(state)
        _load_callback_states(self, state.get("callback_weights_"))
        self.schedule_origin_ = int(state.get("schedule_origin_", 0))
        return self

    def _load_states(self, state):
        self.module_.load_state_dict(state["module_"])
        for name in ("optimizer_", "criterion_"):
            if state.get(name) is not None and getattr(self, name, None) is not None:
                getattr(self, name).load_state_dict(state[name])
        self.history = History(json.loads(state["history"]))

    def save(self, path):
        """Write the fitted classifier to ``path``, without pickle.

        One file, read back by :meth:`load` with
        ``torch.load(weights_only=True)``: the parameters as JSON (classes,
        such as ``module=MyNet``, by import path), the weights, optimizer
        state and history, and the fitted attack, objective and proxy with
        their state (a generator and its optimizer, the dual variable, the
        proxy pool) as tensors. See :doc:`/persistence`.

        Parameters
        ----------
        path : str, os.PathLike or file-like
            Target file; a path is written atomically (a temporary file, then
            a rename).

        Returns
        -------
        self : AdversarialClassifier

        Raises
        ------
        ValueError
            For a parameter that has no description without pickle, naming it:
            a module given as an instance (pass the class and ``module__*``
            arguments), a lambda or a function, an object array. A fitted
            proxy whose state cannot be written is left out with a warning
            (its samples, which training uses, are kept).

        Examples
        --------
        >>> import os, tempfile
        >>> from robustfit import AdversarialClassifier
        >>> from robustfit.attacks import PGD
        >>> from robustfit.datasets import load_digits_images
        >>> X, y = load_digits_images()
        >>> clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=3), max_epochs=1,
        ...                             random_state=0).fit(X[:200], y[:200])
        >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
        >>> _ = clf.save(path)
        >>> loaded = AdversarialClassifier.load(path)
        >>> bool((loaded.predict(X[:50]) == clf.predict(X[:50])).all())
        True
        """
        self._check_fitted()
        if isinstance(self.module, torch.nn.Module) or not (
                self.module is None or isinstance(self.module, type)):
            raise ValueError(
                f"cannot save {type(self).__name__}(module={self.module!r}) without pickle: the "
                "module must be None or a torch.nn.Module class (importable by name, with its "
                "arguments as module__*); a module instance or a factory function has no "
                "description a loader could rebuild without running stored code"
            )
        tensors = {}
        params = {k: v for k, v in self.get_params(deep=False).items() if not k.startswith("_")}
        state = self.get_fitted_state()
        proxy = state.pop("proxy_", None)
        spec = {
            "class": class_path(type(self), "the classifier"),
            "params": encode(params, tensors, "parameter"),
            "fitted": encode(state, tensors, "fitted state"),
        }
        try:
            spec["proxy_"] = encode(proxy, tensors, "proxy_")
        except UnsupportedValue as exc:
            warnings.warn(f"save: proxy_ is left out ({exc}); the proxy samples proxy_X_ and "
                          "proxy_y_, which training uses, are saved", UserWarning, stacklevel=2)
            spec["proxy_"] = None
        save_payload("model", spec, tensors, path)
        return self

    @classmethod
    def load(cls, path, *, trusted_modules=(), device=None):
        """Load a classifier written by :meth:`save`, without unpickling.

        The file is read with ``torch.load(weights_only=True)``, which builds
        tensors and plain values only, so the file cannot run code. Classes it
        names (``module=MyNet``, the attack's class, ...) are imported by name
        and accepted only if they are torch modules, optimizers or datasets,
        scikit-learn estimators, skorch callbacks or robustfit classes; a
        module not yet imported is imported only when it belongs to robustfit,
        torch, torchvision, skorch, scikit-learn, numpy, scipy or diffusers,
        or is named in ``trusted_modules``.

        Nor can the file choose where robustfit writes files later, or which
        checkpoint or cache it loads: the parameters that would let it are not
        restored, with a warning naming them. These are callbacks that read or
        write files (skorch's ``Checkpoint``, ``TrainEndCheckpoint`` and
        ``LoadInitState``, :class:`~robustfit.callbacks.ResumableCheckpoint`,
        any callback with a ``dirname``, ``f_*`` or ``checkpoint``
        parameter), in ``callbacks`` or as ``callbacks__<name>``: a later
        ``partial_fit`` would load from, or write to, the folder the file
        names; ``proxy_memory`` (a cache folder robustfit reads and writes);
        and ``torch_load_kwargs`` that turn off ``weights_only`` (a later load
        of a checkpoint could then unpickle). Add your own back with
        ``set_params``. A ``proxy_data=ArrayProxy(path=...)`` is kept: it
        names arrays that a later fresh ``fit`` reads with
        ``numpy.load(allow_pickle=False)``.

        Parameters
        ----------
        path : str, os.PathLike or file-like
            The file.
        trusted_modules : sequence of str, default=()
            Further modules (or top-level packages) whose classes the file may
            name although they are not imported yet, e.g. ``["mynets"]``.
        device : str, torch.device or None, default=None
            Where to put the loaded classifier (its ``device`` parameter).
            ``None`` keeps the saved one, except that a model saved on a CUDA
            device loads on the CPU, with a warning, where there is no GPU
            (as an unpickled one does).

        Returns
        -------
        clf : AdversarialClassifier
            Fitted: ``predict``, ``robust_score`` and ``partial_fit`` work at once.

        Raises
        ------
        ValueError
            When the file holds pickled objects (refused; nothing runs), is
            corrupt or of another kind, or names a class that is not allowed.

        Examples
        --------
        >>> from robustfit import AdversarialClassifier
        >>> AdversarialClassifier.load("model.pt")  # doctest: +SKIP
        """
        spec, tensors = load_payload(path, "model", "saved model")
        if not isinstance(spec, dict) or not {"class", "params", "fitted"} <= set(spec):
            raise ValueError(f"the saved model {path} is malformed")
        klass = import_class(spec["class"], "the saved model", (SavingMixin,), trusted_modules)
        if not issubclass(klass, cls):
            raise ValueError(f"the saved model {path} holds a {klass.__name__}, not a {cls.__name__}")
        params = decode(spec["params"], tensors, "saved parameter", trusted_modules)
        if not isinstance(params, dict):
            raise ValueError(f"the saved model {path} is malformed (parameters)")
        params = _without_file_access(params, path)
        if device is not None:
            params["device"] = device
        elif _wants_missing_cuda(params.get("device")):
            warnings.warn(
                f"the saved model {path} was trained on device={params['device']!r}, but no CUDA "
                "GPU is available here: loading it on the CPU (pass device=... to choose)",
                DeviceWarning, stacklevel=2)
            params["device"] = "cpu"
        est = klass(**params)
        est.validate_params()
        state = decode(spec["fitted"], tensors, "saved fitted state", trusted_modules)
        state["proxy_"] = decode(spec.get("proxy_"), tensors, "saved proxy_", trusted_modules)
        return est.set_fitted_state(state)

    def save_params(self, f_params=None, f_optimizer=None, f_criterion=None, f_history=None,
                    use_safetensors=False, **kwargs):
        """skorch's ``save_params``, written atomically, plus robustfit's training state.

        Each file given as a path is written under a temporary name and renamed
        over the target, so a process killed while saving leaves the previous
        file intact. With ``f_params`` (or ``f_module``, the name skorch's
        ``Checkpoint`` uses) given as a path, the training state that
        skorch's files lack is written next to it, as
        ``<f_params stem>.train_state.pt`` (:func:`training_state_path`): the
        weights, optimizer state and history of the same moment, the fitted
        attack and objective state (a generator, the dual variable), a digest
        of the proxy pool, and the random number generators' states. skorch's
        ``Checkpoint`` calls this method, so its checkpoints carry the state;
        :meth:`load_params` (and so ``LoadInitState``) restores it.

        Parameters
        ----------
        f_params, f_optimizer, f_criterion, f_history : str, os.PathLike, file-like or None
            As in skorch.
        use_safetensors : bool, default=False
            As in skorch.
        **kwargs
            Further ``f_*`` targets, as in skorch.
        """
        weights = f_params if f_params is not None else kwargs.get("f_module")  # Checkpoint's name
        if _is_path(weights) and getattr(self, "initialized_", False):
            self.save_training_state(training_state_path(weights))
        files = {"f_params": f_params, "f_optimizer": f_optimizer, "f_criterion": f_criterion,
                 "f_history": f_history, **kwargs}
        parent = super()
        for name, target in files.items():
            if target is None:
                continue
            if not _is_path(target):
                parent.save_params(**{name: target}, use_safetensors=use_safetensors)
            elif name == "f_history":
                text = _history_json(self.history).encode()
                atomic_write(target, lambda f, text=text: f.write(text))
            else:
                atomic_write(target, lambda f, name=name: parent.save_params(
                    **{name: f}, use_safetensors=use_safetensors))

    def save_training_state(self, path):
        """Write the state a resumed ``fit`` needs beyond skorch's files, without pickle.

        :meth:`save_params` calls this for skorch's ``Checkpoint``; call it
        directly to checkpoint by hand. Restored by :meth:`load_training_state`.

        Parameters
        ----------
        path : str or os.PathLike
            Target file (written atomically).

        Returns
        -------
        self : AdversarialClassifier
        """
        source = current_source()
        rng = {
            "source": None if source is None else source.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": (list(torch.cuda.get_rng_state_all())
                     if torch.cuda.is_available() and torch.cuda.is_initialized() else []),
        }
        proxy = None
        if getattr(self, "proxy_X_", None) is not None:
            proxy = {"digest": _pool_digest(self.proxy_X_, self.proxy_y_)}
            if self.random_state is None:  # not rebuilt identically: keep the samples
                proxy.update(X=self.proxy_X_, y=self.proxy_y_)
        attack = getattr(self, "attack_", None)
        objective = getattr(self, "objective_", None)
        state = {
            "history": _history_json(self.history),
            "module_": self.module_.state_dict(),
            "optimizer_": _state_dict(getattr(self, "optimizer_", None)),
            "criterion_": _state_dict(getattr(self, "criterion_", None)),
            "attack_": None if not isinstance(attack, Attack) else
            {"class": class_path(type(attack)), "state": fitted_state(attack)},
            "objective_": None if objective is None else
            {"class": class_path(type(objective)), "state": fitted_state(objective)},
            "proxy": proxy,
            "rng": rng,
            "callback_weights": _callback_states(self),
            "callback_states": _callback_states(self, "resume_state"),
        }
        tensors = {}
        save_payload("checkpoint", encode(state, tensors, "training state"), tensors, path)
        return self

    def load_training_state(self, path):
        """Restore what :meth:`save_training_state` wrote into an initialized classifier.

        The weights, optimizer, criterion and history are replaced, and the
        fitted attack and objective get their state back. Loaded while a
        ``fit`` or ``partial_fit`` starts (by ``LoadInitState`` or
        :class:`~robustfit.callbacks.ResumableCheckpoint`), the random number
        generators of that call are restored when its first epoch begins, and
        the proxy pool it builds is checked against the checkpoint's, so the
        run continues exactly.

        Parameters
        ----------
        path : str or os.PathLike
            The file.

        Returns
        -------
        self : AdversarialClassifier

        Raises
        ------
        ValueError
            When the file holds pickled objects (refused; nothing runs), is
            corrupt, or is not a training state.
        """
        spec, tensors = load_payload(path, "checkpoint", "checkpoint training state")
        state = decode(spec, tensors, "checkpoint training state")
        if not getattr(self, "initialized_", False):
            self.initialize()
        self._load_states(state)
        _load_callback_states(self, state.get("callback_weights"))
        _load_callback_states(self, state.get("callback_states"), "load_resume_state")
        for name in ("attack_", "objective_"):
            saved, current = state.get(name), getattr(self, name, None)
            if saved is None or current is None:
                continue
            if saved["class"] != class_path(type(current)):
                warnings.warn(f"the checkpoint's {name} is a {saved['class']}, this run's a "
                              f"{type(current).__name__}: its state is not restored",
                              UserWarning, stacklevel=2)
                continue
            set_fitted_state(current, saved["state"], f"checkpoint {name}")
        self._resume_rng_ = state["rng"]
        if state.get("proxy") is not None:
            self._resume_proxy_ = state["proxy"]
        self._restore_best_scores()
        return self

    def load_params(self, f_params=None, f_optimizer=None, f_criterion=None, f_history=None,
                    checkpoint=None, use_safetensors=False, **kwargs):
        """skorch's ``load_params``, plus robustfit's training state when there is one.

        After skorch has loaded its files (tensors only:
        ``torch.load(weights_only=True)`` unless ``torch_load_kwargs`` says
        otherwise), the training state :meth:`save_params` wrote next to
        ``f_params`` is restored with :meth:`load_training_state`; it
        supersedes skorch's files, so a checkpoint whose files were written
        in different epochs (a kill while saving) is restored consistently.

        Parameters
        ----------
        f_params, f_optimizer, f_criterion, f_history : str, os.PathLike, file-like or None
            As in skorch.
        checkpoint : skorch.callbacks.Checkpoint or None, default=None
            As in skorch; ``LoadInitState`` passes its checkpoint.
        use_safetensors : bool, default=False
            As in skorch.
        **kwargs
            Further ``f_*`` sources, as in skorch.
        """
        device = self.__dict__.get("device")
        try:
            super().load_params(f_params=f_params, f_optimizer=f_optimizer, f_criterion=f_criterion,
                                f_history=f_history, checkpoint=checkpoint,
                                use_safetensors=use_safetensors, **kwargs)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(
                "refused to load a checkpoint file: it holds Python objects that only an "
                "unrestricted unpickler could build, and unpickling can run code; nothing of it "
                f"was executed. Delete the checkpoint. (torch: {first})"
            ) from None
        finally:
            self.__dict__["device"] = device  # skorch resolves it; keep "auto" as given
        target = f_params
        if target is None and checkpoint is not None and getattr(checkpoint, "f_params", None):
            target = checkpoint.get_formatted_files(self).get("f_params")
        if _is_path(target):
            path = training_state_path(target)
            if os.path.exists(path):
                self.load_training_state(path)
                return
            if checkpoint is not None:
                warnings.warn(
                    f"the checkpoint has no robustfit training state ({path}): the weights, "
                    "optimizer and history are restored, but not the attack's or the "
                    "objective's state nor the random number generators",
                    UserWarning, stacklevel=2,
                )
        self._restore_best_scores()

    def _restore_best_scores(self):
        # skorch's scoring callbacks remember their best score; they look it up
        # in the history before LoadInitState has loaded it (or never), so the
        # first resumed epoch would count as "best": set it from the history
        for _, cb in getattr(self, "callbacks_", []):
            name = getattr(cb, "name_", None) or getattr(cb, "name", None)
            if getattr(cb, "lower_is_better", None) is None or not hasattr(cb, "best_score_") \
                    or not isinstance(name, str):
                continue
            for row in reversed(self.history):
                if row.get(name + "_best") is True and name in row:
                    cb.best_score_ = row[name]
                    break

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        rng = self.__dict__.pop("_resume_rng_", None)
        if rng is not None:  # the first epoch after a restored checkpoint
            _restore_rng(rng)
        # then the data-parallel hook, which reseeds torch's global generator per rank
        super().on_epoch_begin(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)


def _wants_missing_cuda(device):
    try:
        return torch.device(device).type == "cuda" and not torch.cuda.is_available()
    except (TypeError, RuntimeError):  # "auto", None: resolved at fit
        return False


_FILE_CALLBACKS = (Checkpoint, TrainEndCheckpoint, LoadInitState)


def _names_a_file(key):
    """Whether a (nested) parameter name is one through which a callback reads or
    writes files: ``dirname``, ``f_*`` or a ``checkpoint`` to load from."""
    last = key.rsplit("__", 1)[-1]
    return last in ("dirname", "checkpoint") or last.startswith("f_")


def _touches_files(callback):
    """Whether a skorch callback (an instance or a class) reads or writes files."""
    if isinstance(callback, type):
        return issubclass(callback, _FILE_CALLBACKS)
    if isinstance(callback, _FILE_CALLBACKS):
        return True
    try:
        names = callback.get_params(deep=True)
    except Exception:  # not a skorch callback: judged by its attributes
        names = vars(callback)
    return any(_names_a_file(key) for key in names)


def _without_file_access(params, path):
    """The loaded parameters minus what would let the file pick files robustfit
    reads or writes later (see :meth:`SavingMixin.load`): callbacks that read
    or write files, given in ``callbacks`` or as ``callbacks__<name>`` (and
    ``callbacks__<name>__dirname`` and the like), the proxy cache folder, and
    ``torch_load_kwargs`` without ``weights_only``."""
    params = dict(params)
    dropped = []
    callbacks = params.get("callbacks")
    if isinstance(callbacks, (list, tuple)):
        kept = []
        for item in callbacks:
            cb = item[1] if isinstance(item, tuple) and len(item) == 2 else item
            if _touches_files(cb):
                name = item[0] if cb is not item else type(cb).__name__
                kind = cb.__name__ if isinstance(cb, type) else type(cb).__name__
                dropped.append(f"callback {name!r} ({kind}, reads or writes files)")
            else:
                kept.append(item)
        params["callbacks"] = kept
    for key in [k for k in params if k.startswith("callbacks__")]:
        value = params[key]
        if _names_a_file(key) or (value is not None and not isinstance(value, (str, int, float, bool))
                                  and _touches_files(value)):
            dropped.append(f"{key} (reads or writes files)")
            del params[key]
    if params.get("proxy_memory") is not None:
        dropped.append(f"proxy_memory={params['proxy_memory']!r} (a folder robustfit reads and "
                       "writes)")
        params["proxy_memory"] = None
    kwargs = params.get("torch_load_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("weights_only", True) is not True:
        dropped.append(f"torch_load_kwargs={kwargs!r} (would let later loads unpickle)")
        params["torch_load_kwargs"] = None
    if dropped:
        warnings.warn(
            f"the saved model {path} sets parameters a file must not choose; not restored: "
            + "; ".join(dropped) + ". Set your own with set_params(...)",
            UserWarning, stacklevel=3)
    return params


def training_state_path(f_params):
    """Where :meth:`AdversarialClassifier.save_params` puts the training state for ``f_params``.

    Parameters
    ----------
    f_params : str or os.PathLike
        The parameters' file, e.g. ``"run/params.pt"``.

    Returns
    -------
    path : str
        The same name with ``.train_state`` before the extension, e.g.
        ``"run/params.train_state.pt"``.

    Examples
    --------
    >>> from robustfit.classifier import training_state_path
    >>> training_state_path("run/params.pt")
    'run/params.train_state.pt'
    """
    root, ext = os.path.splitext(os.fspath(f_params))
    return f"{root}.train_state{ext or '.pt'}"


def _is_path(target):
    return isinstance(target, (str, os.PathLike))


def _state_dict(obj):
    return None if obj is None or not hasattr(obj, "state_dict") else obj.state_dict()


def _history_json(history):
    def plain(value):
        if isinstance(value, np.generic):
            return value.item()
        if torch.is_tensor(value):
            return value.item() if value.numel() == 1 else value.tolist()
        raise TypeError(f"the history holds a {type(value).__name__}, which JSON cannot store")

    return json.dumps(history.to_list(), default=plain)


def _pool_digest(X, y):
    h = hashlib.sha256()
    for t in (X, y):
        t = torch.as_tensor(t).detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _restore_rng(rng):
    source = current_source()
    if rng.get("source") and source is not None:
        source.set_state(rng["source"])
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
