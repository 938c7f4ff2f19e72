"""Quantization library: quantizers, quantized layers, Bit-Specific BN, mode switching.

Knows nothing about training. Typical use::

    from qdnn_cli.quant import set_bit_mode, bit_mode
    set_bit_mode(model, 4)          # every later forward runs at 4 bits
    with bit_mode(model, 2):        # temporarily 2 bits
        logits = model(x)
    set_bit_mode(model, "w2a4")     # 2-bit weights, 4-bit activations (if trained in it)
"""
from .layers import (
    BitSpecificBN,
    QConv2d,
    QLinear,
    QuantSpec,
    bit_mode,
    current_bit_mode,
    load_quantizable_state_dict,
    model_modes,
    quantizable_state_dict,
    set_bit_mode,
)
from .mixed import BitConfig, LayerBits, bit_config, quantized_layers, set_bit_config
from .modes import BitModeError, Mode, mode_from_label, mode_bits, mode_key, mode_label, parse_mode, sort_modes
from .quantizers import FULL_PRECISION, VALID_BITS, check_bits

__all__ = [
    "BitModeError", "BitSpecificBN", "QConv2d", "QLinear", "QuantSpec", "bit_mode",
    "current_bit_mode", "load_quantizable_state_dict", "model_modes", "quantizable_state_dict",
    "set_bit_mode", "FULL_PRECISION", "VALID_BITS", "check_bits", "mode_label",
    "BitConfig", "LayerBits", "bit_config", "set_bit_config", "quantized_layers",
    "Mode", "mode_from_label", "mode_bits", "mode_key", "parse_mode", "sort_modes",
]
