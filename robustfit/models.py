"""Reference networks for the examples, tests and benchmarks.

Every network returns logits. Constructors take ``n_classes`` and, for images,
``in_channels``; :class:`robustfit.AdversarialClassifier` fills both in from
the data when they are not given as ``module__n_classes`` or
``module__in_channels``.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._utils import optional_import


class MLP(nn.Module):
    """A multi-layer perceptron for tabular data of shape ``(n, n_features)``.

    Parameters
    ----------
    n_features : int
        Number of input features (also accepts flattened images).
    n_classes : int, default=2
        Number of output logits.
    hidden : tuple of int, default=(128, 128)
        Widths of the hidden layers.

    Examples
    --------
    >>> import torch
    >>> from robustfit.models import MLP
    >>> MLP(n_features=4, n_classes=3)(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, n_features, n_classes=2, hidden=(128, 128)):
        super().__init__()
        layers, width = [nn.Flatten()], n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """A two-convolution CNN for small images: 8x8 digits or 28x28 MNIST.

    Two 4x4 convolutions with stride 2 (each halves the resolution), ReLUs,
    and a hidden fully connected layer: the MNIST network of Wong, Rice &
    Kolter (2020), "Fast is better than free". Striding instead of pooling
    keeps it cheap: about 0.6 M multiply-adds per 28x28 image with the
    defaults, so adversarial training runs on a CPU.

    Parameters
    ----------
    n_classes : int, default=10
        Number of output logits.
    in_channels : int, default=1
        Number of input channels.
    width : int, default=16
        Channels of the first convolution; the second has twice as many.
    hidden : int, default=100
        Width of the fully connected layer.
    input_size : int, default=28
        Height (= width) of the input images; must be divisible by 4.

    Examples
    --------
    >>> import torch
    >>> from robustfit.models import SmallCNN
    >>> SmallCNN(input_size=8)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, n_classes=10, in_channels=1, width=16, hidden=100, input_size=28):
        super().__init__()
        if input_size % 4:
            raise ValueError(f"input_size must be divisible by 4, got {input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
        )
        flat = 2 * width * (input_size // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class DigitsCNN(SmallCNN):
    """:class:`SmallCNN` sized for sklearn's 8x8 digits.

    A class (not a factory function), so a classifier built on it saves
    without pickle (:meth:`AdversarialClassifier.save <robustfit.AdversarialClassifier.save>`).

    Parameters
    ----------
    n_classes : int, default=10
        Number of output logits.
    in_channels : int, default=1
        Number of input channels.
    width : int, default=32
        Channels of the first convolution.
    hidden : int, default=128
        Width of the fully connected layer.
    """

    def __init__(self, n_classes=10, in_channels=1, width=32, hidden=128):
        super().__init__(n_classes, in_channels, width=width, hidden=hidden, input_size=8)


class MnistCNN(SmallCNN):
    """:class:`SmallCNN` sized for 28x28 MNIST images.

    A class (not a factory function), so a classifier built on it saves
    without pickle (:meth:`AdversarialClassifier.save <robustfit.AdversarialClassifier.save>`).

    Parameters
    ----------
    n_classes : int, default=10
        Number of output logits.
    in_channels : int, default=1
        Number of input channels.
    width : int, default=16
        Channels of the first convolution.
    hidden : int, default=100
        Width of the fully connected layer.
    """

    def __init__(self, n_classes=10, in_channels=1, width=16, hidden=100):
        super().__init__(n_classes, in_channels, width=width, hidden=hidden, input_size=28)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 built on torchvision's ``resnet18``.

    The ImageNet stem (7x7 stride-2 convolution and max-pooling) is replaced by
    a 3x3 stride-1 convolution, as is usual for 32x32 inputs. The layers are
    torchvision's (``resnet18(weights=None)``), adopted as this module's own,
    so the ``state_dict`` keys are torchvision's (``conv1.weight``,
    ``layer1.0.bn1.running_mean``, ..., ``fc.bias``) and the forward pass is
    its ``ResNet.forward``. Because it is a class (not a factory function),
    a classifier trained with ``module=ResNet18`` can be written by
    :meth:`~robustfit.AdversarialClassifier.save` and read back without
    pickle. Needs the ``vision`` extra (torchvision).

    Parameters
    ----------
    n_classes : int, default=10
        Number of output logits.
    in_channels : int, default=3
        Number of input channels.

    Examples
    --------
    >>> import torch
    >>> from robustfit.models import ResNet18
    >>> net = ResNet18(n_classes=10).eval()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, n_classes=10, in_channels=3):
        super().__init__()
        resnet18 = optional_import("torchvision.models", "robustfit.models.ResNet18").resnet18
        net = resnet18(weights=None, num_classes=n_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        for name, child in net.named_children():  # torchvision's layers, under their names
            self.add_module(name, child)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def fill_module_arguments(factory, kwargs, input_shape, n_classes):
    """Fill a module factory's ``n_classes``, ``in_channels`` and ``n_features``
    from the data, where its signature has them and ``kwargs`` does not.

    :class:`~robustfit.AdversarialClassifier` calls this for a ``module`` given
    as a class or factory, so ``module=MnistCNN`` needs no ``module__n_classes``.

    Parameters
    ----------
    factory : callable
        A module class or function.
    kwargs : dict
        The ``module__*`` arguments given by the user (not modified).
    input_shape : tuple of int or None
        Shape of one sample.
    n_classes : int or None
        Number of classes.

    Returns
    -------
    kwargs : dict
        A new dict with the filled-in arguments.

    Examples
    --------
    >>> from robustfit.models import MnistCNN, fill_module_arguments
    >>> fill_module_arguments(MnistCNN, {}, (1, 28, 28), 10)
    {'n_classes': 10, 'in_channels': 1}
    """
    try:
        sig = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    kwargs = dict(kwargs)
    if "n_classes" in sig and "n_classes" not in kwargs and n_classes is not None:
        kwargs["n_classes"] = n_classes
    if "in_channels" in sig and "in_channels" not in kwargs and input_shape and len(input_shape) == 3:
        kwargs["in_channels"] = input_shape[0]
    if "n_features" in sig and "n_features" not in kwargs and input_shape:
        kwargs["n_features"] = int(np.prod(input_shape))
    return kwargs


def default_module(input_shape, n_classes, **kwargs):
    """The network :class:`~robustfit.AdversarialClassifier` builds when
    ``module=None``.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one sample: ``(d,)`` for tabular data, ``(C, H, W)`` for images.
    n_classes : int
        Number of classes.
    **kwargs
        Further constructor arguments of the chosen network (the classifier's
        ``module__*`` parameters), e.g. ``width`` or ``hidden``.

    Returns
    -------
    module : torch.nn.Module
        :class:`SmallCNN` for square images whose side is divisible by 4,
        otherwise an :class:`MLP` on the flattened input.
    """
    if len(input_shape) == 3 and input_shape[1] == input_shape[2] and input_shape[1] % 4 == 0:
        kwargs = {"in_channels": input_shape[0], "input_size": input_shape[1], **kwargs}
        return SmallCNN(n_classes, **kwargs)
    return MLP(int(torch.Size(input_shape).numel()), n_classes, **kwargs)


def penultimate_layer(module):
    """Name of the layer whose *input* is ``module``'s penultimate representation.

    The last :class:`torch.nn.Linear` in ``module.named_modules()`` order: for
    the networks of this module (:class:`MLP`, :class:`SmallCNN` and its
    sizes, :class:`ResNet18`) and most classifiers ending in a linear head,
    that is the output layer, and its input is the feature vector before the
    logits (the authors of Robustness-via-Synthesis take their OT term on it).
    :class:`~robustfit.attacks.GeneratorSynth` with
    ``feature_layer="penultimate"`` reads that input with a forward hook.

    Parameters
    ----------
    module : torch.nn.Module
        A classifier.

    Returns
    -------
    name : str
        The layer's name in ``module.named_modules()`` (``""`` when ``module``
        itself is the linear layer).

    Raises
    ------
    ValueError
        When ``module`` has no :class:`torch.nn.Linear` layer; name the
        representation's layer with ``feature_layer`` instead.

    Examples
    --------
    >>> from robustfit.models import MnistCNN, penultimate_layer
    >>> penultimate_layer(MnistCNN())
    'classifier.3'
    """
    names = [name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
    if not names:
        raise ValueError(
            f"{type(module).__name__} has no torch.nn.Linear layer, so its penultimate representation "
            "cannot be found; pass the name of the representation's layer as feature_layer"
        )
    return names[-1]


# ---------------------------------------------------------------------------
# Perturbation generators (Robustness-via-Synthesis, GeneratorSynth)
# ---------------------------------------------------------------------------
def _cpu_autocast_enabled():
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


class _FoldTransposedConv(torch.autograd.Function):
    """A transposed convolution computed forward as a matrix product and a fold;
    backward by torch's own transposed-convolution kernel (the same gradients)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, output_padding, bias is not None)
        n, c_in, h, w = x.shape
        c_out, kh, kw = weight.shape[1:]
        out_size = tuple((size - 1) * s - 2 * p + k + o for size, s, p, k, o
                         in zip((h, w), stride, padding, (kh, kw), output_padding))
        cols = torch.matmul(weight.reshape(c_in, c_out * kh * kw).t(), x.reshape(n, c_in, h * w))
        out = F.fold(cols, out_size, (kh, kw), padding=padding, stride=stride)
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, output_padding, has_bias = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad.contiguous(), x, weight, [weight.shape[1]] if has_bias else None, list(stride),
            list(padding), [1, 1], True, list(output_padding), 1, mask)
        return gx, gw, gb, None, None, None


