"""DiffusionProxy sample quality in the data-scarce setting (issue 16, item 5).

Fits DiffusionProxy on the first 1,000 images of bench_mnist.py's training
split (``--fits``: ``channels:epochs[:batch_size[:name=value...]]`` specs, the
optional ``name=value`` fields setting further DiffusionProxy parameters such as
``prediction_type=sample`` or ``ema_decay=0.999``; the state is cached in
results/ and reused), then draws ``--n-samples`` class-balanced samples with
each sampler setting of ``--settings`` (``steps:guidance`` pairs) and scores
them with robustfit.metrics.sample_quality: the accuracy of an independent
judge (a standard MnistCNN trained on images 2,000-5,000 and 6,000-8,000 of
the split, never seen by the generator) and the Frechet distance of the
judge's penultimate features to the held-out real images 9,000-10,000. The
archived samples of bench_certify.py (``--archived``) and real images are
scored as references (``--no-references`` skips them). ``--snapshots 20,40``
also scores the averaged (EMA) weights as they were after those epochs of the
same fit (still under its learning-rate schedule, so not the same as a shorter
fit). Rows go to results/bench_diffusion_quality.json; the judge is cached in
results/ (it is trained once per seed).

    python benchmarks/bench_diffusion_quality.py --fits 16-32-32:60:32 --settings 20:1,20:3,50:1
    python benchmarks/bench_diffusion_quality.py --fits 16-32-32:60:32:prediction_type=sample
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import mnist_split, parser, quality_judge

from robustfit import AdversarialClassifier
from robustfit._persist import decode, encode, load_payload, save_payload
from robustfit.datasets import load_mnist
from robustfit.metrics import sample_quality
from robustfit.proxy import DiffusionProxy

RESULTS = Path(__file__).resolve().parent / "results"
CACHE_KIND = "bench-diffusion-state"


def parse_fit(spec):
    """``"16-32-32:150"`` -> ((16, 32, 32), 150, 128, {}); ``"16-32-32:60:32"`` sets the batch size;
    further ``name=value`` fields set DiffusionProxy parameters (numbers parsed as int or float)."""
    channels, epochs, *rest = spec.split(":")
    batch = int(rest[0]) if rest else 128
    extra = {}
    for field in rest[1:]:
        name, value = field.split("=")
        for kind in (int, float, str):
            try:
                extra[name] = kind(value)
                break
            except ValueError:
                pass
    return tuple(int(c) for c in channels.split("-")), int(epochs), batch, extra


class SnapshotDiffusionProxy(DiffusionProxy):
    """DiffusionProxy that keeps copies of the sampling weights after the epochs in ``_snapshot_epochs``."""

    _snapshot_epochs = ()

    def _train_epoch(self, unet, x0, labels, alphas, opt, sched, ema):
        loss = super()._train_epoch(unet, x0, labels, alphas, opt, sched, ema)
        self._epochs_done = getattr(self, "_epochs_done", 0) + 1
        if self._epochs_done in self._snapshot_epochs:
            model = ema.module if ema is not None else unet
            self._snapshots[self._epochs_done] = copy.deepcopy(model.state_dict())
        return loss


def state_path(spec, seed):
    name = spec.replace(":", "_e", 1).replace(":", "_b", 1).replace(":", "_").replace("=", "-")
    return RESULTS / f"diffusion_state_{name}_s{seed}.pt"


def cached_state(spec, seed):
    """The cached fitted state of ``spec`` and ``seed`` (DiffusionProxy's
    ``get_fitted_state()`` plus ``cpu_s_`` and ``snapshots_``), or None. Read with
    ``torch.load(weights_only=True)``, never unpickled; a cache in an older format
    is reported and ignored."""
    path = state_path(spec, seed)
    if not path.is_file():
        return None
    try:
        spec_, tensors = load_payload(path, CACHE_KIND, "cached diffusion state")
    except ValueError as exc:
        print(f"  ignoring {path.name}: {exc}")
        return None
    return decode(spec_, tensors)


def fitted(spec, X, y, seed, reuse=True, snapshots=()):
    """A DiffusionProxy of ``spec`` fitted on (X, y), its state cached in results/; with the fit's
    wall-clock and CPU seconds (CPU: None for a state cached before CPU time was recorded) and
    the EMA weights after the epochs in ``snapshots`` (cached with the state)."""
    channels, epochs, batch, extra = parse_fit(spec)
    gen = SnapshotDiffusionProxy(block_out_channels=channels, max_epochs=epochs, batch_size=batch,
                                 **{"lr": 2e-3, "prediction_type": "epsilon", **extra},
                                 random_state=seed, verbose=1)
    saved = cached_state(spec, seed) if reuse else None
    if saved is not None:
        cpu_s = saved.pop("cpu_s_", None)
        snaps = saved.pop("snapshots_", {})
        gen.set_fitted_state(saved)
        return gen, gen.fit_time_, cpu_s, snaps
    gen._snapshot_epochs, gen._snapshots = tuple(snapshots), {}
    t0 = time.process_time()
    gen.fit(X, y)
    cpu_s = time.process_time() - t0
    snaps = gen._snapshots
    RESULTS.mkdir(parents=True, exist_ok=True)
    tensors = {}
    spec_ = encode({**gen.get_fitted_state(), "cpu_s_": cpu_s, "snapshots_": snaps}, tensors)
    save_payload(CACHE_KIND, spec_, tensors, state_path(spec, seed))
    return gen, gen.fit_time_, cpu_s, snaps


def cached_judge(X, y, seed):
    """quality_judge's classifier, trained once per seed and cached in results/ (saved without pickle)."""
    path = RESULTS / f"quality_judge_s{seed}.pt"
    if path.is_file():
        judge = AdversarialClassifier.load(path)
        return judge, int(np.load(path.with_suffix(".npy")))
    judge, n_judge = quality_judge(X, y, seed=seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    judge.save(path)
    np.save(path.with_suffix(".npy"), n_judge)
    return judge, n_judge


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--fits", default="16-32-32:60:32")
    p.add_argument("--settings", default="20:1,50:1,20:2,20:3", help="sampling_steps:guidance pairs")
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--archived", default="/work/archive/certify/certify_proxy_diffusion_1000.npz")
    p.add_argument("--stage", default="all", choices=("fit", "all"))
    p.add_argument("--n-real", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seeds the generator's fit and its samples")
    p.add_argument("--sample-seed", type=int, default=None, help="seeds the samples (default: --seed)")
    p.add_argument("--judge-seed", type=int, default=0, help="seeds the judge (the same for every row)")
    p.add_argument("--snapshots", default="", help="also score the EMA weights after these epochs")
    p.add_argument("--no-references", action="store_true", help="skip the real and archived rows")
    args = p.parse_args()
    snapshots = [int(e) for e in args.snapshots.split(",") if e]
    torch.set_num_threads(1)
    (X8k, y8k), _ = mnist_split(args.data)
    Xtr, ytr = X8k[: args.n_real], y8k[: args.n_real]
    gens = {}
    for spec in args.fits.split(","):
        gens[spec] = fitted(spec, Xtr, ytr, args.seed, snapshots=snapshots)
        print(f"fit {spec}: {gens[spec][1]:.1f} s wall, {gens[spec][2]} s CPU, "
              f"final loss {gens[spec][0].loss_curve_[-1]:.4f}", flush=True)
    if args.stage == "fit":
        return
    X, y = load_mnist(args.data, split="test")
    X_ref, y_ref = X[9000:], y[9000:]
    judge, n_judge = cached_judge(X, y, args.judge_seed)
    print(f"judge: standard MnistCNN on {n_judge} real images; accuracy on the reference images "
          f"9000-10000: {judge.score(X_ref, y_ref):.4f}", flush=True)
    out = RESULTS / "bench_diffusion_quality.json"
    saved = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    rows = {r["name"]: r for r in saved["rows"]}

    def record(name, Xs, ys, **info):
        q = sample_quality(Xs, ys, X_ref, y_ref, judge=judge)
        rows[name] = {"name": name, "judge_acc": q.judge_accuracy, "frechet": q.frechet_distance,
                      "judge_acc_per_class": q.per_class_judge_accuracy.round(3).tolist(),
                      "n": len(Xs), **info}
        print(f"{name:<34} judge acc {q.judge_accuracy:.4f}  Frechet {q.frechet_distance:8.3f}  "
              + " ".join(f"{k}={v:.4g}" for k, v in info.items() if isinstance(v, float)), flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": list(rows.values())}, indent=1))

    rng = np.random.RandomState(args.seed)
    real = rng.choice(np.arange(5000, 6000), args.n_samples, replace=False) if args.n_samples <= 1000 else None
    if real is not None and not args.no_references:
        record("real images 5000-6000 (same writers)", X[real], y[real])
        record("real images 0-1000 (generator's data)", X[:args.n_samples], y[:args.n_samples])
    if Path(args.archived).is_file() and not args.no_references:
        with np.load(args.archived, allow_pickle=False) as f:
            Xa, ya = f["image"].astype(np.float32) / 255.0, f["label"]
            info = {k: float(f[k]) for k in ("fit_s", "sample_s") if k in f.files}
        idx = rng.choice(len(Xa), args.n_samples, replace=False)
        record("archived 16-32-32:150 steps 20 w 1", Xa[idx], ya[idx],
               fit_s=info.get("fit_s"), sample_s_per_1000=info.get("sample_s", np.nan) * 1000 / len(Xa))
    draw = args.seed if args.sample_seed is None else args.sample_seed
    for spec, (gen, fit_s, fit_cpu_s, snaps) in gens.items():
        final = copy.deepcopy(gen.unet_.state_dict())
        chosen = [(e, w) for e, w in sorted(snaps.items()) if e in snapshots]  # cached ones too
        for epoch, weights in [*chosen, (None, final)]:
            gen.unet_.load_state_dict(weights)
            at = "" if epoch is None else f" @epoch {epoch}"
            for setting in args.settings.split(","):
                steps, w = setting.split(":")
                gen.set_params(sampling_steps=int(steps), guidance_scale=float(w))
                t0, c0 = time.perf_counter(), time.process_time()
                Xs, ys = gen.sample(args.n_samples, random_state=draw)
                sample_s, sample_cpu_s = time.perf_counter() - t0, time.process_time() - c0
                Xs = np.round(Xs * 255).astype(np.float32) / 255.0  # as stored in uint8 files
                seed = "" if args.seed == 0 else f" seed {args.seed}"
                seed += "" if draw == args.seed else f" draw {draw}"
                record(f"{spec}{at} steps {steps} w {w}{seed}", Xs, ys, fit_s=float(fit_s),
                       fit_cpu_s=float("nan") if fit_cpu_s is None else float(fit_cpu_s),
                       sample_s_per_1000=sample_s * 1000 / len(Xs),
                       sample_cpu_s_per_1000=sample_cpu_s * 1000 / len(Xs))
        gen.unet_.load_state_dict(final)


if __name__ == "__main__":
    main()
