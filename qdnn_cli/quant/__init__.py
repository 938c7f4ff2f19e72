"""Quantization library: quantizers, quantized layers, Bit-Specific BN, mode switching.

Knows nothing about training. Typical use::

    from qdnn_cli.quant import set_bit_mode, bit_mode
    set_bit_mode(model, 4)          # every later forward runs at 4 bits
    with bit_mode(model, 2):        # temporarily 2 bits
        logits = model(x)
"""
from .layers import (
    BitModeError,
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
from .quantizers import FULL_PRECISION, VALID_BITS, check_bits, mode_label

__all__ = [
    "BitModeError", "BitSpecificBN", "QConv2d", "QLinear", "QuantSpec", "bit_mode",
    "current_bit_mode", "load_quantizable_state_dict", "model_modes", "quantizable_state_dict",
    "set_bit_mode", "FULL_PRECISION", "VALID_BITS", "check_bits", "mode_label",
    "BitConfig", "LayerBits", "bit_config", "set_bit_config", "quantized_layers",
]
