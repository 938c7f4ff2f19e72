"""Quantized layers, Bit-Specific BatchNorm and bit-mode switching.

Each switchable layer holds its own current weight and activation bits (``w_bits``,
``a_bits``; a Bit-Specific BN its mode), set by :func:`set_bit_mode`. Layers read
nothing global. Switching walks a list of switchable layers cached on the model once,
so calling it per batch costs microseconds.

Mode batch: when a layer's ``slots`` is set (a :class:`SlotPlan`, by :mod:`.slots`), it
runs every slot at once. Activations then carry the slots side by side in the channel
axis (``[batch, slots·channels, ...]``): a convolution is one grouped convolution whose
weight stacks each slot's quantized weight, a BN one normalisation over slots × channels
with each slot's own parameters and statistics. A slot's parameters come from its
*owner*, the same layer of the model it belongs to: all slots of one model in a mode
batch, or the slots of several models of one architecture (runs trained as a pack, each
with its own weights, data and bit modes). A layer given one input per model (the
stem's images) computes it once per model and hands each of that model's slots the result.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .modes import (BitModeError, Mode, act_bits, mode_bits, mode_code, mode_from_code, parse_mode, sort_modes,
                    weight_bits)
from .quantizers import ACT_QUANTIZERS, WEIGHT_QUANTIZERS, quantize_weight_slots


@dataclass(frozen=True)
class SlotPlan:
    """What one layer runs in a mode batch: per slot its setting (``(w, a)`` bits of a
    quantized layer, the key of a BN) and its owner (the layer whose parameters it uses);
    ``runs``: how many consecutive slots each model has (one entry per model)."""

    settings: tuple
    owners: tuple
    runs: tuple[int, ...]

    @property
    def run_owners(self) -> list:
        """The owner of each model's first slot: that model's layer."""
        starts = [sum(self.runs[:i]) for i in range(len(self.runs))]
        return [self.owners[i] for i in starts]


@dataclass(frozen=True)
class QuantSpec:
    """How a model is quantized. Built from the ``quant`` config group. ``modes`` are
    ints (uniform bits) or ``wXaY`` strings (:mod:`.modes`), kept in cost order."""

    modes: tuple[Mode, ...] = (2, 3, 4, 8, 32)
    weight: str = "dorefa"
    act: str = "dorefa"
    bit_specific_bn: bool = True
    quantize_first_last: bool = False
    quantize_shortcut: bool = False
    weight_scale: str = "none"      # DoReFa weights: "mean_abs" multiplies them by E|W|
    weight_max_grad: bool = False   # DoReFa weights: gradient through max|tanh W|
    extra: dict = field(default_factory=dict)
    private_stats: bool = False     # with bit_specific_bn=False: one γ, β for all modes, running statistics per mode

    def __post_init__(self):
        modes = tuple(parse_mode(b) for b in self.modes)
        if not modes:
            raise BitModeError("quant.bits is empty: give at least one bit mode, e.g. [2,3,4,8,32]")
        if len(set(modes)) != len(modes):
            raise BitModeError(f"quant.bits has duplicates: {list(modes)}")
        for kind, name, registry in (("weight", self.weight, WEIGHT_QUANTIZERS), ("act", self.act, ACT_QUANTIZERS)):
            if name not in registry:
                raise ValueError(f"quant.{kind}={name!r} is unknown: choose one of {', '.join(registry)}")
        object.__setattr__(self, "modes", tuple(sort_modes(modes)))
        if self.private_stats and self.bit_specific_bn:
            raise BitModeError("private BN statistics share one γ, β: they need bit_specific_bn=False")

    @property
    def bn(self) -> str:
        """``bit_specific``, ``shared`` or ``private_stats`` (``quant.bn``)."""
        return "private_stats" if self.private_stats else "bit_specific" if self.bit_specific_bn else "shared"

    @classmethod
    def from_config(cls, quant, modes: tuple | None = None, bit_specific_bn: bool | None = None) -> "QuantSpec":
        """The spec of a run's ``quant`` config group (its own ``bits`` unless ``modes`` is
        given). The one place a config becomes a spec; a saved run's missing keys were
        completed with their schema defaults before it gets here. ``quant.bn`` names the
        BN kind; unset, ``quant.bit_specific_bn`` (its older spelling) decides.
        ``bit_specific_bn=True`` asks for one BN per mode whatever the run trained
        (a shared-BN run loaded so that each mode can be re-calibrated alone)."""
        kind = bn_kind(quant)
        private = kind == "private_stats"
        specific = kind == "bit_specific" if bit_specific_bn is None else bool(bit_specific_bn) and not private
        return cls(tuple(parse_mode(b) for b in (modes or quant.bits)), quant.weight, quant.act, specific,
                   bool(quant.quantize_first_last), bool(quant.quantize_shortcut),
                   quant.get("weight_scale", "none"), bool(quant.get("weight_max_grad", False)),
                   private_stats=private)

    @property
    def weight_bits(self) -> tuple[int, ...]:
        return tuple(weight_bits(self.modes))

    @property
    def act_bits(self) -> tuple[int, ...]:
        return tuple(act_bits(self.modes))


BN_KINDS = ("bit_specific", "shared", "private_stats")


def bn_kind(quant) -> str:
    """The BN kind a ``quant`` config group asks for: ``quant.bn``, else from
    ``quant.bit_specific_bn``."""
    kind = quant.get("bn") if hasattr(quant, "get") else getattr(quant, "bn", None)
    if kind is None:
        return "bit_specific" if quant.bit_specific_bn else "shared"
    if kind not in BN_KINDS:
        raise BitModeError(f"quant.bn={kind!r} is unknown: choose one of {', '.join(BN_KINDS)}")
    return kind


class _Switchable:
    """Mixin marker: a module with a ``modes`` attribute that :func:`set_bit_mode` switches."""

    modes: tuple[Mode, ...]


class QConv2d(nn.Conv2d, _Switchable):
    """Conv2d whose weights and *input* activations follow the current bit mode.

    ``quantize=False`` keeps it full precision in every mode (first conv, shortcuts).
    ``w_bits`` / ``a_bits`` are the weight and input-activation bits in use: the mode's
    under :func:`set_bit_mode`; a mixed configuration (:mod:`.mixed`) sets them per layer.
    """

    def __init__(self, in_ch, out_ch, kernel_size, spec: QuantSpec, stride=1, padding=0,
                 bias=False, quantize=True, quantize_input=True, groups=1):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias, groups=groups)
        self.modes = spec.modes
        self.w_bits, self.a_bits = mode_bits(spec.modes[-1])
        self.quantize = quantize
        self.quantize_input = quantize and quantize_input
        self.weight_quant = (WEIGHT_QUANTIZERS[spec.weight](spec.weight_bits, scale=spec.weight_scale,
                                                            max_grad=spec.weight_max_grad) if quantize else None)
        self.act_quant = ACT_QUANTIZERS[spec.act](spec.act_bits) if self.quantize_input else None

        self.slots: SlotPlan | None = None  # set in a mode batch (.slots)

    def forward(self, x):
        if self.slots is not None:
            return self._forward_slots(x, self.slots)
        if not self.quantize:
            return self._conv_forward(x, self.weight, self.bias)
        if self.act_quant is not None:
            x = self.act_quant(x, self.a_bits)  # bits 32 passes x through
        return self._conv_forward(x, self.weight_quant(self.weight, self.w_bits), self.bias)

    def _forward_slots(self, x, plan: SlotPlan):
        n = len(plan.settings)
        conv = lambda inp, weight, bias, groups: F.conv2d(inp, weight, bias, self.stride, self.padding,  # noqa: E731
                                                          self.dilation, groups)
        if not self.quantize and _slot_input(x, 1, self.in_channels, plan) != "slots":
            # one input per model (the stem's images): once per model, then to each of its slots
            owners = plan.run_owners
            x = _per_run(x, 1, self.in_channels, plan)
            out = conv(x, _cat(o.weight for o in owners), _cat_bias(owners), self.groups * len(owners))
            return _runs_to_slots(out, 1, self.out_channels, plan)
        x = _to_slots(x, 1, self.in_channels, plan)
        if self.act_quant is not None:
            x = self.act_quant.forward_slots(x.unflatten(1, (n, -1)), tuple(a for _, a in plan.settings),
                                             tuple(o.act_quant for o in plan.owners)).flatten(1, 2)
        weight = _slot_weights(plan).flatten(0, 1) if self.quantize else _cat(o.weight for o in plan.owners)
        return conv(x, weight, _cat_bias(plan.owners), self.groups * n)


class QLinear(nn.Linear, _Switchable):
    def __init__(self, in_f, out_f, spec: QuantSpec, bias=True, quantize=True):
        super().__init__(in_f, out_f, bias=bias)
        self.modes = spec.modes
        self.w_bits, self.a_bits = mode_bits(spec.modes[-1])
        self.quantize = quantize
        self.quantize_input = quantize
        self.weight_quant = (WEIGHT_QUANTIZERS[spec.weight](spec.weight_bits, scale=spec.weight_scale,
                                                            max_grad=spec.weight_max_grad) if quantize else None)
        self.act_quant = ACT_QUANTIZERS[spec.act](spec.act_bits) if quantize else None

        self.slots: SlotPlan | None = None

    def forward(self, x):
        if self.slots is not None:
            return self._forward_slots(x, self.slots)
        if not self.quantize:
            return F.linear(x, self.weight, self.bias)
        return F.linear(self.act_quant(x, self.a_bits), self.weight_quant(self.weight, self.w_bits), self.bias)

    def _forward_slots(self, x, plan: SlotPlan):
        x = _to_slots(x, -1, self.in_features, plan).unflatten(-1, (len(plan.settings), self.in_features))
        if self.quantize:
            x = self.act_quant.forward_slots(x, tuple(a for _, a in plan.settings),
                                             tuple(o.act_quant for o in plan.owners))
            weight = _slot_weights(plan)
        elif len(plan.runs) == 1:  # one model: one weight for every slot
            return F.linear(x, self.weight, self.bias).flatten(-2)
        else:
            weight = torch.stack([o.weight for o in plan.owners])
        out = torch.einsum("bsi,soi->bso", x, weight)
        bias = _cat_bias(plan.owners)
        return (out if bias is None else out + bias.view(len(plan.settings), -1)).flatten(-2)


class BitSpecificBN(nn.Module, _Switchable):
    """One BatchNorm per bit mode (``bn["4"]``, ``bn["w2a4"]``), or one shared BN (``shared=True``).

    The keys are strings because ``nn.ModuleDict`` needs them; the checkpoint therefore
    reads ``...bn.4.running_mean`` — self-describing when modes differ.
    """

    def __init__(self, channels: int, spec: QuantSpec, dim: int = 2):
        super().__init__()
        self.modes = spec.modes
        self.mode = spec.modes[-1]
        self.private_stats = spec.private_stats
        self.shared = not spec.bit_specific_bn and not self.private_stats
        bn_cls = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        keys = ["shared"] if self.shared else [str(m) for m in spec.modes]
        # private statistics: each mode's BN keeps only running statistics; γ, β are shared
        self.bn = nn.ModuleDict({k: bn_cls(channels, affine=not self.private_stats) for k in keys})
        if self.private_stats:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        self._key = keys[-1]

        self.slots: SlotPlan | None = None  # set in a mode batch (.slots)

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        self._key = "shared" if self.shared else str(mode)

    def forward(self, x):
        if self.slots is not None:
            return self._forward_slots(x, self.slots)
        if not self.private_stats:
            return self.bn[self._key](x)
        bn = self.bn[self._key]  # nn.BatchNorm's own update of its statistics, with the shared γ, β
        if self.training:
            bn.num_batches_tracked.add_(1)
        return F.batch_norm(x, bn.running_mean, bn.running_var, self.weight, self.bias, self.training,
                            _momentum(bn) if self.training else 0.0, bn.eps)

    def _forward_slots(self, x, plan: SlotPlan):
        n = len(plan.settings)
        norms = [o.bn[k] for o, k in zip(plan.owners, plan.settings)]
        first = norms[0]
        x = _to_slots(x, 1, first.num_features, plan)
        weight = _cat(o.weight if o.private_stats else bn.weight for o, bn in zip(plan.owners, norms))
        bias = _cat(o.bias if o.private_stats else bn.bias for o, bn in zip(plan.owners, norms))
        if not self.training:
            mean = _cat(bn.running_mean for bn in norms)
            var = _cat(bn.running_var for bn in norms)
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, first.eps)
        torch._foreach_add_([bn.num_batches_tracked for bn in norms], 1)
        momentum = [_momentum(bn) for bn in norms]
        c = first.num_features
        if len({id(bn) for bn in norms}) == n and len(set(momentum)) == 1:
            # each slot its own BN: the statistics update in the one call, then back to each BN
            mean = torch.cat([bn.running_mean for bn in norms])
            var = torch.cat([bn.running_var for bn in norms])
            out = F.batch_norm(x, mean, var, weight, bias, True, momentum[0], first.eps)
            with torch.no_grad():
                torch._foreach_copy_([bn.running_mean for bn in norms], list(mean.split(c)))
                torch._foreach_copy_([bn.running_var for bn in norms], list(var.split(c)))
            return out
        # slots sharing a BN (shared BN, mixed configurations): its statistics move once per
        # slot, in slot order, as they do when the modes run one after another
        out = F.batch_norm(x, None, None, weight, bias, True, 0.0, first.eps)
        with torch.no_grad():
            stats_of = x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x.detach()
            var, mean = torch.var_mean(stats_of, dim=[0, *range(2, x.dim())], correction=1)
            for i, (bn, f) in enumerate(zip(norms, momentum)):
                bn.running_mean.lerp_(mean[i * c:(i + 1) * c].to(bn.running_mean.dtype), f)
                bn.running_var.lerp_(var[i * c:(i + 1) * c].to(bn.running_var.dtype), f)
        return out


def _momentum(bn) -> float:
    """The factor of a training step's statistics update, as nn.BatchNorm computes it
    (``momentum=None``: cumulative average over the batches seen; call after counting)."""
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


# ----------------------------------------------------------------------------- slot helpers
def _cat(tensors) -> torch.Tensor:
    tensors = list(tensors)
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _cat_bias(owners) -> torch.Tensor | None:
    return None if owners[0].bias is None else _cat(o.bias for o in owners)


def _slot_input(x: torch.Tensor, dim: int, features: int, plan: SlotPlan) -> str:
    """What ``x`` holds along ``dim``: every slot side by side ("slots"), one input per
    model ("runs"), or one input for all ("shared")."""
    size = x.shape[dim]
    if size == features * len(plan.settings):
        return "slots"
    if size == features * len(plan.runs):
        return "runs"
    if size == features:
        return "shared"
    raise ValueError(f"a layer in a batch of {len(plan.settings)} slots got {size} features along dim {dim}, "
                     f"expected {features} per slot")


def _per_run(x: torch.Tensor, dim: int, features: int, plan: SlotPlan) -> torch.Tensor:
    """``x`` as one input per model (a shared input repeated)."""
    if _slot_input(x, dim, features, plan) == "shared" and len(plan.runs) > 1:
        reps = [1] * x.dim()
        reps[dim] = len(plan.runs)
        return _same_layout(x.repeat(*reps), x)
    return x


def _runs_to_slots(x: torch.Tensor, dim: int, features: int, plan: SlotPlan) -> torch.Tensor:
    """One tensor per model → that model's tensor in each of its slots."""
    if all(r == 1 for r in plan.runs):
        return x
    source, dim = x, dim % x.dim()
    grouped = x.unflatten(dim, (len(plan.runs), features))
    if len(set(plan.runs)) == 1:  # the usual pack: every model has as many slots
        m = plan.runs[0]
        shape = list(grouped.shape)
        shape.insert(dim + 1, m)
        return _same_layout(grouped.unsqueeze(dim + 1).expand(shape).flatten(dim, dim + 2), source)
    counts = torch.tensor(plan.runs, device=x.device)
    return _same_layout(grouped.repeat_interleave(counts, dim=dim, output_size=len(plan.settings)).flatten(dim, dim + 1),
                        source)


