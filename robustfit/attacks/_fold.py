"""Batch norm folded into the convolution before it, for the training attack.

In eval mode, batch norm after a convolution is a per-channel affine map, so
``bn(conv(x))`` is one convolution with the weights scaled by
``s = weight / sqrt(running_var + eps)`` and the bias ``(b - running_mean) * s
+ bn.bias``. An attack that differentiates with respect to the input only (PGD,
FGSM, Langevin) can run on that network and skip batch norm's forward and
backward passes, memory-bound kernels that are a large share of a ResNet's
attack step on a GPU.

:func:`folded` traces the module with :mod:`torch.fx` once (in eval mode),
replaces each convolution whose only user is a batch-norm layer by a
:class:`_FoldedConvBN` holding the folded weights in buffers, and returns that
traced module, which shares every parameter with the original. Before each
attack :func:`folded` writes the current folded weights into those buffers in
place, so optimizer steps are seen (a CUDA graph of the attack reads the same
buffers). Modules that cannot be traced, that have forward hooks (a traced
module would not run the hooks of the modules it inlines), that are compiled,
or that have no convolution followed by batch norm are returned unchanged.

The traced module is checked once, when it is built, against the module's
logits on the batch about to be attacked, and dropped if they differ beyond
rounding (a trace that baked in a data-dependent branch). It is rebuilt when
the module's structure, parameter storage or forward hooks change; what
``forward`` reads besides its input, parameters and buffers (plain Python
attributes) is frozen at the trace, as in any traced or compiled module.

Folding changes the rounding, not the function: the examples are those of the
unfolded network up to float rounding. robustfit folds the training attack
only (``AdversarialClassifier(fold_batchnorm=...)``); evaluation attacks run on
the module itself.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ._base import _BATCHNORM_FORWARDS, batchnorm_scale, eval_mode
from ._graph import hook_state, storage_state

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FOLDED = weakref.WeakKeyDictionary()  # module -> (fingerprint, traced module or None)


class _FoldedConvBN(nn.Module):
    """``bn(conv(x))`` for ``bn`` in eval mode, as one convolution.

    The folded weight and bias are buffers (not parameters: no gradient reaches
    them) that :meth:`refresh` recomputes in place from ``conv`` and ``bn``.
    """

    def __init__(self, conv, bn):
        super().__init__()
        self.conv, self.bn = conv, bn
        self.register_buffer("weight", torch.empty_like(conv.weight), persistent=False)
        self.register_buffer(
            "bias", torch.empty(conv.out_channels, dtype=conv.weight.dtype,
                                device=conv.weight.device), persistent=False)
        self.refresh()

    @torch.no_grad()
    def refresh(self):
        conv, bn = self.conv, self.bn
        scale = batchnorm_scale(bn.running_var, bn.weight, bn.eps)
        self.weight.copy_(conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))))
        shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
        shift = shift * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        self.bias.copy_(shift)

    def forward(self, x):
        return self.conv._conv_forward(x, self.weight, self.bias)


def _fingerprint(module):
    return tuple((id(m), type(m)) for m in module.modules()), storage_state(module), hook_state(module)


@torch.no_grad()
def _agrees(module, traced, example):
    """Whether ``traced`` computes ``module``'s logits on ``example`` (a check of
    the trace, run once per build: a wrong trace differs by far more than rounding)."""
    with eval_mode(module):
        want = module(example).float()
        got = traced(example).float()
    if want.shape != got.shape:
        return False
    scale = float(want.abs().max()) + 1e-6
    return float((want - got).abs().max()) <= 0.05 * scale


def _trace(module):
    """The traced module with its conv-bn pairs folded, or None."""
    if hasattr(module, "_orig_mod") or any(hook_state(module)):
        return None
    try:
        with eval_mode(module):
            traced = torch.fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 - an untraceable module is attacked as it is
        return None
    modules = dict(traced.named_modules())
    folds = 0
    for node in list(traced.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if (not isinstance(bn, nn.modules.batchnorm._BatchNorm)
                or type(bn).forward not in _BATCHNORM_FORWARDS or bn.running_mean is None
                or len(node.args) != 1 or node.kwargs):
            continue
        prev = node.args[0]
        if not (isinstance(prev, torch.fx.Node) and prev.op == "call_module"
                and len(prev.users) == 1 and len(prev.args) == 1 and not prev.kwargs):
            continue
        conv = modules.get(prev.target)
        if type(conv) not in _CONVS or conv.out_channels != bn.num_features:
            continue
        name = f"_robustfit_folded_{folds}"
        traced.add_submodule(name, _FoldedConvBN(conv, bn))
        prev.target = name
        node.replace_all_uses_with(prev)
        traced.graph.erase_node(node)
        folds += 1
    if not folds:
        return None
    traced.graph.lint()
    traced.recompile()
    return traced


def folded(module, example=None):
    """``module`` with its conv-bn pairs folded, weights current; or ``module``.

    Parameters
    ----------
    module : torch.nn.Module
        The network an input-gradient attack is about to run on.
    example : torch.Tensor, optional
        A batch of inputs: when the folded module is built, its logits on it
        are compared with ``module``'s, and a disagreement beyond rounding
        keeps ``module`` unfolded.

    Returns
    -------
    module : torch.nn.Module
        A traced module sharing ``module``'s parameters (cached per module and
        rebuilt when its structure, modes or parameter storage change), or
        ``module`` itself when nothing can be folded.
    """
    fingerprint = _fingerprint(module)
    cached = _FOLDED.get(module)
    if cached is None or cached[0] != fingerprint:
        traced = _trace(module)
        if traced is not None and example is not None and not _agrees(module, traced, example):
            traced = None
        cached = (fingerprint, traced)
        _FOLDED[module] = cached
    traced = cached[1]
    if traced is None:
        return module
    for m in traced.modules():
        if isinstance(m, _FoldedConvBN):
            m.refresh()
    return traced


def release_folded(module):
    """Forget the folded copy of ``module``; return it (None if there was none)."""
    cached = _FOLDED.pop(module, None)
    return None if cached is None else cached[1]