class _FoldConvTranspose2d(nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` whose CPU forward pass is a matrix product and a fold.

    The same layer (parameters, ``state_dict``) and the same function up to
    float rounding; the backward pass is torch's. torch's CPU kernel for a
    transposed convolution to few channels is slow: for the generator's last
    layer (8 to 1 channels, 14x14 to 28x28, batch 128, one thread) the fold
    took about 1 ms forward against 2-5 ms (``benchmarks/bench_synth.py``,
    docs/synth.rst). For more output channels torch's kernel is faster, so
    only the last layer uses this class; on other devices, and for groups,
    dilation or other padding modes, torch's own forward runs.
    """

    def forward(self, x, output_size=None):
        if (x.device.type != "cpu" or x.dim() != 4 or output_size is not None or self.groups != 1
                or self.dilation != (1, 1) or self.padding_mode != "zeros"
                or x.dtype != self.weight.dtype or _cpu_autocast_enabled()):
            # under CPU autocast the matrix product would run in bf16 while the
            # backward kernel gets float32 weights: torch's own layer handles it
            return super().forward(x, output_size)
        return _FoldTransposedConv.apply(x, self.weight, self.bias, self.stride, self.padding,
                                         self.output_padding)


class _ImageGenerator(nn.Module):
    """Noise (and optionally the image) to raw perturbations of shape (C, H, W).

    A linear layer to a ``(4 * width, ceil(H/4), ceil(W/4))`` map, then two
    stride-2 transposed convolutions (the first followed by BatchNorm and a
    leaky ReLU, as in the authors' generator) up to ``C`` channels, cropped to
    ``(H, W)``. With ``conditional=True`` the image, average-pooled to each
    resolution, is concatenated to the input of both transposed convolutions.
    The last layer is a transposed convolution rather than a convolution
    because small convolutions are slow to back-propagate on a CPU (measured:
    a 3x3 convolution from 4 channels to 1 on 128 28x28 maps took 7.9 ms
    forward and backward, a 4x4 stride-2 transposed convolution 2.7 ms); on
    a CPU its forward pass runs as a matrix product and a fold
    (:class:`_FoldConvTranspose2d`, the same layer computed faster).
    """

    def __init__(self, input_shape, latent_dim, conditional=False, width=4):
        super().__init__()
        c, h, w = input_shape
        self.shape = (c, h, w)
        self.h0, self.w0 = -(-h // 4), -(-w // 4)
        self.c0 = 4 * width
        self.conditional = conditional
        extra = c if conditional else 0
        self.fc = nn.Linear(latent_dim, self.c0 * self.h0 * self.w0)
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(self.c0 + extra, 2 * width, 4, stride=2, padding=1),
            nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
        )
        self.up2 = _FoldConvTranspose2d(2 * width + extra, c, 4, stride=2, padding=1)

    def _with_image(self, t, x):
        if not self.conditional:
            return t
        return torch.cat([t, F.adaptive_avg_pool2d(x, t.shape[-2:])], dim=1)

    def forward(self, z, x=None):
        c, h, w = self.shape
        t = self.fc(z).view(-1, self.c0, self.h0, self.w0)
        if t.device.type == "cpu":
            # torch's CPU transposed convolution is faster on channels-last input:
            # forward and backward of the generator 6.1-6.2 ms against 6.8-7.3
            # (batch 128, MNIST, one thread); the values agree to float rounding
            t = t.contiguous(memory_format=torch.channels_last)
        t = self.up1(self._with_image(t, x))
        return self.up2(self._with_image(t, x))[:, :, :h, :w]


class _VectorGenerator(nn.Module):
    """Noise (and optionally the input) to raw perturbations of shape (d,)."""

    def __init__(self, input_shape, latent_dim, conditional=False, hidden=128):
        super().__init__()
        self.shape = tuple(input_shape)
        d = int(np.prod(input_shape))
        self.conditional = conditional
        self.net = nn.Sequential(
            nn.Linear(latent_dim + (d if conditional else 0), hidden),
            nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, d),
        )

    def forward(self, z, x=None):
        if self.conditional:
            z = torch.cat([z, x.flatten(1)], dim=1)
        return self.net(z).view(-1, *self.shape)


def default_generator(input_shape, latent_dim, conditional=False, width=None):
    """The generator :class:`~robustfit.attacks.GeneratorSynth` builds when ``generator=None``.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one input sample: ``(C, H, W)`` for images, anything else is
        treated as a flat feature vector.
    latent_dim : int
        Dimension of the random vectors.
    conditional : bool, default=False
        Whether the generator also receives the clean input.
    width : int or None, default=None
        Width of the generator: for images the transposed convolutions have
        ``4 * width`` and ``2 * width`` input channels (``None``: 4, so 16 and
        8; the authors' CIFAR-10 generator has 64 and 32, ``width=16``); for
        tabular data the hidden layer has ``32 * width`` units (``None``: 128).

    Returns
    -------
    generator : torch.nn.Module
        ``forward(z)`` (or ``forward(z, x)`` when conditional) returning raw,
        unbounded perturbations of shape ``(n, *input_shape)``: transposed
        convolutions for images, an MLP otherwise.
    """
    if len(input_shape) == 3:
        return _ImageGenerator(input_shape, latent_dim, conditional, width=4 if width is None else width)
    return _VectorGenerator(input_shape, latent_dim, conditional, hidden=128 if width is None else 32 * width)