def _to_slots(x: torch.Tensor, dim: int, features: int, plan: SlotPlan) -> torch.Tensor:
    if _slot_input(x, dim, features, plan) == "slots":
        return x
    return _runs_to_slots(_per_run(x, dim, features, plan), dim, features, plan)


def _same_layout(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``y`` in ``like``'s memory format (a reshape of an NHWC tensor comes out NCHW)."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return y.contiguous(memory_format=torch.channels_last)
    return y


def _slot_weights(plan: SlotPlan) -> torch.Tensor:
    """Every slot's quantized weight, stacked: ``[slots, *weight.shape]``."""
    owners = plan.run_owners
    weights = torch.stack([o.weight for o in owners]) if len(owners) > 1 else owners[0].weight.unsqueeze(0)
    run_index = tuple(r for r, n in enumerate(plan.runs) for _ in range(n))
    return quantize_weight_slots(tuple(o.weight_quant for o in plan.owners), weights, run_index,
                                 tuple(w for w, _ in plan.settings))


# ----------------------------------------------------------------------------- switching
def _switchables(model: nn.Module) -> list[nn.Module]:
    cached = model.__dict__.get("_qdnn_switchables")
    if cached is None:
        cached = [m for m in model.modules() if isinstance(m, _Switchable)]
        model.__dict__["_qdnn_switchables"] = cached
    return cached


def model_modes(model: nn.Module) -> tuple[Mode, ...]:
    """The bit modes a model was built for, in cost order (empty tuple for a plain network)."""
    modes = getattr(model, "bit_modes", None)
    if modes is not None:
        return tuple(modes)
    layers = _switchables(model)
    return tuple(layers[0].modes) if layers else ()


def set_bit_mode(model: nn.Module, mode: Mode) -> nn.Module:
    """Switch every quantized layer and Bit-Specific BN of ``model`` to ``mode``
    (``4``, ``32``, or ``"w2a4"`` when the model was trained in it)."""
    modes = model_modes(model)
    parsed = parse_mode(mode)
    if parsed not in modes:
        raise BitModeError(f"bit mode {mode!r} is not one of this model's modes {list(modes)}")
    w, a = mode_bits(parsed)
    for m in _switchables(model):
        if isinstance(m, BitSpecificBN):
            m.set_mode(parsed)
        else:
            m.w_bits, m.a_bits = w, a
    model.__dict__["_qdnn_bits"] = parsed
    return model


def current_bit_mode(model: nn.Module) -> Mode:
    return model.__dict__.get("_qdnn_bits", model_modes(model)[-1])


@contextlib.contextmanager
def bit_mode(model: nn.Module, mode: Mode) -> Iterator[nn.Module]:
    """``with bit_mode(model, 4): logits = model(x)`` — restores the previous mode after."""
    previous = current_bit_mode(model)
    set_bit_mode(model, mode)
    try:
        yield model
    finally:
        set_bit_mode(model, previous)


def check_state_dict_modes(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Fail with both sides' modes named when a state dict was built for other modes."""
    ours = model_modes(model)
    theirs = state.get("_qdnn.bit_modes")
    if theirs is not None:
        theirs = tuple(mode_from_code(c) for c in theirs.tolist())
        ours_shared = _uses_shared_bn(model)
        theirs_shared = bool(state.get("_qdnn.shared_bn", torch.tensor(False)).item())
        ours_private = _uses_private_stats(model)
        theirs_private = bool(state.get("_qdnn.private_bn_stats", torch.tensor(False)).item())
        if theirs != tuple(ours) or theirs_shared != ours_shared or theirs_private != ours_private:
            kind = lambda shared, private: " (shared BN)" if shared else " (private BN statistics)" if private else ""  # noqa: E731
            raise BitModeError(
                f"{source} was saved for bit modes {list(theirs)}{kind(theirs_shared, theirs_private)} "
                f"but the model has bit modes {list(ours)}{kind(ours_shared, ours_private)}"
            )


def _uses_shared_bn(model: nn.Module) -> bool:
    return any(isinstance(m, BitSpecificBN) and m.shared for m in _switchables(model))


def _uses_private_stats(model: nn.Module) -> bool:
    return any(isinstance(m, BitSpecificBN) and m.private_stats for m in _switchables(model))


def modes_state(model: nn.Module) -> dict:
    """Entries stored beside the weights so a checkpoint says which modes it holds."""
    return {
        "_qdnn.bit_modes": torch.tensor([mode_code(m) for m in model_modes(model)], dtype=torch.int64),
        "_qdnn.shared_bn": torch.tensor(_uses_shared_bn(model)),
        "_qdnn.private_bn_stats": torch.tensor(_uses_private_stats(model)),
    }


def quantizable_state_dict(model: nn.Module) -> dict:
    """The model's state dict plus its mode description (what checkpoints store)."""
    state = dict(model.state_dict())
    state.update(modes_state(model))
    return state


def load_quantizable_state_dict(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    check_state_dict_modes(model, state, source)
    weights = {k: v for k, v in state.items() if not k.startswith("_qdnn.")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatch: another architecture or width
        first = str(e).strip().splitlines()[-1].strip()
        raise BitModeError(f"{source} does not fit this model: {first}") from None
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        raise BitModeError(f"{source} does not fit this model: {'; '.join(detail)}")
