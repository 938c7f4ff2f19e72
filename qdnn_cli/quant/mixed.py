"""Per-layer mixed precision at run time: a bit configuration gives every quantized layer
its own weight and activation bit-width, drawn from the modes the model was trained in.

A configuration is a default plus per-layer entries, each ``wXaY`` (``4`` = ``w4a4``,
``32`` = full precision)::

    default: w4a4
    layers:
      layer1.0.conv1: w2a4
      layer3.2.conv2: w8a8

Which BatchNorm a layer's output uses is decided by the *quantized layer registered just
before it* (conv → BN in the ResNets here), whose bits are (w, a): the BN of mode ``wXaY``
when the model was trained in it, else the BN of uniform mode ``w``, else that of the
trained mode with weight bits ``w`` and the nearest activation bits (:func:`bn_mode`). A
BN that follows a full-precision layer (the stem) follows the default's bits. Under a
uniform configuration — ``w4a4``, or ``w2a4`` in a model trained in w2a4 — this is
exactly :func:`~.layers.set_bit_mode`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from torch import nn

from .layers import BitSpecificBN, QConv2d, QLinear, current_bit_mode, model_modes, set_bit_mode
from .modes import BitModeError, Mode, act_bits, mode_bits, parse_mode, weight_bits
from .quantizers import FULL_PRECISION


@dataclass(frozen=True, order=True)
class LayerBits:
    w: int
    a: int

    @classmethod
    def parse(cls, value) -> "LayerBits":
        """``w4a8``, ``4`` / ``"4"`` (= w4a4), ``32`` / ``fp`` (full precision)."""
        try:
            return cls(*mode_bits(parse_mode(value)))
        except BitModeError:
            raise BitModeError(f"{value!r} is not a bit setting: write wXaY (e.g. w4a8), a bit mode (4) or fp") from None

    @property
    def label(self) -> str:
        if self.w == self.a:
            return "fp" if self.w == FULL_PRECISION else str(self.w)
        return f"w{self.w}a{self.a}"


@dataclass(frozen=True)
class BitConfig:
    default: LayerBits
    layers: tuple[tuple[str, LayerBits], ...] = field(default=())

    @classmethod
    def uniform(cls, mode: Mode) -> "BitConfig":
        """Every layer at one mode's bits (``4``, ``32``, ``"w2a4"``)."""
        return cls(LayerBits(*mode_bits(parse_mode(mode))))

    @classmethod
    def from_dict(cls, d: dict) -> "BitConfig":
        if not isinstance(d, dict) or "default" not in d or set(d) - {"default", "layers"}:
            raise BitModeError("a bit configuration has a 'default' (e.g. w4a4) and optional 'layers' (name: wXaY)")
        layers = d.get("layers") or {}
        if not isinstance(layers, dict):
            raise BitModeError("'layers' of a bit configuration maps layer names to wXaY")
        return cls(LayerBits.parse(d["default"]), tuple(sorted((str(k), LayerBits.parse(v)) for k, v in layers.items())))

    @classmethod
    def load(cls, path: str | Path) -> "BitConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"bit configuration {path} does not exist")
        try:
            return cls.from_dict(yaml.safe_load(path.read_text()))
        except yaml.YAMLError as e:
            raise BitModeError(f"{path} is not YAML: {str(e).splitlines()[0]}") from None

    def to_dict(self) -> dict:
        out: dict = {"default": self.default.label}
        if self.layers:
            out["layers"] = {k: v.label for k, v in self.layers}
        return out

    def save(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def bits_of(self, layer: str) -> LayerBits:
        return dict(self.layers).get(layer, self.default)

    def all_bits(self) -> set[int]:
        return self.weight_bits() | self.act_bits()

    def weight_bits(self) -> set[int]:
        return {lb.w for lb in [self.default, *dict(self.layers).values()]}

    def act_bits(self) -> set[int]:
        return {lb.a for lb in [self.default, *dict(self.layers).values()]}

    def as_mode(self) -> Mode | None:
        """The mode this configuration is when every layer has the default's bits, else None."""
        return None if self.layers else parse_mode(f"w{self.default.w}a{self.default.a}")


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose bits a configuration sets, by module name (registration order)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear)) and m.quantize}


