"""Adversarial attacks as parameter objects.

Every attack is called as ``attack(module, X, y) -> X_adv`` on any
:class:`torch.nn.Module` that returns logits, and works as the ``attack`` of
:class:`robustfit.AdversarialClassifier`.
"""

from ..models import default_generator  # noqa: F401 - kept importable from here
from ._base import (
    Attack,
    normalize_gradient,
    perturbation_norm,
    project,
    project_ball,
    project_box,
    random_init,
)
from ._steps import margin
from .apgd import APGD, apgd_checkpoints, dlr_loss
from .autoattack import AutoAttack, resolve_attack
from .langevin import Langevin
from .minimum_norm import MinimumNorm
from .pgd import FGSM, PGD
from .square import Square
from .synth import GeneratorSynth

__all__ = [
    "APGD",
    "Attack",
    "AutoAttack",
    "FGSM",
    "GeneratorSynth",
    "Langevin",
    "MinimumNorm",
    "PGD",
    "Square",
    "apgd_checkpoints",
    "dlr_loss",
    "margin",
    "normalize_gradient",
    "perturbation_norm",
    "project",
    "project_ball",
    "project_box",
    "random_init",
    "resolve_attack",
]
