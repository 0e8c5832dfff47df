"""Model zoo, each model sized from the dataset's input shape and class count.

The CNNs follow the architectures used in the FL literature: the LEAF (F)EMNIST CNN
(Caldas et al. 2018), the CIFAR LeNet-5 used by FedAvg/pFedGate baselines, a small CNN with
BatchNorm, and CIFAR-style ResNet18 / VGG11-BN (3x3 stem, no initial max-pool).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedsparse.config import ModelConfig
from fedsparse.errors import ConfigError

IMAGE_MODELS = {"leaf-cnn", "lenet", "cnn-bn", "resnet18", "vgg11-bn"}


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """A feature extractor followed by a classifier whose input width is measured, not guessed."""

    def __init__(self, features: nn.Module, head: list[int], input_shape: tuple[int, ...],
                 num_classes: int) -> None:
        super().__init__()
        self.features = features
        layers: list[nn.Module] = [nn.Flatten()]
        width = _flat_size(features, input_shape)
        for h in head:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def leaf_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
    return ConvNet(features, [2048], input_shape, num_classes)


def lenet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
    return ConvNet(features, [120, 84], input_shape, num_classes)


def cnn_bn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
    return ConvNet(features, [128], input_shape, num_classes)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1)]
    return ConvNet(nn.Sequential(*layers), [], input_shape, num_classes)


def vgg11_bn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    plan = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers: list[nn.Module] = []
    cin = input_shape[0]
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 28x28 inputs survive 5 pools
        else:
            layers += [nn.Conv2d(cin, int(item), 3, padding=1, bias=False),
                       nn.BatchNorm2d(int(item)), nn.ReLU()]
            cin = int(item)
    layers.append(nn.AdaptiveAvgPool2d(1))
    return ConvNet(nn.Sequential(*layers), [], input_shape, num_classes)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate the configured model for this dataset's input shape and classes."""
    if cfg.name in IMAGE_MODELS and len(input_shape) != 3:
        raise ConfigError(f"model '{cfg.name}' needs image inputs (C, H, W) but the data has shape "
                          f"{input_shape}: use --model mlp or --model logreg")
    if cfg.name == "mlp":
        return MLP(input_shape, num_classes, cfg.hidden)
    if cfg.name == "logreg":
        return MLP(input_shape, num_classes, [])
    builders = {"leaf-cnn": leaf_cnn, "lenet": lenet, "cnn-bn": cnn_bn, "resnet18": resnet18,
                "vgg11-bn": vgg11_bn}
    return builders[cfg.name](input_shape, num_classes)
