"""CIFAR and ImageNet ResNets built from switchable layers.

Activations are quantized at the *input* of each quantized conv; the residual sum stays
in full precision (clamping the identity path cripples ResNets; docs/method.md).
The first conv and the classifier are full precision unless
``spec.quantize_first_last``; projection shortcuts unless ``spec.quantize_shortcut``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.layers import BitSpecificBN, QConv2d, QLinear, QuantSpec


def conv3x3(cin, cout, spec, stride=1, quantize=True):
    return QConv2d(cin, cout, 3, spec, stride=stride, padding=1, quantize=quantize)


def conv1x1(cin, cout, spec, stride=1, quantize=True):
    return QConv2d(cin, cout, 1, spec, stride=stride, quantize=quantize)


class QuantizableNet(nn.Module):
    """Base class: remembers the spec so callers can ask a model for its modes."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec
        self.bit_modes = spec.modes


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:  # private statistics: γ, β live above
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_stages(block, widths, n, spec) -> list[nn.Sequential]:
    """Three stages of n blocks; the first block of stages 2 and 3 halves the resolution."""
    stages, cin = [], widths[0]
    for i, w in enumerate(widths):
        blocks = []
        for j in range(n):
            blocks.append(block(cin, w, 2 if (i > 0 and j == 0) else 1, spec))
            cin = w
        stages.append(nn.Sequential(*blocks))
    return stages


