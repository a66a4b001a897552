"""One device, used well: PGD-10 training throughput and AutoAttack throughput.

On ResNet-18 with CIFAR-shaped input (random tensors: throughput does not
depend on the pixels), PGD-10 at l_inf epsilon 8/255 (step 2/255, random
start), batch 512, Adam, the script measures in one run:

  (a) a plain fp32 PyTorch loop (attack in eval mode, projection after each
      step, one optimizer step per batch, no per-batch host readout), with
      PyTorch's default math: cuDNN convolutions in TF32;
  (a32) the same loop in strict fp32 (TF32 off for cuDNN and matmuls);
  (b) the same loop under bf16 autocast with channels-last model and input;
  (e) clean training (no attack) with the loop of (b): PGD-10 costs about
      11 forward+backward passes per step, so (e) / 11 is the limit for (a)-(d);
  (c) robustfit's defaults: ``AdversarialClassifier(ResNet18, attack=PGD(...))``
      with ``amp="auto"`` (bf16 autocast and channels-last on CUDA), the
      default TensorLoader, schedules and callbacks; ``partial_fit`` over a
      tensor already on the device, one epoch per timed pass; only the
      epsilon warm-up is off (``attack_warmup=0``), since it restarts with
      each ``partial_fit`` and would leave the first batch unattacked;
  (c0) (c) with ``cuda_graphs=False``: the training attack launched kernel
      by kernel instead of replayed from a CUDA graph (passes alternate
      with (c)'s);
  (c1) (c) with ``fold_batchnorm=False``: the training attack on the
      network with its batch-norm layers (passes alternate with (c)'s);
  (d) the same with ``compile=True`` (``torch.compile``; the first pass,
      compilation included, is reported apart);
  attack: the PGD-10 attack alone on the modules of (c), replayed from a
      CUDA graph, alternating with the eager attack; and on the module of (d);
  AutoAttack: evaluation images/s of the APGD-CE + APGD-T ensemble through
      ``robust_accuracy`` (fp32, as ``robust_score`` runs it), on points the
      model classifies correctly; and the cost per image of a robust model,
      where every point goes through APGD-CE and all three APGD-T targets.

and the peak GPU memory of each. Each case is warmed up, then timed over
``--passes`` passes of ``--batches`` batches; the median images/s is reported
with every pass. Results are written line by line (and as JSON) to ``--out``,
by default ``$OUT/bench_gpu.txt`` when ``$OUT`` is set, else
``benchmarks/results/bench_gpu.txt``. A total time budget (``--budget``
seconds) stops the run in time: a case that would overrun it is interrupted
and reported as stopped, and the cases after it as skipped.

    python benchmarks/bench_gpu.py                      # on a GPU (make gpu-check)
    python benchmarks/bench_gpu.py --smoke              # tiny sizes, any device (the tests)
    python benchmarks/bench_gpu.py --device cpu --model mnistcnn --batch 128 --cases c,d,atk,atk_d
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from robustfit import AdversarialClassifier
from robustfit._validation import resolve_device
from robustfit.attacks import APGD, PGD, AutoAttack
from robustfit.attacks._graph import cuda_graphs
from robustfit.metrics import robust_accuracy
from robustfit.models import MnistCNN, ResNet18

REPO = Path(__file__).resolve().parents[1]
CASES = ("a", "a32", "b", "e", "c", "c0", "c1", "atk", "aa", "d", "atk_d")
TITLES = {
    "a": "(a) plain PyTorch PGD-{steps} loop, fp32",
    "a32": "(a32) plain PyTorch PGD-{steps} loop, strict fp32 (TF32 off)",
    "b": "(b) plain PyTorch PGD-{steps} loop, bf16 autocast + channels_last",
    "e": "(e) clean training (no attack), loop of (b)",
    "c": "(c) robustfit AdversarialClassifier, defaults (amp='auto', cuda_graphs='auto')",
    "c0": "(c0) robustfit AdversarialClassifier, cuda_graphs=False",
    "c1": "(c1) robustfit AdversarialClassifier, fold_batchnorm=False",
    "atk": "attack alone: robustfit PGD-{steps} on the module of (c), as (c) runs it",
    "aa": "fast-ensemble evaluation (APGD-CE + APGD-T x3, robust_score's default), fp32",
    "d": "(d) robustfit AdversarialClassifier, compile=True",
    "atk_d": "attack alone: robustfit PGD-{steps} on the compiled module of (d)",
}
CLASSES = list(range(10))
MODELS = {"resnet18": (ResNet18, 3, 32), "mnistcnn": (MnistCNN, 1, 28)}


class BudgetExceeded(BaseException):
    """Raised by the alarm when the time budget is spent (a BaseException, so
    that no ``except Exception`` on the way turns it into another error)."""


class Report:
    """Writes every line at once (flushed) to stdout and the text file, and
    rewrites the JSON file after every case."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path = self.path.with_suffix(".json")
        self.file = open(self.path, "w", buffering=1)
        self.data = {"cases": {}}

    def line(self, text=""):
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def record(self, key, value):
        self.data["cases"][key] = value
        self.json_path.write_text(json.dumps(self.data, indent=1, default=str))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu")
    p.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--epsilon", type=float, default=8 / 255)
    p.add_argument("--step-size", type=float, default=2 / 255)
    p.add_argument("--batches", type=int, default=8, help="batches per timed pass")
    p.add_argument("--passes", type=int, default=3, help="timed passes per case")
    p.add_argument("--aa-images", type=int, default=512, help="images attacked by AutoAttack")
    p.add_argument("--aa-steps", type=int, default=100, help="iterations of each APGD run")
    p.add_argument("--image-size", type=int, default=None, help="input height and width")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {CASES}")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of (d) (inductor; eager/aot_eager test the plumbing)")
    p.add_argument("--budget", type=float, default=200.0, help="total seconds for all cases")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark = True for every case (cuDNN times its "
                        "algorithms for each shape and keeps the fastest)")
    p.add_argument("--profile-attack", type=int, default=0, metavar="N",
                   help="after the cases, profile one PGD batch on a fresh model and print the "
                        "N kernels of most GPU time")
    p.add_argument("--out", default=None, help="text file for the figures (JSON beside it)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, eager compile backend: checks that every case runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.batches, args.passes = 8, 2, 2, 1
        args.aa_images, args.aa_steps = 8, 3
        args.compile_backend = "eager"
        if args.image_size is None and args.model == "resnet18":
            args.image_size = 8
    if args.image_size is None:
        args.image_size = MODELS[args.model][2]
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        p.error(f"unknown case(s) {sorted(unknown)}; choose from {CASES}")
    if args.out is None:
        folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
        args.out = str(folder / "bench_gpu.txt")
    return args


# ----------------------------------------------------------------------------- helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device):
    """Reset the peak statistics; return the memory allocated now (bytes)."""
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_memory_gib(device, base):
    """Peak memory allocated since :func:`reset_memory`, above ``base``, in GiB."""
    if device.type != "cuda":
        return None
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 3)


