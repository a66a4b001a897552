"""Saving and loading without pickle, resuming in-process, and files that must not run code.

* ``clf.save(path)`` / ``AdversarialClassifier.load(path)`` in a fresh process: predict,
  robust_score and partial_fit work at once, with the module given as a class or as None, and
  with the fitted attack, objective and proxy state.
* Every place robustfit reads from disk (a saved model, a checkpoint's files, the proxy cache,
  an ArrayProxy ``.npz``) gets a planted pickle whose unpickling would create a file: nothing
  is created, and the error says what was refused.
* ``ResumableCheckpoint`` resumes a run interrupted mid-epoch to the uninterrupted result.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback, Checkpoint, LoadInitState

from robustfit import AdversarialClassifier
from robustfit.attacks import PGD, GeneratorSynth, Langevin
from robustfit.callbacks import ResumableCheckpoint
from robustfit.classifier import training_state_path
from robustfit.losses import PrimalDual
from robustfit.models import MLP, DigitsCNN, MnistCNN, ResNet18, SmallCNN
from robustfit.proxy import ArrayProxy, DiffusionProxy, GaussianMixtureProxy
from robustfit.recipes import EMA

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.one_thread  # see conftest.py


@pytest.fixture(scope="module")
def data(digits):
    X, y = digits
    return X[:300], y[:300], X[1500:1600], y[1500:1600]


def _run(code, *paths, timeout=300):
    """Run ``code`` in a fresh interpreter (robustfit from this checkout); return stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *map(str, paths),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# --------------------------------------------------------------------------- save / load
def test_save_and_load_in_a_fresh_process(data, tmp_path):
    Xtr, ytr, Xte, yte = data
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                       "nine"])[ytr]  # string labels round-trip too
    synth = AdversarialClassifier(
        MLP, module__hidden=(32,), attack=GeneratorSynth(epsilon=0.1, latent_dim=8),
        max_epochs=2, batch_size=64, random_state=0, device="cpu").fit(Xtr, labels)
    dale = AdversarialClassifier(
        attack=Langevin(epsilon=0.1, steps=2, temperature=1e-3),
        objective=PrimalDual(dual_lr=0.05, nu_init=1.0),
        proxy_data=GaussianMixtureProxy(pca_components=8, mixture_components=1),
        max_epochs=2, batch_size=64, random_state=0, device="cpu").fit(Xtr, ytr)
    np.save(tmp_path / "X.npy", Xte)
    np.save(tmp_path / "y.npy", yte)
    expected = {}
    for name, clf, y in (("synth", synth, labels[:100]), ("dale", dale, yte)):
        clf.save(tmp_path / f"{name}.pt")
        expected[name] = {
            "proba": clf.predict_proba(Xte).tolist(),
            "robust": clf.robust_score(Xte, y, attack=PGD(epsilon=0.1, steps=3), check=False),
        }
    np.save(tmp_path / "labels.npy", labels[:100])
    out = _run(f"""
        import json, numpy as np, torch
        torch.set_num_threads(1)
        from robustfit import AdversarialClassifier
        from robustfit.attacks import PGD
        X, y, labels = (np.load(r"{tmp_path}/" + n + ".npy") for n in ("X", "y", "labels"))
        out = {{}}
        for name, yy in (("synth", labels), ("dale", y)):
            clf = AdversarialClassifier.load(r"{tmp_path}/" + name + ".pt")
            row = {{"proba": clf.predict_proba(X).tolist(),
                   "robust": clf.robust_score(X, yy, attack=PGD(epsilon=0.1, steps=3), check=False),
                   "module": getattr(clf.module, "__name__", None),
                   "pred": clf.predict(X[:3]).tolist(), "epochs": len(clf.history)}}
            if name == "synth":
                row["generator_steps"] = clf.attack_.n_generator_steps_
            else:
                row["nu"] = clf.objective_.nu_
                row["pool"] = int(len(clf.proxy_X_))
                row["proxy"] = type(clf.proxy_).__name__
            clf.partial_fit(X, yy)  # continues training at once
            row["epochs_after"] = len(clf.history)
            out[name] = row
        print(json.dumps(out))
    """)
    got = json.loads(out.strip().splitlines()[-1])
    for name in ("synth", "dale"):
        assert np.allclose(got[name]["proba"], expected[name]["proba"], atol=1e-6)
        assert got[name]["robust"] == expected[name]["robust"]
        assert got[name]["epochs"] == 2 and got[name]["epochs_after"] == 4
    assert got["synth"]["module"] == "MLP"
    assert got["synth"]["pred"] == synth.predict(Xte[:3]).tolist()  # string labels
    assert got["synth"]["generator_steps"] == synth.attack_.n_generator_steps_ > 0
    assert got["dale"]["module"] is None
    assert got["dale"]["nu"] == pytest.approx(dale.objective_.nu_, abs=1e-6)
    assert got["dale"]["nu"] != 1.0
    assert got["dale"]["pool"] == len(dale.proxy_X_) and got["dale"]["proxy"] == "GaussianMixtureProxy"


