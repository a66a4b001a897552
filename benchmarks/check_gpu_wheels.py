"""Check that the wheels in ``.whl/`` complete the GPU machine's image for robustfit.

``make gpu-wheels`` runs this script with ``--download``: it downloads, for
Python 3.12 on manylinux x86_64, the wheels of every package robustfit (with
the ``ot``, ``diffusion`` and ``dask`` extras) needs that the GPU machine's
image does not hold, at the versions pinned in ``constraints.txt``: robustfit's
requirements first, then, round by round, those of the downloaded wheels,
until nothing is missing. ``make gpu-check`` installs them there with ``pip
install --no-index --no-deps --target``. Then the script checks, here:

1. sizes: each wheel and the total (the device tool carries at most 64 MiB
   with the working tree; the limit here is ``--max-mib``);
2. one version per package, and tags that install on CPython 3.12,
   manylinux, x86_64;
3. completeness: every requirement of robustfit (core and those extras) and of
   every wheel (markers evaluated for Python 3.12 on Linux x86_64, extras
   left out) is met by a wheel here or by a package of the image
   (``IMAGE_PACKAGES``; names only, so versions are not checked);
4. installability: ``pip install --no-index --no-deps --target`` into a fresh
   folder, for Python 3.12;
5. imports: with only that folder, the image's packages (taken from this
   environment) and the repository on the path (``python -S``), robustfit,
   skorch, diffusers and dask.distributed import from the wheels,
   and a one-epoch fit runs. POT's compiled module is imported only when this
   Python is 3.12.

    python benchmarks/check_gpu_wheels.py --download .whl     # make gpu-wheels
    python benchmarks/check_gpu_wheels.py [.whl]                # the checks alone
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]

#: Python packages of the GPU machine's image ('cuda'), as the device notes list them
#: (read 2026-11-17).
IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
"""
IMAGE = {canonicalize_name(n) for n in IMAGE_PACKAGES.split()}
#: The extras whose packages the GPU machine gets (plot and vision are in the image).
EXTRAS = ("ot", "diffusion", "dask")
#: Modules imported from the wheels in step 5, and whether they hold compiled code.
IMPORTS = {"skorch": False, "diffusers": False, "distributed": False,
           "dask": False, "ot": True}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
ENV_312 = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "extra": ""}


def robustfit_requirements():
    """robustfit's install_requires and the requirements of EXTRAS, read from setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    reqs, extras = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            reqs = ast.literal_eval(node.value)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "OPTIONAL_EXTRAS":
            extras = ast.literal_eval(node.value)
    missing = [e for e in EXTRAS if e not in extras]
    if not reqs or missing:
        raise SystemExit(f"setup.py: install_requires or the extras {missing} not found")
    return reqs + [r for e in EXTRAS for r in extras[e]]


def pins():
    """``{canonical name: version}`` from constraints.txt."""
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canonicalize_name(name)] = version.strip()
    return out


def download(folder):
    """Download the wheels the image lacks, closing over their requirements."""
    folder.mkdir(parents=True, exist_ok=True)
    pinned = pins()
    todo = [r for r in map(Requirement, robustfit_requirements()) if applies(r)]
    done, extras = set(), {}
    while todo:
        for r in todo:  # requested extras, e.g. dask[distributed]
            extras.setdefault(canonicalize_name(r.name), set()).update(r.extras)
        names = sorted({canonicalize_name(r.name) for r in todo} - IMAGE - done)
        if not names:
            break
        unpinned = [n for n in names if n not in pinned]
        if unpinned:
            raise SystemExit(f"{unpinned} needed on the GPU machine but not pinned in constraints.txt")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
               "-d", str(folder), *[f"{n}=={pinned[n]}" for n in names]]
        print("downloading:", " ".join(f"{n}=={pinned[n]}" for n in names), flush=True)
        subprocess.run(cmd, check=True)
        done.update(names)
        todo = []
        for w in folder.glob("*.whl"):
            name = canonicalize_name(parse_wheel_filename(w.name)[0])
            if name in names:
                todo += [r for r in map(Requirement, wheel_requirements(w))
                         if applies(r, extras.get(name, ()))]


def wheel_requirements(path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def applies(req, extras=()):
    """Whether ``req`` is needed on the GPU machine (Python 3.12, Linux x86_64),
    for the package installed plain or with ``extras``."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**ENV_312, "extra": e}) for e in ("", *extras))


def tags_ok(tags):
    for tag in tags:
        py_ok = tag.interpreter in ("py3", "py2.py3", "cp312") or (
            tag.abi == "abi3" and tag.interpreter.startswith("cp3")
            and int(tag.interpreter[3:]) <= 12)
        plat_ok = tag.platform == "any" or (
            tag.platform.endswith("x86_64") and tag.platform.startswith("manylinux"))
        if py_ok and plat_ok:
            return True
    return False


