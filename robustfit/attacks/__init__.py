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
from .fab import FAB, hyperplane_projection
from .langevin import Langevin
from .minimum_norm import MinimumNorm
from .noise import GaussianNoise, gaussian_copies
from .pgd import FGSM, PGD
from .smoothadv import SmoothAdv, smoothed_nll
from .square import Square
from .synth import GeneratorSynth

__all__ = [
    "APGD",
    "Attack",
    "AutoAttack",
    "FAB",
    "FGSM",
    "GaussianNoise",
    "GeneratorSynth",
    "Langevin",
    "MinimumNorm",
    "PGD",
    "SmoothAdv",
    "Square",
    "apgd_checkpoints",
    "dlr_loss",
    "gaussian_copies",
    "hyperplane_projection",
    "margin",
    "normalize_gradient",
    "perturbation_norm",
    "project",
    "project_ball",
    "project_box",
    "random_init",
    "resolve_attack",
    "smoothed_nll",
]