def test_load_imports_a_user_module_only_when_trusted(data, tmp_path):
    Xtr, ytr, Xte, _ = data
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "usernets_rf.py").write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self, n_classes=10, width=16):
                super().__init__()
                self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width),
                                                torch.nn.ReLU(), torch.nn.Linear(width, n_classes))
            def forward(self, x):
                return self.body(x)
    """))
    sys.path.insert(0, str(package))
    try:
        import usernets_rf

        clf = AdversarialClassifier(usernets_rf.Net, module__width=8, max_epochs=1,
                                    random_state=0, device="cpu").fit(Xtr, ytr)
        clf.save(tmp_path / "user.pt")
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("usernets_rf", None)
    expected = clf.predict(Xte).tolist()
    np.save(tmp_path / "X.npy", Xte)
    out = _run(f"""
        import json, numpy as np
        from robustfit import AdversarialClassifier
        try:
            AdversarialClassifier.load(r"{tmp_path}/user.pt")
        except ValueError as exc:
            print("refused:", exc)
        clf = AdversarialClassifier.load(r"{tmp_path}/user.pt", trusted_modules=["usernets_rf"])
        X = np.load(r"{tmp_path}/X.npy")
        print(json.dumps(clf.predict(X).tolist()))
    """, package)
    lines = out.strip().splitlines()
    assert lines[0].startswith("refused:") and "usernets_rf" in lines[0] and "trusted_modules" in lines[0]
    assert json.loads(lines[-1]) == expected


def _square(n_classes=10):
    return MLP(n_features=64, n_classes=n_classes)


def test_save_refuses_what_has_no_description_without_pickle(data, tmp_path):
    Xtr, ytr, _, _ = data
    kwargs = dict(max_epochs=1, random_state=0, device="cpu")
    instance = AdversarialClassifier(MLP(n_features=64, n_classes=10), **kwargs).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="module instance or a factory function"):
        instance.save(tmp_path / "a.pt")
    factory = AdversarialClassifier(_square, **kwargs).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="module must be None or a torch.nn.Module class"):
        factory.save(tmp_path / "b.pt")
    scored = AdversarialClassifier(callbacks=[Checkpoint(monitor=lambda net: True,
                                                         dirname=str(tmp_path / "cp"))],
                                   **kwargs).fit(Xtr, ytr)
    with pytest.raises(ValueError, match=r"callbacks'\]\[0\].*monitor.*lambda"):
        scored.save(tmp_path / "c.pt")
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "c.pt").exists()


def test_save_is_atomic(data, tmp_path, monkeypatch):
    Xtr, ytr, _, _ = data
    clf = AdversarialClassifier(max_epochs=1, random_state=0, device="cpu").fit(Xtr, ytr)
    path = tmp_path / "model.pt"
    clf.save(path)
    before = path.read_bytes()

    def broken(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        clf.save(path)
    assert path.read_bytes() == before  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


# --------------------------------------------------------------------------- planted files
class _Payload:
    """Unpickling this creates ``path``: the proof that a loader ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(path, marker, kind="torch"):
    """Replace ``path`` by a malicious file: a torch zip or a raw pickle."""
    payload = {"format": "robustfit.model", "version": 1, "spec": "{}", "tensors": {},
               "boom": _Payload(marker)}
    if kind == "torch":
        torch.save(payload, path)
    else:
        Path(path).write_bytes(pickle.dumps(payload, protocol=2))


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_planted_saved_model_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    _plant(tmp_path / "model.pt", marker, kind)
    with pytest.raises(ValueError, match="refused to load the saved model"):
        AdversarialClassifier.load(tmp_path / "model.pt")
    assert not marker.exists()


