"""Reference networks for the examples, tests and benchmarks.

Every network returns logits. Constructors take ``n_classes`` and, for images,
``in_channels``; :class:`robustfit.AdversarialClassifier` fills both in from
the data when they are not given as ``module__n_classes`` or
``module__in_channels``.
"""

from __future__ import annotations

import torch
from torch import nn


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


def DigitsCNN(n_classes=10, in_channels=1, width=32, hidden=128):
    """:class:`SmallCNN` sized for sklearn's 8x8 digits.

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

    Returns
    -------
    module : SmallCNN
    """
    return SmallCNN(n_classes, in_channels, width=width, hidden=hidden, input_size=8)


def MnistCNN(n_classes=10, in_channels=1, width=16, hidden=100):
    """:class:`SmallCNN` sized for 28x28 MNIST images.

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

    Returns
    -------
    module : SmallCNN
    """
    return SmallCNN(n_classes, in_channels, width=width, hidden=hidden, input_size=28)


def ResNet18(n_classes=10, in_channels=3):
    """CIFAR-style ResNet-18 built on torchvision's ``resnet18``.

    The ImageNet stem (7x7 stride-2 convolution and max-pooling) is replaced by
    a 3x3 stride-1 convolution, as is usual for 32x32 inputs.

    Parameters
    ----------
    n_classes : int, default=10
        Number of output logits.
    in_channels : int, default=3
        Number of input channels.

    Returns
    -------
    module : torchvision.models.ResNet
    """
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=n_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


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
