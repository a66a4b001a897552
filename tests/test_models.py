"""Reference networks: output shapes and the default choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustfit.models import MLP, DigitsCNN, MnistCNN, ResNet18, SmallCNN, default_module


def _out(net, shape):
    torch.manual_seed(0)
    with torch.no_grad():
        return net(torch.rand(*shape))


@pytest.mark.parametrize("kw,shape,n_out", [
    ({"input_size": 8}, (2, 1, 8, 8), 10),
    ({"input_size": 28}, (2, 1, 28, 28), 10),
    ({"input_size": 12, "in_channels": 3, "n_classes": 4}, (3, 3, 12, 12), 4),
    ({"input_size": 8, "width": 4, "hidden": 8, "n_classes": 2}, (1, 1, 8, 8), 2),
])
def test_small_cnn_shapes(kw, shape, n_out):
    assert _out(SmallCNN(**kw), shape).shape == (shape[0], n_out)


def test_small_cnn_rejects_bad_input_size():
    with pytest.raises(ValueError, match="input_size must be divisible by 4, got 10"):
        SmallCNN(input_size=10)


def test_small_cnn_is_small():
    n = sum(p.numel() for p in MnistCNN().parameters())
    assert n < 2_000_000


def test_digits_and_mnist_cnn():
    assert _out(DigitsCNN(), (4, 1, 8, 8)).shape == (4, 10)
    assert _out(DigitsCNN(n_classes=3, in_channels=2), (4, 2, 8, 8)).shape == (4, 3)
    assert _out(MnistCNN(), (4, 1, 28, 28)).shape == (4, 10)
    assert _out(MnistCNN(n_classes=5), (1, 1, 28, 28)).shape == (1, 5)
    with pytest.raises(RuntimeError):
        _out(DigitsCNN(), (1, 1, 28, 28))  # sized for 8x8 only


def test_resnet18_is_torchvisions_network():
    """The class adopts torchvision's layers: the same state_dict keys and the same outputs
    as torchvision's resnet18 with the CIFAR stem, given the same weights."""
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    ours = ResNet18(n_classes=7, in_channels=1).eval()
    ref = models.resnet18(weights=None, num_classes=7)
    ref.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    ref.maxpool = nn.Identity()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(ours(x), ref.eval()(x))


def test_resnet18():
    net = ResNet18(n_classes=7).eval()
    assert _out(net, (2, 3, 32, 32)).shape == (2, 7)
    gray = ResNet18(n_classes=10, in_channels=1).eval()
    assert _out(gray, (2, 1, 28, 28)).shape == (2, 10)
    # CIFAR stem: a 3x3 stride-1 first convolution and no max-pooling
    assert gray.conv1.kernel_size == (3, 3) and gray.conv1.stride == (1, 1)
    assert isinstance(gray.maxpool, nn.Identity)


def test_mlp():
    assert _out(MLP(n_features=5), (3, 5)).shape == (3, 2)
    assert _out(MLP(n_features=64, n_classes=10, hidden=(8,)), (3, 1, 8, 8)).shape == (3, 10)
    linear = [m for m in MLP(n_features=6, n_classes=3, hidden=(4, 5)).modules()
              if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(6, 4), (4, 5), (5, 3)]


@pytest.mark.parametrize("shape,cls", [
    ((1, 8, 8), SmallCNN),
    ((1, 28, 28), SmallCNN),
    ((3, 32, 32), SmallCNN),
    ((1, 10, 10), MLP),  # side not divisible by 4
    ((1, 8, 12), MLP),  # not square
    ((20,), MLP),
])
def test_default_module(shape, cls):
    net = default_module(shape, 6)
    assert type(net) is cls
    assert _out(net, (2, *shape)).shape == (2, 6)


def test_default_module_passes_constructor_arguments():
    net = default_module((1, 8, 8), 3, width=4)
    assert [m for m in net.modules() if isinstance(m, nn.Conv2d)][0].out_channels == 4
    assert _out(net, (2, 1, 8, 8)).shape == (2, 3)
    mlp = default_module((7,), 2, hidden=(5,))
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [5, 2]