def image_site(target):
    """A folder of links to this environment's copies of the image's packages
    (and of what they need here), standing in for the GPU machine's site-packages."""
    wanted = set(IMAGE)
    todo = sorted(IMAGE)
    while todo:  # what the image's packages need, as installed here (the image is whole)
        name = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for r in dist.requires or []:
            req = Requirement(r)
            if applies(req) and canonicalize_name(req.name) not in wanted:
                wanted.add(canonicalize_name(req.name))
                todo.append(req.name)
    linked = set()
    for dist in metadata.distributions():
        if canonicalize_name(dist.metadata["Name"] or "") not in wanted or not dist.files:
            continue
        for f in dist.files:
            top = f.parts[0]
            src = Path(dist.locate_file(top))
            if top in linked or top.startswith("..") or top == "__pycache__" or not src.exists():
                continue
            (target / top).symlink_to(src)
            linked.add(top)
    return target


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default=str(REPO / ".whl"))
    p.add_argument("--max-mib", type=float, default=60.0)
    p.add_argument("--download", action="store_true",
                   help="first download the wheels into the folder (it should be empty)")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if args.download:
        download(folder)
    wheels = sorted(folder.glob("*.whl"))
    problems = []
    if not wheels:
        raise SystemExit(f"no wheels in {folder}: run make gpu-wheels")

    # 1-2: sizes, versions, tags
    have = {}
    total = 0
    print(f"wheels in {folder}:")
    for w in wheels:
        name, version, _, tags = parse_wheel_filename(w.name)
        size = w.stat().st_size
        total += size
        print(f"  {size / 2**20:7.2f} MiB  {w.name}")
        if name in have:
            problems.append(f"two versions of {name}: {have[name]} and {version}")
        have[name] = version
        if not tags_ok(tags):
            problems.append(f"{w.name} does not install on CPython 3.12, manylinux x86_64")
    print(f"  {total / 2**20:7.2f} MiB  total ({len(wheels)} wheels; limit {args.max_mib:g} MiB)")
    if total > args.max_mib * 2**20:
        problems.append(f"the wheels take {total / 2**20:.1f} MiB, over {args.max_mib:g} MiB")

    # 3: completeness
    own = [r for r in map(Requirement, robustfit_requirements()) if applies(r)]
    wanted_extras = {canonicalize_name(r.name): r.extras for r in own}
    needed = [("robustfit", r) for r in own]
    for w in wheels:
        name = canonicalize_name(parse_wheel_filename(w.name)[0])
        needed += [(w.name, r) for r in map(Requirement, wheel_requirements(w))
                   if applies(r, wanted_extras.get(name, ()))]
    for owner, req in needed:
        text = str(req)
        name = canonicalize_name(req.name)
        if name in have:
            if not req.specifier.contains(str(have[name]), prereleases=True):
                problems.append(f"{owner} needs {text}, the wheel is {name} {have[name]}")
        elif name not in IMAGE:
            problems.append(f"{owner} needs {text}: neither a wheel here nor in the image")
    print("requirements: every requirement is met by a wheel or the image"
          if not any("needs" in p for p in problems) else "requirements: some are not met")

    # 4-5: install for Python 3.12, then import with nothing else but the image's packages
    with tempfile.TemporaryDirectory() as tmp:
        site, sim = Path(tmp) / "site", Path(tmp) / "image"
        sim.mkdir()
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--no-index", "--no-deps", "--no-compile", "--target", str(site),
               "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
               *[a for p in PLATFORMS for a in ("--platform", p)], *map(str, wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            problems.append(f"pip install --target failed: {proc.stderr[-2000:]}")
        else:
            print(f"install: {len(wheels)} wheels installed with --no-index into a fresh folder")
            image_site(sim)
            compiled_ok = sys.version_info[:2] == (3, 12)
            mods = [m for m, compiled in IMPORTS.items() if compiled_ok or not compiled]
            code = f"""
import sys
mods = {mods!r}
import robustfit, importlib
for m in mods:
    f = importlib.import_module(m).__file__
    assert f.startswith({str(site)!r}), (m, f)
from robustfit import AdversarialClassifier
from robustfit.attacks import PGD
from robustfit.datasets import load_digits_images
X, y = load_digits_images()
clf = AdversarialClassifier(attack=PGD(epsilon=0.1, steps=2), max_epochs=1, random_state=0)
clf.fit(X[:200], y[:200])
print("imports from the wheels:", ", ".join(mods), "; a one-epoch fit ran")
"""
            env = {"PYTHONPATH": f"{site}:{sim}:{REPO}", "PATH": "/usr/bin:/bin",
                   "OMP_NUM_THREADS": "1", "HOME": tmp}
            proc = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode:
                problems.append("import with the image's packages and the wheels failed:\n"
                                + proc.stderr[-3000:])
            else:
                print(proc.stdout.strip())
                if not compiled_ok:
                    print(f"POT (module ot) is a CPython 3.12 build: not imported by Python "
                          f"{sys.version_info[0]}.{sys.version_info[1]} here")
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    print("the wheel set is complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
