"""The package's layer order: every module imports from its own layer or below.

The order, bottom to top (also in the README's layout section and in
docs/developers.rst):

0. ``_validation``, ``_distributed`` - parameter constraints, devices, boxes,
   arrays, labels; process-group helpers and batch shards (torch.distributed)
1. ``_utils``, ``_persist`` - seeding (RandomSource), cloning, optional imports,
   mixed precision; files without pickle
2. ``datasets`` - data loaders (torchvision through ``_utils.optional_import``)
3. ``_ot``, ``models`` - the OT divergence; networks (classifiers, generators)
4. ``attacks`` - attack algorithms
5. ``losses`` - training objectives
6. ``_evaluation`` - robust accuracy, scorers, gradient-masking checks
7. ``_proxy_pool`` - the pool of proxy samples of one fit
8. ``_loader`` - device-resident batch iterators, real/proxy mixing
9. ``callbacks`` - schedules, robust validation, progress, weight snapshots
10. ``recipes`` - training recipes: weight averaging, AWP, the collapse guard
11. ``_classifier_saving``, ``_classifier_ddp`` - the classifier's mixins:
    saving/loading/resuming, data-parallel hooks
12. ``classifier`` - AdversarialClassifier
13. ``metrics`` - curves, the conditional Wasserstein distance, the transfer
    bound, ARC (which trains discriminators with the classifier)
14. ``proxy``, ``certify`` - proxy distributions, randomized smoothing
15. ``robustfit/__init__`` - the public names

A module may import from any lower layer and from its own package; imports of
robustfit modules sit at module level only (no import deferred into a
function to dodge a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "robustfit"

LAYERS = [
    {"_validation", "_distributed"},
    {"_utils", "_persist"},
    {"datasets"},
    {"_ot", "models"},
    {"attacks"},
    {"losses"},
    {"_evaluation"},
    {"_proxy_pool"},
    {"_loader"},
    {"callbacks"},
    {"recipes"},
    {"_classifier_saving", "_classifier_ddp"},
    {"classifier"},
    {"metrics"},
    {"proxy", "certify"},
    {"__init__"},
]


def _layer(component):
    for i, names in enumerate(LAYERS):
        if component in names:
            return i
    raise AssertionError(f"robustfit.{component} has no layer; add it to LAYERS (and the docs)")


def _component(path, root=ROOT):
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts
    return parts[0] if parts[0] != "__init__" or len(parts) > 1 else "__init__"


def _modules():
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_components(path, root=ROOT):
    """(component, line, at_module_level) for each robustfit import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(root.parent).with_suffix("").parts[:-1]  # e.g. ('robustfit', 'attacks')
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [target + [a.name] for a in node.names]
            else:
                names = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        else:
            continue
        for target in names:
            if target[:1] != ["robustfit"]:
                continue
            comp = target[1] if len(target) > 1 else "__init__"
            found.append((comp, node.lineno, id(node) in top_level))
    return found


def check_module(path, root=ROOT):
    """Assert that ``path`` imports robustfit modules at module level, from below."""
    own = _component(path, root)
    own_layer = _layer(own)
    for comp, line, top in _imported_components(path, root):
        where = f"{path.relative_to(root.parent)}:{line}"
        assert top, f"{where} imports robustfit.{comp} inside a function; imports stay at module level"
        if comp == own:
            continue
        assert _layer(comp) < own_layer or (own == "__init__"), (
            f"{where}: robustfit.{own} (layer {own_layer}) imports robustfit.{comp} "
            f"(layer {_layer(comp)}); imports must point to lower layers"
        )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    check_module(path)


def test_every_module_has_a_layer():
    for path in _modules():
        _layer(_component(path))


def _probe(tmp_path, rel, text):
    path = tmp_path / "robustfit" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, tmp_path / "robustfit"


def test_the_check_catches_an_upward_import(tmp_path):
    path, root = _probe(tmp_path, "attacks/_probe.py", "from ..classifier import AdversarialClassifier\n")
    with pytest.raises(AssertionError, match="imports must point to lower layers"):
        check_module(path, root)
    path, root = _probe(tmp_path, "losses.py", "import robustfit.metrics\n")
    with pytest.raises(AssertionError, match="imports must point to lower layers"):
        check_module(path, root)


def test_the_check_catches_a_deferred_import(tmp_path):
    path, root = _probe(tmp_path, "metrics/_probe.py", "def f():\n    from ..attacks import PGD\n    return PGD\n")
    with pytest.raises(AssertionError, match="inside a function"):
        check_module(path, root)


def test_the_check_accepts_downward_and_sibling_imports(tmp_path):
    path, root = _probe(tmp_path, "metrics/_probe.py",
                        "from .._validation import check_bounds\nfrom ._arc import arc_score\n"
                        "from ..classifier import AdversarialClassifier\n")
    check_module(path, root)