def test_saved_model_of_another_kind_or_corrupt_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="is not a robustfit.model file"):
        AdversarialClassifier.load(tmp_path / "weights.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "weights.pt").read_bytes()[:40])
    with pytest.raises(ValueError, match="truncated, corrupt or not written by robustfit"):
        AdversarialClassifier.load(tmp_path / "cut.pt")


def test_saved_model_naming_a_function_or_a_foreign_class_is_refused(data, tmp_path):
    from robustfit._persist import load_payload, save_payload

    Xtr, ytr, _, _ = data
    AdversarialClassifier(max_epochs=1, random_state=0, device="cpu").fit(Xtr, ytr).save(
        tmp_path / "m.pt")
    spec, tensors = load_payload(tmp_path / "m.pt", "model", "saved model")
    params = dict(spec["params"]["__dict__"])
    for bad, match in (({"__class__": "subprocess:Popen"}, "not a class of an allowed kind"),
                       ({"__function__": "os:system"}, "may not name functions"),
                       ({"__class__": "antigravity_rf:Fly"}, "not imported")):
        changed = dict(params, module=bad)
        spec2 = dict(spec, params={"__dict__": [[k, v] for k, v in changed.items()]})
        save_payload("model", spec2, tensors, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=match):
            AdversarialClassifier.load(tmp_path / "bad.pt")


def test_saved_model_cannot_choose_files_read_or_written_later(data, tmp_path):
    """A file that names a checkpoint folder (LoadInitState) and loosens
    ``torch_load_kwargs`` would make a later ``partial_fit`` unpickle a file planted in
    that folder: both are dropped on load, with a warning, and nothing runs."""
    Xtr, ytr, _, _ = data
    evil = tmp_path / "evil"
    cp = Checkpoint(dirname=str(evil), f_optimizer=None, f_criterion=None, event_name=None)
    clf = AdversarialClassifier(max_epochs=1, batch_size=64, random_state=0, device="cpu",
                                callbacks=[("keep", ResumableCheckpoint(str(tmp_path / "mine"))),
                                           ("resume", LoadInitState(cp))])
    clf.fit(Xtr, ytr)
    clf.set_params(torch_load_kwargs={"weights_only": False})
    clf.save(tmp_path / "model.pt")
    evil.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"boom": _Payload(marker)}, evil / "params.pt")
    row = {"epoch": 1, "batches": [{"train_loss": 1.0, "train_batch_size": 64}]}
    (evil / "history.json").write_text(json.dumps([row]))
    with pytest.warns(UserWarning, match=r"not restored: callback 'keep' \(ResumableCheckpoint"
                      r".*callback 'resume' \(LoadInitState.*torch_load_kwargs"):
        loaded = AdversarialClassifier.load(tmp_path / "model.pt")
    assert loaded.callbacks == [] and loaded.torch_load_kwargs is None
    loaded.partial_fit(Xtr, ytr)  # trains on; reads nothing from the planted folder
    assert not marker.exists()


def test_saved_model_cannot_name_files_through_other_parameters(data, tmp_path):
    """The same attack through skorch's callbacks__<name>=... (which replaces a default
    callback) and the proxy cache folder: dropped on load, with the warning."""
    Xtr, ytr, _, _ = data
    evil = tmp_path / "evil"
    clf = AdversarialClassifier(max_epochs=1, batch_size=64, random_state=0, device="cpu",
                                proxy_data=GaussianMixtureProxy(pca_components=4, random_state=0),
                                proxy_ratio=0.25, proxy_memory=str(tmp_path / "cache"))
    clf.fit(Xtr, ytr)
    clf.set_params(callbacks__print_log=LoadInitState(Checkpoint(dirname=str(evil))))
    clf.save(tmp_path / "model.pt")
    with pytest.warns(UserWarning, match=r"not restored: callbacks__print_log \(reads or writes "
                      r"files\); proxy_memory="):
        loaded = AdversarialClassifier.load(tmp_path / "model.pt")
    assert "callbacks__print_log" not in loaded.get_params(deep=False) and loaded.proxy_memory is None
    assert not isinstance(dict(loaded.callbacks_)["print_log"], LoadInitState)


