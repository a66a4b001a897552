"""Execute the tutorial notebooks into docs/notebooks/, the copies the docs site renders.

The notebooks in ``examples/`` are committed without outputs; the docs build does not execute
anything (``nb_execution_mode = "off"`` in conf.py), so that it stays fast. This script runs each
notebook with nbclient and writes the executed copy, with its printed output and plots, to
``docs/notebooks/<name>.ipynb``. A note cell placed after the title says how the copy was made:
the command, quick or full mode, the machine, torch's version, the date and the run time.
``tests/test_docs.py`` checks that every copy has the same cells as its source, so an edited
notebook must be executed again (the test names the stale copies).

Run it from the repository root (``make notebooks`` runs ``--full``, as the committed copies were)::

    python docs/execute_notebooks.py                  # every notebook, quick mode
    python docs/execute_notebooks.py --full 01 07     # the named notebooks, full mode

Quick mode sets ``ROBUSTFIT_QUICK=1``, as the test suite does: the notebooks shrink their data,
epochs and attacks, so their figures are smoke-test figures, not results. Full mode runs them as
written (minutes to hours on a CPU; see each notebook's introduction).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "examples"
TARGET = ROOT / "docs" / "notebooks"
# The note cell carries this metadata key, so the sync test can tell it from the source's cells.
NOTE_KEY = "robustfit_execution_note"
# Output types the docs cannot show, or that only bloat the file (ipywidgets' state).
DROPPED_MIME = ("application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json")


def machine_description():
    """The CPU model and core count, the OS and torch's version, in one line."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # no /proc (not Linux): keep platform's name
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch  # here, not at the top: only the note needs it

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores visible, {gpu}, {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def note_cell(name, command, quick, reads_quick, machine, seconds):
    if quick and reads_quick:
        mode = ("**quick mode** (`ROBUSTFIT_QUICK=1`, as in the test suite): smaller data, fewer "
                "epochs and weaker attacks than the notebook's full run, so the printed figures "
                "and the plots are smoke-test figures and differ from a full run")
    elif quick:
        mode = ("**full mode**: this notebook has no quick mode (it does not read "
                "`ROBUSTFIT_QUICK`), so it ran as written")
    else:
        mode = "**full mode** (the notebook as written)"
    date = datetime.date.today().isoformat()
    text = (
        "```{note}\n"
        f"This page is `examples/{name}`, executed with `{command}` in {mode}. "
        f"Machine: {machine}. Date: {date}; the run took {seconds:.0f} s. "
        "Run the notebook yourself for current figures.\n"
        "```"
    )
    cell = nbformat.v4.new_markdown_cell(text, id="execution-note")
    cell.metadata[NOTE_KEY] = True
    return cell


def _is_noise(line):
    # tqdm.auto's import-time warning (ipywidgets is not installed): it names a local path and
    # says nothing about robustfit; diffusers imports tqdm.auto.
    return "TqdmWarning: IProgress not found" in line or "import tqdm as notebook_tqdm" in line


def clean(nb):
    """Drop what the docs do not need: widget state, timing metadata, widget outputs and
    tqdm's import warning."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.get("outputs", []):
            for mime in DROPPED_MIME:
                out.get("data", {}).pop(mime, None)
            if out.output_type == "stream" and out.name == "stderr":
                out.text = "".join(
                    line for line in out.text.splitlines(keepends=True) if not _is_noise(line))
                if not out.text.strip():
                    continue
            outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs
    return nb


def execute(path, quick, machine, command, timeout):
    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("ROBUSTFIT_QUICK")
    if quick:
        os.environ["ROBUSTFIT_QUICK"] = "1"
    else:
        os.environ.pop("ROBUSTFIT_QUICK", None)
    try:
        with tempfile.TemporaryDirectory() as tmp:  # files the notebook writes land here
            start = time.perf_counter()
            nbclient.NotebookClient(
                nb, timeout=timeout, kernel_name="python3",
                resources={"metadata": {"path": tmp}},
            ).execute()
            seconds = time.perf_counter() - start
    finally:
        if env_before is None:
            os.environ.pop("ROBUSTFIT_QUICK", None)
        else:
            os.environ["ROBUSTFIT_QUICK"] = env_before
    reads_quick = any("ROBUSTFIT_QUICK" in c.source for c in nb.cells if c.cell_type == "code")
    note = note_cell(path.name, command, quick, reads_quick, machine, seconds)
    # After the title cell, so that the page keeps the notebook's title.
    nb.cells.insert(1, note)
    return clean(nb), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*",
                        help="notebooks to run, by file name or prefix (default: all)")
    parser.add_argument("--full", action="store_true",
                        help="run the notebooks as written, not in quick mode")
    parser.add_argument("--machine", default=None,
                        help="how the note describes the machine (default: CPU model, cores, "
                             "GPU, torch version)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)

    paths = sorted(SOURCES.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in args.names)]
        if not paths:
            parser.error(f"no notebook in {SOURCES} starts with {args.names}")
    machine = args.machine or machine_description()
    command = "python docs/execute_notebooks.py" + (" --full" if args.full else "")
    TARGET.mkdir(exist_ok=True)
    for path in paths:
        nb, seconds = execute(path, not args.full, machine, command, args.timeout)
        out = TARGET / path.name
        nbformat.write(nb, out)
        print(f"{path.name}: {seconds:.0f} s, {out.stat().st_size / 1024:.0f} KiB -> "
              f"{out.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
