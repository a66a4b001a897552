"""Adversarial attacks as parameter objects.

Every attack is called as ``attack(module, X, y) -> X_adv`` on any
:class:`torch.nn.Module` that returns logits, and works as the ``attack`` of
:class:`robustfit.AdversarialClassifier`.
"""

from ._base import (
    Attack,
    normalize_gradient,
    perturbation_norm,
    project,
    project_ball,
    project_box,
    random_init,
)
from .pgd import FGSM, PGD

__all__ = [
    "Attack",
    "FGSM",
    "PGD",
    "normalize_gradient",
    "perturbation_norm",
    "project",
    "project_ball",
    "project_box",
    "random_init",
]