def bn_sources(model: nn.Module) -> dict[str, str | None]:
    """Each Bit-Specific BN's feeding layer: the quantized layer registered just before it
    (None when the layer before it is a full-precision one, or there is none)."""
    cached = model.__dict__.get("_qdnn_bn_sources")
    if cached is None:
        cached, last = {}, None
        for name, m in model.named_modules():
            if isinstance(m, (QConv2d, QLinear)):
                last = name if m.quantize else None
            elif isinstance(m, BitSpecificBN):
                cached[name] = last
        model.__dict__["_qdnn_bn_sources"] = cached
    return cached


def check_config(model: nn.Module, cfg: BitConfig) -> None:
    """Every layer it names exists and every bit-width is one the model was built for."""
    layers = quantized_layers(model)
    unknown = [k for k, _ in cfg.layers if k not in layers]
    if unknown:
        shown = ", ".join(list(layers)[:4])
        raise BitModeError(f"unknown layer {unknown[0]!r} in the bit configuration: this model's quantized layers "
                           f"are {shown}, ... ({len(layers)} in all)")
    modes = model_modes(model)
    for kind, used, built in (("weight", cfg.weight_bits(), weight_bits(modes)),
                              ("activation", cfg.act_bits(), act_bits(modes))):
        foreign = sorted(used - set(built))
        if foreign:
            raise BitModeError(f"{kind} bit-widths {foreign} are not in this model's modes {list(modes)} "
                               f"({kind} bits it has: {built})")


def bn_mode(modes, w: int, a: int) -> Mode:
    """The trained mode whose BN serves a layer at (w, a): ``wXaY`` itself, else uniform
    ``w``, else the mode with weight bits ``w`` and the nearest activation bits."""
    exact = parse_mode(f"w{w}a{a}")
    if exact in modes:
        return exact
    if w in modes:
        return w
    same_w = [m for m in modes if mode_bits(m)[0] == w]
    if not same_w:
        raise BitModeError(f"weight bits {w} are in none of this model's modes {list(modes)}")
    return min(same_w, key=lambda m: (abs(mode_bits(m)[1] - a), -mode_bits(m)[1]))


def apply_bits(model: nn.Module, setting) -> nn.Module:
    """A bit mode (``4``, ``"w2a4"``) or a configuration, whichever ``setting`` is."""
    if isinstance(setting, BitConfig):
        return set_bit_config(model, setting)
    return set_bit_mode(model, setting)


def set_bit_config(model: nn.Module, cfg: BitConfig | dict) -> nn.Module:
    """Give each quantized layer the weight/activation bits ``cfg`` names (the default
    elsewhere) and each Bit-Specific BN the mode :func:`bn_mode` picks for its feeding layer."""
    if isinstance(cfg, dict):
        cfg = BitConfig.from_dict(cfg)
    check_config(model, cfg)
    modes = model_modes(model)
    names = dict(model.named_modules())
    for name, layer in quantized_layers(model).items():
        lb = cfg.bits_of(name)
        layer.w_bits, layer.a_bits = lb.w, lb.a
    for name, source in bn_sources(model).items():
        lb = cfg.bits_of(source) if source else cfg.default
        names[name].set_mode(bn_mode(modes, lb.w, lb.a))
    mode = cfg.as_mode()
    model.__dict__["_qdnn_bits"] = mode if mode in modes else cfg
    return model


@contextlib.contextmanager
def bit_config(model: nn.Module, cfg: BitConfig | dict) -> Iterator[nn.Module]:
    """``with bit_config(model, cfg): logits = model(x)`` — restores the previous mode or
    configuration afterwards."""
    previous = current_bit_mode(model)
    set_bit_config(model, cfg)
    try:
        yield model
    finally:
        if isinstance(previous, BitConfig):
            set_bit_config(model, previous)
        else:
            set_bit_mode(model, previous)
