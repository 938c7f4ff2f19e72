"""Model registry: ``build_model(name, spec, num_classes, in_channels)``.

Models know nothing about losses or training; they only take a :class:`QuantSpec`.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from ..quant.layers import QuantSpec
from .resnets import BasicBlock, Bottleneck, CifarResNet, PreActResNet, ResNet, TinyNet, load_torchvision_weights

MODELS: dict[str, Callable] = {
    "resnet20": partial(CifarResNet, 20),
    "resnet32": partial(CifarResNet, 32),
    "resnet56": partial(CifarResNet, 56),
    "preact_resnet20": partial(PreActResNet, 20, width=1),
    "preact_resnet20x5": partial(PreActResNet, 20, width=5),
    "cifar_resnet18": lambda spec, **kw: ResNet(BasicBlock, [2, 2, 2, 2], spec, stem="cifar", **kw),
    "resnet18": lambda spec, **kw: ResNet(BasicBlock, [2, 2, 2, 2], spec, **kw),
    "resnet50": lambda spec, **kw: ResNet(Bottleneck, [3, 4, 6, 3], spec, **kw),
    "tiny": TinyNet,
}


def build_model(name: str, spec: QuantSpec, num_classes: int, in_channels: int = 3, **kwargs):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](spec, num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = ["MODELS", "build_model", "load_torchvision_weights"]