def test_loaded_model_with_ema_goes_on_from_the_raw_weights(data, tmp_path):
    """The module holds EMA's average; the raw training weights are saved beside it, so
    partial_fit after load continues exactly as the original's partial_fit."""
    Xtr, ytr, Xte, _ = data
    clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), ema=EMA(decay=0.9, warmup=0),
                                max_epochs=2, batch_size=64, random_state=0, device="cpu")
    clf.fit(Xtr, ytr).save(tmp_path / "m.pt")
    loaded = AdversarialClassifier.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.predict_proba(Xte), clf.predict_proba(Xte))
    clf.partial_fit(Xtr, ytr)
    loaded.partial_fit(Xtr, ytr)
    np.testing.assert_array_equal(loaded.predict_proba(Xte), clf.predict_proba(Xte))


def test_model_saved_on_a_gpu_loads_on_the_cpu(data, tmp_path):
    from skorch.exceptions import DeviceWarning

    from robustfit._persist import load_payload, save_payload

    Xtr, ytr, Xte, _ = data
    clf = AdversarialClassifier(max_epochs=1, random_state=0, device="cpu").fit(Xtr, ytr)
    clf.save(tmp_path / "m.pt")
    spec, tensors = load_payload(tmp_path / "m.pt", "model", "saved model")
    params = dict(spec["params"]["__dict__"], device="cuda")  # as a GPU machine writes it
    save_payload("model", dict(spec, params={"__dict__": [[k, v] for k, v in params.items()]}),
                 tensors, tmp_path / "gpu.pt")
    if torch.cuda.is_available():
        assert AdversarialClassifier.load(tmp_path / "gpu.pt").device == "cuda"
    else:
        with pytest.warns(DeviceWarning, match="no CUDA GPU is available here: loading it on the CPU"):
            loaded = AdversarialClassifier.load(tmp_path / "gpu.pt")
        assert loaded.device == "cpu"
        np.testing.assert_array_equal(loaded.predict_proba(Xte), clf.predict_proba(Xte))
    explicit = AdversarialClassifier.load(tmp_path / "gpu.pt", device="cpu")
    assert explicit.device == "cpu"
    np.testing.assert_array_equal(explicit.predict_proba(Xte), clf.predict_proba(Xte))


def _checkpointed(dirname, **kwargs):
    cp = Checkpoint(dirname=str(dirname), monitor=None)
    params = dict(attack=PGD(epsilon=0.1, steps=2), max_epochs=2, batch_size=64, random_state=0,
                  device="cpu", callbacks=[cp, LoadInitState(cp)])
    params.update(kwargs)
    return AdversarialClassifier(**params)


@pytest.mark.parametrize("target", ["params.train_state.pt", "params.pt", "optimizer.pt"])
def test_planted_checkpoint_file_runs_nothing(data, tmp_path, target):
    Xtr, ytr, _, _ = data
    _checkpointed(tmp_path).fit(Xtr, ytr)
    assert (tmp_path / "params.train_state.pt").exists()
    marker = tmp_path / "pwned"
    _plant(tmp_path / target, marker)
    with pytest.raises(ValueError, match="refused to load"):
        _checkpointed(tmp_path, max_epochs=3).fit(Xtr, ytr)
    assert not marker.exists()


