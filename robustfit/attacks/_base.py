"""Shared machinery of every attack: parameter handling, norms, projections.

Every attack in :mod:`robustfit.attacks` subclasses :class:`Attack`. The
projections onto the epsilon-ball and onto the input box live here, in one
place, so that every attack keeps its iterate feasible in the same way.
"""

from __future__ import annotations

import contextlib
import functools
from numbers import Real

import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from torch.nn.modules.batchnorm import _BatchNorm

from .._utils import rand, rand_like, randn_like
from .._validation import (
    Interval,
    Options,
    ParamsValidationMixin,
    check_attack_data,
    check_bounds,
    check_in_bounds,
)

NORMS = ("linf", "l2")


def _flat_norm(t, ord):
    """Per-sample norm of a batch, shaped for broadcasting against ``t``."""
    flat = t.reshape(t.shape[0], -1)
    if ord == "linf":
        n = flat.abs().amax(dim=1)
    else:
        n = flat.norm(p=2, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


def normalize_gradient(grad, norm):
    """Steepest-ascent direction of unit ``norm`` for a gradient.

    For l_inf this is ``sign(grad)``; for l_2 it is ``grad / ||grad||_2``
    (samples with a zero gradient get a zero direction).
    """
    if norm == "linf":
        return grad.sign()
    return grad / _flat_norm(grad, "l2").clamp_min(1e-12)


def project_ball(delta, epsilon, norm):
    """Project perturbations onto the ``norm`` ball of radius ``epsilon``."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    # reciprocal times epsilon is what ``float / tensor`` computes: a 0-dim tensor
    # epsilon (a CUDA graph's input) then gives the same numbers as a float
    factor = (_flat_norm(delta, "l2").clamp_min(1e-12).reciprocal() * epsilon).clamp(max=1.0)
    return delta * factor


def project_box(x, delta, bounds):
    """Return ``delta`` such that ``x + delta`` lies inside ``bounds``.

    ``bounds=None`` means an unbounded input space (tabular features).
    """
    if bounds is None:
        return delta
    lo, hi = bounds
    return (x + delta).clamp(lo, hi) - x


def project(x, delta, epsilon, norm, bounds):
    """Project onto the epsilon-ball, then onto the input box.

    For l_inf the two sets are boxes, so this is the exact projection onto
    their intersection. For l_2 the box step only shrinks coordinates
    towards ``x``, so the result stays inside the ball as well.
    """
    return project_box(x, project_ball(delta, epsilon, norm), bounds)


class _ProjectLinf(torch.autograd.Function):
    """:func:`project` for ``norm="linf"``, differentiable in ``delta`` with torch's
    clamp gradient (1 where neither clamp is active, boundaries included, else
    0) computed as one product with a mask saved by the forward pass: torch's
    own clamp backward (a ``where`` on a boolean mask, once per clamp) took
    about 0.57 ms per clamp on a batch of 128 MNIST images on one CPU thread,
    five times a product."""

    @staticmethod
    def forward(ctx, x, delta, epsilon, bounds):
        inside = delta.clamp(-epsilon, epsilon)
        mask = inside == delta
        if bounds is not None:
            moved = x + inside
            boxed = moved.clamp(*bounds)
            mask &= boxed == moved
            inside = boxed - x
        ctx.save_for_backward(mask)
        return inside

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return None, grad * mask, None, None


def project_differentiable(x, delta, epsilon, norm, bounds):
    """:func:`project` for a ``delta`` that carries a graph (a generator's output).

    The same values; for l_inf the gradient is computed by :class:`_ProjectLinf`
    (faster on the CPU than autograd through two clamps), for l_2 by autograd.
    ``x`` gets no gradient from the l_inf path.
    """
    if norm == "linf" and torch.is_grad_enabled() and delta.requires_grad:
        return _ProjectLinf.apply(x, delta, float(epsilon), bounds)
    return project(x, delta, epsilon, norm, bounds)


def random_init(x, epsilon, norm, bounds):
    """Draw a perturbation uniformly from the ``norm`` ball, then fit the box."""
    if norm == "linf":
        delta = (rand_like(x) * 2 - 1) * epsilon
    else:
        direction = randn_like(x)
        direction = direction / _flat_norm(direction, "l2").clamp_min(1e-12)
        d = x[0].numel()
        radius = rand((x.shape[0],), device=x.device, dtype=x.dtype) ** (1.0 / d)
        delta = direction * (epsilon * radius).view(-1, *([1] * (x.dim() - 1)))
    return project_box(x, delta, bounds)


def perturbation_norm(x_adv, x, norm):
    """Per-sample ``norm`` of ``x_adv - x`` as a 1-d tensor."""
    return _flat_norm(x_adv - x, norm).flatten()


@contextlib.contextmanager
def eval_mode(module):
    """Put ``module`` in eval mode; restore every submodule's own mode on exit.

    Restoring with ``module.train(was_training)`` would flip submodules that
    the user had put in a different mode (a frozen BatchNorm inside a model in
    train mode), so each submodule's flag is saved and put back.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def batchnorm_scale(var, weight, eps):
    """Eval-mode batch norm's per-channel factor ``weight / sqrt(var + eps)``, in
    float32 at least (``weight`` None: no affine part)."""
    dtype = torch.promote_types(var.dtype, torch.float32)
    scale = torch.rsqrt(var.to(dtype) + eps)
    return scale if weight is None else scale * weight.to(dtype)


class _InputGradBatchNorm(torch.autograd.Function):
    """Batch norm with running statistics whose backward pass computes the
    input's gradient only: ``grad * weight / sqrt(running_var + eps)``, one
    elementwise product that keeps the gradient's memory format.

    torch's own backward of eval-mode batch norm also computes what the weights
    would need and, on channels-last bfloat16 input on CUDA, copies between
    layouts: on ResNet-18 (H200, batch 512) it took a quarter of a PGD step's
    GPU time, and the layout copies most of another fifth.
    """

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps):
        ctx.save_for_backward(batchnorm_scale(var, weight, eps))
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        shape = (1, -1) + (1,) * (grad.dim() - 2)
        return grad * scale.to(grad.dtype).view(shape), None, None, None, None, None


def _input_grad_batchnorm_forward(m, x):
    if m.training or m.running_mean is None:
        return type(m).forward(m, x)
    m._check_input_dim(x)
    return _InputGradBatchNorm.apply(x, m.running_mean, m.running_var, m.weight, m.bias, m.eps)


_BATCHNORM_FORWARDS = (_BatchNorm.forward, torch.nn.SyncBatchNorm.forward)


@contextlib.contextmanager
def input_grads_only(module):
    """Inside the block, ``module``'s batch-norm layers in eval mode give
    gradients with respect to their input only (see :class:`_InputGradBatchNorm`).

    For attacks, which differentiate with respect to the input: the values and
    the input's gradients are unchanged, and no gradient reaches the
    batch-norm weights. Layers of torch's batch-norm classes (or subclasses
    that keep their ``forward``) are switched, by an instance attribute that
    the block removes on exit; a module compiled by :func:`torch.compile` is
    left alone.
    """
    patched = []
    if not hasattr(module, "_orig_mod"):
        for m in module.modules():
            if (isinstance(m, _BatchNorm) and not m.training and m.running_mean is not None
                    and type(m).forward in _BATCHNORM_FORWARDS and "forward" not in vars(m)):
                m.forward = functools.partial(_input_grad_batchnorm_forward, m)
                patched.append(m)
    try:
        yield module
    finally:
        for m in patched:
            vars(m).pop("forward", None)


class Attack(ParamsValidationMixin, BaseEstimator):
    """Base class of robustfit's attacks.

    An attack is a small parameter object, like a scikit-learn estimator: its
    constructor stores the arguments unchanged, ``get_params``/``set_params``
    expose them (so :func:`sklearn.base.clone` and grid searches over
    ``attack__epsilon`` work), and calling it runs the attack on tensors::

        x_adv = attack(module, X, y)

    The module is put in **eval mode** while the attack runs (BatchNorm uses its
    running statistics and does not update them; dropout is off) and restored
    to its previous mode afterwards. Gradients are taken with respect to the
    input only, through :func:`torch.autograd.grad`, so parameters' ``.grad``
    fields are never touched; batch-norm layers compute their input's gradient
    alone (:func:`input_grads_only`).

    Subclasses implement :meth:`_perturb` and declare their parameters'
    constraints in ``_parameter_constraints`` (checked by
    :meth:`validate_params`; see :mod:`robustfit._validation`).
    """

    #: True for attacks whose training examples depend on the module's function
    #: alone (gradients with respect to the input only): the classifier may then
    #: run them on the module with batch norm folded into the convolutions.
    _input_gradients_only = False

    #: What each constructor argument may be; subclasses extend this table.
    _parameter_constraints = {
        "epsilon": [Interval(Real, 0, None, closed="left")],
        "norm": [Options(NORMS)],
        "bounds": ["bounds"],
    }

    def __call__(self, module, X, y):
        """Return adversarial examples for ``X`` against ``module``.

        Parameters
        ----------
        module : torch.nn.Module
            A network that maps a batch of inputs to class logits.
        X : torch.Tensor or numpy.ndarray
            Clean inputs, shape ``(n, ...)``. Numpy input is moved to the
            module's device.
        y : torch.Tensor or numpy.ndarray
            Integer class indices, shape ``(n,)``.

        Returns
        -------
        X_adv : torch.Tensor
            Adversarial inputs of the same shape, inside the epsilon-ball around
            ``X`` and inside ``bounds``. Detached from any graph.
        """
        self.validate_params()
        x, y = _as_tensors(module, X, y)
        check_in_bounds(x, check_bounds(self.bounds))
        return self.perturb(module, x, y)

    def perturb(self, module, x, y):
        """Run the attack on trusted tensors, without validation.

        This is the path :class:`~robustfit.AdversarialClassifier` takes for
        every training batch, after validating the attack and the data once: it
        converts nothing and reads nothing back to the host.

        Parameters
        ----------
        module : torch.nn.Module
            Network returning logits.
        x : torch.Tensor
            Clean inputs on the module's device, inside ``bounds``.
        y : torch.Tensor
            Integer class indices (``torch.long``) on the same device.

        Returns
        -------
        x_adv : torch.Tensor
            Detached adversarial inputs.
        """
        with eval_mode(module), input_grads_only(module), torch.enable_grad():
            x_adv = self._perturb(module, x, y)
        return x_adv.detach()

    def _perturb(self, module, x, y):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement _perturb(module, x, y)")

    # ------------------------------------------------------- training hooks
    # AdversarialClassifier calls these two instead of ``perturb`` alone, so an
    # attack with learned state (GeneratorSynth's generator) can update it and
    # add a term to the classifier's loss. Plain attacks keep the defaults.
    def train_perturb(self, module, x, y):
        """Adversarial examples for one training batch.

        :class:`~robustfit.AdversarialClassifier` calls this for every
        training batch. The default is :meth:`perturb`; attacks that learn
        (such as a perturbation generator) update their own state here first.

        Parameters
        ----------
        module : torch.nn.Module
            The network being trained.
        x : torch.Tensor
            Clean batch on the module's device.
        y : torch.Tensor
            Class indices.

        Returns
        -------
        x_adv : torch.Tensor
            Detached adversarial batch.
        """
        return self.perturb(module, x, y)

    def before_training_forward(self, module):
        """Called right before the classifier's training forward pass on the
        batch :meth:`train_perturb` returned.

        Other passes may come between the two (adversarial weight perturbation
        runs its own on the batch); an attack that records something of the
        training pass for :meth:`regularizer` (a layer's output) prepares for
        it here. The default does nothing.

        Parameters
        ----------
        module : torch.nn.Module
            The network being trained.
        """

    def regularizer(self, module, x, x_adv, y, logits_adv):
        """An extra term for the classifier's training loss, or ``None``.

        Called in train mode right after the forward pass on ``x_adv``; the
        returned scalar is added to the objective's loss. The default adds
        nothing.

        Parameters
        ----------
        module : torch.nn.Module
            The network being trained (in train mode).
        x, x_adv : torch.Tensor
            The clean batch and the batch from :meth:`train_perturb`.
        y : torch.Tensor
            Class indices.
        logits_adv : torch.Tensor
            The module's logits on ``x_adv`` (with the graph).

        Returns
        -------
        term : torch.Tensor or None
        """
        return None

    @property
    def _bounds(self):
        return check_bounds(self.bounds)


def _module_device(module):
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _as_tensors(module, X, y):
    X, y = check_attack_data(X, y)
    device = _module_device(module)
    x = torch.as_tensor(X, dtype=torch.float32 if not torch.is_tensor(X) else None)
    if x.device != device:
        x = x.to(device, non_blocking=True)
    if not x.is_floating_point():
        x = x.float()
    y = torch.as_tensor(y)
    if y.device != device:
        y = y.to(device, non_blocking=True)
    if y.dtype != torch.long:
        y = y.long()
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"X and y have different lengths: {x.shape[0]} and {y.shape[0]}"
        )
    return x, y