def timed_passes(fn, n_images, passes, device):
    """images/s of each of ``passes`` calls of ``fn`` (each handles ``n_images``)."""
    rates = []
    for _ in range(passes):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        rates.append(n_images / (time.perf_counter() - t))
    return rates


def interleaved(fn, ref, n_images, passes, device):
    """Time ``fn`` and ``ref`` in alternation (``fn`` first in even rounds),
    so slow drifts of a shared machine affect both alike. Returns both lists
    of images/s and the median of the per-round ratios fn / ref."""
    rates, ref_rates = [], []
    for r in range(passes):
        pair = [(fn, rates), (ref, ref_rates)]
        for f, out in pair if r % 2 == 0 else pair[::-1]:
            out.extend(timed_passes(f, n_images, 1, device))
    ratio = statistics.median(a / b for a, b in zip(rates, ref_rates))
    return rates, ref_rates, ratio


def peak_of(fn, device):
    """Peak memory (GiB above what was allocated before) of one call of ``fn``."""
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 3)


def make_model(args, device, channels_last=False):
    factory, channels, _ = MODELS[args.model]
    torch.manual_seed(0)
    model = factory(n_classes=10, in_channels=channels).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_data(args, device, n):
    _, channels, _ = MODELS[args.model]
    g = torch.Generator(device="cpu").manual_seed(0)
    X = torch.rand((n, channels, args.image_size, args.image_size), generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return X.to(device), y.to(device)


def plain_pgd(model, x, y, args):
    """PGD as one writes it by hand: random start, sign step, projection onto
    the ball and the [0, 1] box after every step; model in eval mode."""
    eps, alpha = args.epsilon, args.step_size
    model.eval()
    delta = (torch.rand_like(x) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(args.steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    model.train()
    return (x + delta).detach()


def plain_case(args, device, *, bf16, channels_last, attack):
    model = make_model(args, device, channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = args.batch * args.batches
    X, y = make_data(args, device, n)
    if channels_last and X.dim() == 4:
        X = X.contiguous(memory_format=torch.channels_last)

    def step(xb, yb):
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with amp:
            if attack:
                xb = plain_pgd(model, xb, yb, args)
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def one_pass(batches=args.batches):
        for i in range(batches):
            sl = slice(i * args.batch, (i + 1) * args.batch)
            step(X[sl], y[sl])

    one_pass(min(2, args.batches))  # warm-up (cuDNN plans, allocator)
    return timed_passes(one_pass, n, args.passes, device), {}


def robustfit_classifier(args, device, compile_, **kwargs):
    factory = MODELS[args.model][0]
    if compile_:
        kwargs["compile"] = True
        if args.compile_backend != "inductor":
            kwargs["compile__backend"] = args.compile_backend
    # attack_warmup=0: the epsilon warm-up restarts with every partial_fit call (each
    # timed pass), and would run the first batch of each pass without an attack (epsilon 0)
    # where the plain loops attack every batch (before 2026-11-30's third run it was on,
    # so the (c), (c0) and (d) figures until then include one unattacked batch in eight)
    return AdversarialClassifier(
        factory, attack=PGD(epsilon=args.epsilon, steps=args.steps, step_size=args.step_size),
        max_epochs=1, batch_size=args.batch, train_split=None, attack_warmup=0,
        device=str(device), random_state=0, **kwargs,
    )


def robustfit_case(args, device, state, *, compile_, key="c", **kwargs):
    n = args.batch * args.batches
    X, y = make_data(args, device, n)
    y = y.cpu().numpy()
    clf = robustfit_classifier(args, device, compile_, **kwargs)
    t = time.perf_counter()
    # initialize (all 10 classes, whichever the first batches hold), warm up, compile
    clf.partial_fit(X[: 2 * args.batch], y[: 2 * args.batch], classes=CLASSES)
    sync(device)
    first = time.perf_counter() - t
    extra = {"first_pass_s": round(first, 2)}
    state[key] = clf
    eager = state.get("c") if key != "c" else None
    if eager is None:
        return timed_passes(lambda: clf.partial_fit(X, y), n, args.passes, device), extra
    # compiled (or graph-less) against the defaults, pass by pass; the peak memory of a pass alone
    extra["peak_memory_gib"] = peak_of(lambda: clf.partial_fit(X, y), device)
    rates, ref, ratio = interleaved(lambda: clf.partial_fit(X, y), lambda: eager.partial_fit(X, y),
                                    n, args.passes, device)
    extra.update(eager_alongside=[round(r, 1) for r in ref], ratio_to_eager=round(ratio, 3))
    return rates, extra


def attack_case(args, device, state, key):
    clf = state.get(key)
    if clf is None:
        raise RuntimeError(f"needs the classifier of case ({key}), which did not run")
    n = args.batch * args.batches
    X, y = make_data(args, device, n)
    if device.type == "cuda" and X.dim() == 4:
        X = X.contiguous(memory_format=torch.channels_last)  # as TensorLoader keeps it

    def one_pass(c=clf, batches=args.batches, graphs=None):
        graphs = c._graphs_on() if graphs is None else graphs
        with c._autocast(), cuda_graphs(graphs):
            for i in range(batches):
                sl = slice(i * args.batch, (i + 1) * args.batch)
                c.attack_.perturb(c.module_, X[sl], y[sl])

    one_pass(clf, min(2, args.batches))
    one_pass(clf, min(2, args.batches))  # a CUDA graph is recorded on the second sighting
    eager = state.get("c") if key == "d" else None
    if eager is None:
        if not clf._graphs_on():
            return timed_passes(one_pass, n, args.passes, device), {}
        # replayed from the CUDA graph against launched kernel by kernel, pass by pass
        one_pass(clf, min(2, args.batches), graphs=False)
        peak = peak_of(one_pass, device)
        rates, ref, ratio = interleaved(one_pass, lambda: one_pass(graphs=False), n, args.passes,
                                        device)
        return rates, {"peak_memory_gib": peak, "eager_alongside": [round(r, 1) for r in ref],
                       "ratio_to_eager": round(ratio, 3)}
    # the compiled module's attack against the eager one's, pass by pass
    peak = peak_of(one_pass, device)
    rates, ref, ratio = interleaved(one_pass, lambda: one_pass(eager, graphs=False), n,
                                    args.passes, device)
    return rates, {"peak_memory_gib": peak, "eager_alongside": [round(r, 1) for r in ref],
                   "ratio_to_eager": round(ratio, 3)}


def autoattack_case(args, device, state):
    """AutoAttack images/s on a trained ResNet, labels = its own predictions (so
    every point is attacked); and the per-image cost for a robust model."""
    clf = state.get("c")
    if clf is None:  # case (c) did not run: a model trained for one pass
        clf = robustfit_classifier(args, device, compile_=False)
        X0, y0 = make_data(args, device, args.batch)
        clf.partial_fit(X0, y0.cpu().numpy(), classes=CLASSES)
    module = clf.module_.eval()
    n = args.aa_images
    X, _ = make_data(args, device, n)
    with torch.no_grad():
        y = torch.cat([module(X[i:i + args.batch]).argmax(1) for i in range(0, n, args.batch)])
    y_np = y.cpu().numpy()
    aa = AutoAttack(epsilon=args.epsilon, steps=args.aa_steps)
    robust_accuracy(module, X[:8], y_np[:8], attack=aa, batch_size=args.batch)  # warm-up
    sync(device)
    t = time.perf_counter()
    acc = robust_accuracy(module, X, y_np, attack=aa, batch_size=args.batch)
    sync(device)
    ensemble = n / (time.perf_counter() - t)
    extra = {"robust_accuracy_on_this_model": acc}
    # a robust model: every point through APGD-CE and the 3 targeted runs
    ce, t1 = aa.member("apgd-ce"), APGD(epsilon=args.epsilon, steps=args.aa_steps,
                                        loss="dlr-targeted", n_target_classes=1)

    def run(att):
        for i in range(0, n, args.batch):
            att.perturb(module, X[i:i + args.batch], y[i:i + args.batch])

    t_ce = n / timed_passes(lambda: run(ce), n, 1, device)[0]
    t_t1 = n / timed_passes(lambda: run(t1), n, 1, device)[0]
    n_targets = aa.target_classes
    extra["robust_model_images_per_s"] = round(n / (t_ce + n_targets * t_t1), 1)
    extra["apgd_ce_s"], extra["apgd_t_one_target_s"] = round(t_ce, 3), round(t_t1, 3)
    return [ensemble], extra


def profile_attack(args, device, report):
    """The kernels of one PGD batch (robustfit's attack, eager, as (c) runs it
    without a graph), by total GPU time."""
    from torch.profiler import ProfilerActivity, profile

    clf = robustfit_classifier(args, device, False)
    X, y = make_data(args, device, args.batch)
    clf.partial_fit(X, y.cpu().numpy(), classes=CLASSES)
    if device.type == "cuda" and X.dim() == 4:
        X = X.contiguous(memory_format=torch.channels_last)

    attack = PGD(epsilon=args.epsilon, steps=args.steps, step_size=args.step_size)

    def batch():
        with clf._autocast():
            attack.perturb(clf._attack_module(attack, X), X, y)

    batch()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        batch()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    report.line(f"profile of one PGD-{args.steps} batch ({args.batch} images), top "
                f"{args.profile_attack} by {key}:")
    for line in prof.key_averages().table(sort_by=key, row_limit=args.profile_attack).splitlines():
        report.line("  " + line)


def run_case(key, args, device, state):
    if key in ("a", "b", "e"):
        return plain_case(args, device, bf16=key != "a", channels_last=key != "a",
                          attack=key != "e")
    if key == "a32":
        flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return plain_case(args, device, bf16=False, channels_last=False, attack=True)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    if key in ("c", "d"):
        return robustfit_case(args, device, state, compile_=key == "d", key=key)
    if key == "c0":
        return robustfit_case(args, device, state, compile_=False, key=key, cuda_graphs=False)
    if key == "c1":
        return robustfit_case(args, device, state, compile_=False, key=key, fold_batchnorm=False)
    if key in ("atk", "atk_d"):
        return attack_case(args, device, state, "c" if key == "atk" else "d")
    if key == "aa":
        return autoattack_case(args, device, state)
    raise ValueError(key)


def _alarm(signum, frame):
    raise BudgetExceeded()


def environment(device):
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget
    device = torch.device(resolve_device(args.device))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    report = Report(args.out)
    env = environment(device)
    report.data.update(env=env, args=vars(args))
    report.line("bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv))
    report.line("  " + ", ".join(f"{k}={v}" for k, v in env.items()))
    report.line(f"  model={args.model} input={MODELS[args.model][1]}x{args.image_size}x"
                f"{args.image_size} batch={args.batch} PGD-{args.steps} eps={args.epsilon:.5f} "
                f"step={args.step_size:.5f} batches/pass={args.batches} passes={args.passes} "
                f"budget={args.budget:.0f}s")
    report.line("  images/s: median of the timed passes; peak: GPU memory the case allocated at"
                " most, on top of what earlier cases keep (their models)")
    has_alarm = hasattr(signal, "setitimer")
    if has_alarm:
        signal.signal(signal.SIGALRM, _alarm)
    state, rates, ratio_to_eager, failed = {}, {}, {}, []
    for key in args.cases.split(","):
        title = TITLES[key].format(steps=args.steps)
        left = deadline - time.perf_counter()
        if left < 5:
            report.line(f"{title}: skipped (time budget spent)")
            report.record(key, {"status": "skipped"})
            continue
        base = reset_memory(device)
        t = time.perf_counter()
        try:
            if has_alarm:
                signal.setitimer(signal.ITIMER_REAL, left)
            case_rates, extra = run_case(key, args, device, state)
            status = "ok"
        except BudgetExceeded:
            case_rates, extra, status = None, {}, "stopped (time budget spent)"
        except Exception as exc:  # report, then go on with the other cases
            case_rates, extra, status = None, {}, f"FAILED: {type(exc).__name__}: {exc}"
            failed.append(key)
            traceback.print_exc()
        finally:
            if has_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
        wall = time.perf_counter() - t
        extra.setdefault("peak_memory_gib", peak_memory_gib(device, base))
        mem = extra.pop("peak_memory_gib")
        entry = {"status": status, "wall_s": round(wall, 2), "peak_memory_gib": mem, **extra}
        if case_rates:
            med = statistics.median(case_rates)
            rates[key] = med
            if "ratio_to_eager" in extra:
                ratio_to_eager[key] = extra["ratio_to_eager"]
            entry.update(images_per_s=round(med, 1), passes=[round(r, 1) for r in case_rates])
            mem_s = "" if mem is None else f", peak {mem:.2f} GiB"
            more = "".join(f", {k}={v}" for k, v in extra.items())
            report.line(f"{title}: {med:,.0f} images/s (passes: "
                        + ", ".join(f"{r:,.0f}" for r in case_rates) + f"){mem_s}{more}")
        else:
            report.line(f"{title}: {status} after {wall:.1f} s")
        report.record(key, entry)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    report.line("summary:")
    ratios = [
        ("(c) / (a): robustfit defaults against the plain fp32 loop (target >= 3)", "c", "a", 1),
        ("(c) / (a32): robustfit defaults against the plain loop in strict fp32 (TF32 off)",
         "c", "a32", 1),
        ("(c) / (c0): CUDA graphs against kernel-by-kernel launches, training", "c0", "c", -1),
        ("(c) / (c1): batch norm folded into the convolutions against not, training", "c1", "c",
         -1),
        (f"(c) / ((e) / {args.steps + 1}): robustfit defaults against the limit (target >= 0.8)",
         "c", "e", args.steps + 1),
        ("(b) / (a): bf16 + channels_last against fp32, plain loops", "b", "a", 1),
        ("(d) / (c): compile=True against the defaults, training", "d", "c", 1),
        ("attack alone, CUDA graph / kernel by kernel", "atk", None, 1),
        ("attack alone, compiled / eager", "atk_d", "atk", 1),
    ]
    summary = {}
    for text, num, den, div in ratios:
        if num in ratio_to_eager:  # measured in alternation with the eager contender
            value = ratio_to_eager[num] if div > 0 else 1 / ratio_to_eager[num]
            text += " (interleaved passes, median of the ratios)"
        elif num in rates and den in rates:
            value = rates[num] / (rates[den] / div)
        else:
            value = None
        if value is not None:
            summary[text] = round(value, 3)
            report.line(f"  {text}: {value:.3f}")
        else:
            report.line(f"  {text}: not measured")
    report.data["summary"] = summary
    if args.profile_attack:
        profile_attack(args, device, report)
    report.data["total_s"] = round(time.perf_counter() - start, 1)
    report.record("_done", not failed)
    report.line(f"total {time.perf_counter() - start:.1f} s; figures in {report.path}")
    if failed:
        report.line(f"FAILED cases: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