def test_planted_proxy_cache_entry_runs_nothing(data, tmp_path):
    Xtr, ytr, _, _ = data
    proxy = GaussianMixtureProxy(pca_components=5, mixture_components=1, random_state=0)

    def clf():
        return AdversarialClassifier(proxy_data=proxy, proxy_memory=str(tmp_path), max_epochs=1,
                                     random_state=0, device="cpu")

    first = clf().fit(Xtr, ytr)
    entries = list((tmp_path / "robustfit-proxy-cache").glob("*.pt"))
    assert len(entries) == 1
    second = clf().fit(Xtr, ytr)  # from the cache: the same pool and fitted proxy
    assert torch.equal(first.proxy_X_, second.proxy_X_)
    assert np.allclose(first.proxy_.mixtures_[0].means_, second.proxy_.mixtures_[0].means_)
    marker = tmp_path / "pwned"
    for kind in ("torch", "pickle"):
        _plant(entries[0], marker, kind)
        with pytest.raises(ValueError, match="refused to load the proxy_memory cache entry"):
            clf().fit(Xtr, ytr)
        assert not marker.exists()


def test_planted_array_proxy_npz_runs_nothing(data, tmp_path):
    Xtr, ytr, _, _ = data
    marker = tmp_path / "pwned"
    path = tmp_path / "samples.npz"
    np.savez(path, image=np.array([_Payload(marker)], dtype=object), label=np.array([0]))
    with pytest.raises(ValueError, match="pickled objects"):
        AdversarialClassifier(proxy_data=ArrayProxy(path=path), max_epochs=1,
                              device="cpu").fit(Xtr, ytr)
    assert not marker.exists()


def test_fitted_proxies_round_trip_without_pickle(data):
    from robustfit._persist import decode, encode

    pytest.importorskip("diffusers")
    Xtr, ytr, _, _ = data
    proxies = [
        GaussianMixtureProxy(pca_components=6, mixture_components=2, random_state=0),
        DiffusionProxy(block_out_channels=(16, 32), max_epochs=1, batch_size=100, sampling_steps=2,
                       sample_batch_size=64, random_state=0),
    ]
    for proxy in proxies:
        proxy.fit(Xtr, ytr)
        tensors = {}
        spec = json.loads(json.dumps(encode(proxy, tensors)))  # through JSON text, as on disk
        copy = decode(spec, tensors)
        assert type(copy) is type(proxy) and copy.get_params() == proxy.get_params()
        a, b = proxy.sample(12, random_state=0), copy.sample(12, random_state=0)
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)
        np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------------------- resuming
class _Interrupt(Callback):
    """Raise in the middle of an epoch, the first time only (a crash)."""

    def __init__(self, epoch, batch):
        self.epoch = epoch
        self.batch = batch

    def on_batch_end(self, net, training=False, **kwargs):
        batches = [b for b in net.history[-1]["batches"] if "train_batch_size" in b]
        if training and len(net.history) == self.epoch and len(batches) == self.batch \
                and not os.environ.get("_RF_INTERRUPTED"):
            os.environ["_RF_INTERRUPTED"] = "1"
            raise RuntimeError("crash")