# ------------------------------------------------------------------- CIFAR post-activation
class CifarBasicBlock(nn.Module):
    """He et al. CIFAR block with the parameter-free "option A" shortcut (zero-padded stride-2 identity)."""

    def __init__(self, cin, cout, stride, spec):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, spec, stride)
        self.bn1 = BitSpecificBN(cout, spec)
        self.conv2 = conv3x3(cout, cout, spec)
        self.bn2 = BitSpecificBN(cout, spec)
        self.pad = cout - cin if (stride != 1 or cin != cout) else 0
        self.stride, self.cin = stride, cin

    def shortcut(self, x):
        if self.pad == 0 and self.stride == 1:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.pad // 2
        slots = x.shape[1] // self.cin  # a mode batch (qdnn_cli/quant/slots.py) pads each slot's channels
        if slots > 1:
            return F.pad(x.unflatten(1, (slots, self.cin)), (0, 0, 0, 0, half, self.pad - half)).flatten(1, 2)
        return F.pad(x, (0, 0, 0, 0, half, self.pad - half))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(QuantizableNet):
    def __init__(self, depth: int, spec: QuantSpec, num_classes=100, in_channels=3, widths=(16, 32, 64)):
        super().__init__(spec)
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        fl = spec.quantize_first_last
        self.conv1 = QConv2d(in_channels, widths[0], 3, spec, padding=1, quantize=fl, quantize_input=False)
        self.bn1 = BitSpecificBN(widths[0], spec)
        self.layer1, self.layer2, self.layer3 = cifar_stages(CifarBasicBlock, widths, n, spec)
        self.fc = QLinear(widths[-1], num_classes, spec, quantize=fl)
        _init_weights(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------- pre-activation (Any-Precision)
class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, spec):
        super().__init__()
        self.bn1 = BitSpecificBN(cin, spec)
        self.conv1 = conv3x3(cin, cout, spec, stride)
        self.bn2 = BitSpecificBN(cout, spec)
        self.conv2 = conv3x3(cout, cout, spec)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = conv1x1(cin, cout, spec, stride, quantize=spec.quantize_shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet(QuantizableNet):
    """Pre-activation CIFAR ResNet (6n+2) with a width multiplier (Any-Precision uses ×5)."""

    def __init__(self, depth: int, spec: QuantSpec, num_classes=10, in_channels=3, width=1):
        super().__init__(spec)
        n = (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        fl = spec.quantize_first_last
        self.conv1 = QConv2d(in_channels, widths[0], 3, spec, padding=1, quantize=fl, quantize_input=False)
        self.layer1, self.layer2, self.layer3 = cifar_stages(PreActBlock, widths, n, spec)
        self.bn = BitSpecificBN(widths[-1], spec)
        self.fc = QLinear(widths[-1], num_classes, spec, quantize=fl)
        _init_weights(self)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------- torchvision layout
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, spec, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, spec, stride)
        self.bn1 = BitSpecificBN(planes, spec)
        self.conv2 = conv3x3(planes, planes, spec)
        self.bn2 = BitSpecificBN(planes, spec)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, spec, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(cin, planes, spec)
        self.bn1 = BitSpecificBN(planes, spec)
        self.conv2 = conv3x3(planes, planes, spec, stride)
        self.bn2 = BitSpecificBN(planes, spec)
        self.conv3 = conv1x1(planes, planes * 4, spec)
        self.bn3 = BitSpecificBN(planes * 4, spec)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(QuantizableNet):
    """torchvision's ResNet layout (same parameter names), with switchable layers.

    ``stem="imagenet"``: 7×7/2 conv + max-pool (ImageNet). ``stem="cifar"``: 3×3/1 conv, no
    pool (the common CIFAR ResNet-18).
    """

    def __init__(self, block, layers, spec: QuantSpec, num_classes=1000, in_channels=3, stem="imagenet"):
        super().__init__(spec)
        fl = spec.quantize_first_last
        if stem == "imagenet":
            self.conv1 = QConv2d(in_channels, 64, 7, spec, stride=2, padding=3, quantize=fl, quantize_input=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = QConv2d(in_channels, 64, 3, spec, padding=1, quantize=fl, quantize_input=False)
            self.maxpool = nn.Identity()
        self.bn1 = BitSpecificBN(64, spec)
        self.inplanes = 64
        self.layer1 = self._make_layer(block, 64, layers[0], 1, spec)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, spec)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, spec)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, spec)
        self.fc = QLinear(512 * block.expansion, num_classes, spec, quantize=fl)
        _init_weights(self)

    def _make_layer(self, block, planes, n, stride, spec):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, spec, stride, quantize=spec.quantize_shortcut),
                BitSpecificBN(planes * block.expansion, spec),
            )
        blocks = [block(self.inplanes, planes, stride, spec, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes, 1, spec) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_torchvision_weights(model: nn.Module, tv_state: dict) -> None:
    """Initialise from a torchvision ResNet state dict: shared weights copied as they are,
    and every mode's BN initialised from the single torchvision BN."""
    own = model.state_dict()
    mapped = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, BitSpecificBN):
            if module.private_stats:
                for suffix in ("weight", "bias"):
                    if f"{prefix}{suffix}" in tv_state:
                        mapped[f"{prefix}{suffix}"] = tv_state[f"{prefix}{suffix}"]
            for key in module.bn:
                for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    src = f"{prefix}{suffix}"
                    if src in tv_state:
                        mapped[f"{prefix}bn.{key}.{suffix}"] = tv_state[src]
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            for suffix in ("weight", "bias"):
                if f"{prefix}{suffix}" in own and f"{prefix}{suffix}" in tv_state:
                    mapped[f"{prefix}{suffix}"] = tv_state[f"{prefix}{suffix}"]
    missing = [k for k in own if k not in mapped and not _is_quantizer_param(k)]
    if missing:
        raise ValueError(f"torchvision weights do not cover this model: {len(missing)} tensors missing, e.g. {missing[0]}")
    for k, v in mapped.items():
        if own[k].shape != v.shape:
            raise ValueError(f"torchvision weights do not fit: {k} has shape {tuple(v.shape)}, model wants {tuple(own[k].shape)}")
    model.load_state_dict(mapped, strict=False)


def _is_quantizer_param(key: str) -> bool:
    return ".weight_quant." in key or ".act_quant." in key


# ------------------------------------------------------------------- tiny (quickstart, tests)
class TinyNet(QuantizableNet):
    """Three-conv net for 8×8–32×32 inputs: the offline quickstart and unit tests."""

    def __init__(self, spec: QuantSpec, num_classes=10, in_channels=1, width=32, norm=True):
        super().__init__(spec)
        fl = spec.quantize_first_last
        # norm=False: no BatchNorm at all, for exact data-parallel equivalence tests
        # (per-process BN batch statistics differ from full-batch ones by design).
        bn = (lambda c: BitSpecificBN(c, spec)) if norm else (lambda c: nn.Identity())
        self.conv1 = QConv2d(in_channels, width, 3, spec, padding=1, quantize=fl, quantize_input=False)
        self.bn1 = bn(width)
        self.conv2 = conv3x3(width, width * 2, spec, stride=2)
        self.bn2 = bn(width * 2)
        self.conv3 = conv3x3(width * 2, width * 2, spec)
        self.bn3 = bn(width * 2)
        self.fc = QLinear(width * 2, num_classes, spec, quantize=fl)
        _init_weights(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