@pytest.mark.parametrize("objective", [None, PrimalDual(dual_lr=0.05, nu_init=1.0)])
def test_resumable_checkpoint_after_a_crash(data, tmp_path, objective, monkeypatch):
    Xtr, ytr, _, _ = data

    def clf(dirname):
        return AdversarialClassifier(
            attack=PGD(epsilon=0.1, steps=2), objective=objective, max_epochs=3, batch_size=64,
            random_state=0, device="cpu",
            callbacks=[ResumableCheckpoint(str(dirname)), _Interrupt(2, 2)])

    monkeypatch.setenv("_RF_INTERRUPTED", "1")  # the reference run is not interrupted
    reference = clf(tmp_path / "ref").fit(Xtr, ytr)
    monkeypatch.delenv("_RF_INTERRUPTED")
    with pytest.raises(RuntimeError, match="crash"):
        clf(tmp_path / "run").fit(Xtr, ytr)
    resumed = clf(tmp_path / "run").fit(Xtr, ytr)  # a new process would do the same
    assert len(resumed.history) == 3
    for a, b in zip(reference.module_.state_dict().values(), resumed.module_.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history[:, "train_loss"] == reference.history[:, "train_loss"]
    if objective is not None:
        assert resumed.objective_.nu_ == reference.objective_.nu_ != 1.0
    assert (tmp_path / "run" / "params.train_state.pt").exists()
    assert training_state_path(tmp_path / "run" / "params.pt") == str(
        tmp_path / "run" / "params.train_state.pt")


def test_resumed_run_restores_the_best_weights_of_before_the_crash(data, tmp_path, monkeypatch):
    """RobustValidation(restore_best=True) and the collapse guard keep their best weights
    in the checkpoint's training state. Before, a run resumed after the best epoch lost them
    and ended on its last weights (0.025 from the uninterrupted run in predict_proba)."""
    from robustfit.attacks import FGSM
    from robustfit.callbacks import RobustValidation
    from robustfit.recipes import CollapseGuard

    Xtr, ytr, Xte, _ = data

    def clf(dirname):
        return AdversarialClassifier(
            attack=FGSM(epsilon=0.1), lr=0.05, lr_schedule="constant", max_epochs=4,
            batch_size=64, random_state=0, device="cpu",
            valid_attack=RobustValidation(PGD(epsilon=0.1, steps=2), restore_best=True),
            guard=CollapseGuard(max_samples=64, drop=0.9),
            callbacks=[ResumableCheckpoint(str(dirname)), _Interrupt(4, 1)])

    monkeypatch.setenv("_RF_INTERRUPTED", "1")  # the reference run is not interrupted
    reference = clf(tmp_path / "ref").fit(Xtr, ytr)
    best = dict(reference.callbacks_)["valid_robust_acc"]
    assert best.restored_epoch_ is not None and best.restored_epoch_ < 4  # best before the crash
    monkeypatch.delenv("_RF_INTERRUPTED")
    with pytest.raises(RuntimeError, match="crash"):
        clf(tmp_path / "run").fit(Xtr, ytr)
    resumed = clf(tmp_path / "run").fit(Xtr, ytr)
    assert dict(resumed.callbacks_)["valid_robust_acc"].restored_epoch_ == best.restored_epoch_
    np.testing.assert_array_equal(resumed.predict_proba(Xte), reference.predict_proba(Xte))
    assert dict(resumed.callbacks_)["guard"].best_ == dict(reference.callbacks_)["guard"].best_


def test_checkpoint_without_training_state_warns(data, tmp_path):
    Xtr, ytr, _, _ = data
    _checkpointed(tmp_path).fit(Xtr, ytr)
    os.remove(tmp_path / "params.train_state.pt")
    with pytest.warns(UserWarning, match="no robustfit training state"):
        clf = _checkpointed(tmp_path, max_epochs=3).fit(Xtr, ytr)
    assert len(clf.history) == 3


@pytest.mark.parametrize("module, shape", [(DigitsCNN, (1, 8, 8)), (MnistCNN, (1, 28, 28))])
def test_library_networks_save_without_pickle(module, shape, tmp_path):
    """robustfit's own sized networks are classes, so the safe format can name and rebuild them."""
    rng = np.random.RandomState(0)
    X, y = rng.rand(40, *shape).astype(np.float32), np.arange(40) % 10
    clf = AdversarialClassifier(module, module__width=4, module__hidden=8, max_epochs=1,
                                batch_size=20, train_split=None, random_state=0).fit(X, y)
    assert isinstance(clf.module_, SmallCNN)
    path = tmp_path / "m.pt"
    clf.save(path)
    loaded = AdversarialClassifier.load(path)
    assert type(loaded.module_) is module
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_resnet18_saves_without_pickle(tmp_path):
    """ResNet18 is a class too: a classifier trained on it is written and read back safely."""
    pytest.importorskip("torchvision")
    rng = np.random.RandomState(0)
    X, y = rng.rand(8, 3, 16, 16).astype(np.float32), np.arange(8) % 2
    clf = AdversarialClassifier(ResNet18, max_epochs=1, batch_size=8, train_split=None,
                                random_state=0).fit(X, y)
    path = tmp_path / "resnet.pt"
    clf.save(path)
    loaded = AdversarialClassifier.load(path)
    assert type(loaded.module_) is ResNet18 and loaded.module_.fc.out_features == 2
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
