"""Moving a checkpoint's per-mode parameters onto a model built for other modes.

Per-mode entries are named ``<layer>.bn.<mode>.<field>`` (Bit-Specific BN), ``.alpha.<bits>``
(PACT clip levels) and ``.step.<bits>`` (LSQ steps); a shared BN is ``.bn.shared.``. Knows
nothing about training: a loaded run (``qdnn eval``, ``export``) and a run started from
another one (``model.init_from``) both use it.
"""
from __future__ import annotations

import re

import torch

from .modes import nearest_mode, parse_mode, sort_modes

_MODE_KEY = re.compile(r"\.(bn|alpha|step)\.(\d+|w\d+a\d+|shared)(\.|$)")


def expand_state(state: dict, target_keys) -> dict:
    """The checkpoint's ``state`` mapped onto ``target_keys`` (the state dict keys of the
    model being loaded, built for the trained modes plus any others): a per-mode BN of a
    mode the checkpoint lacks starts from the nearest trained mode's, a shared-BN run's one
    BN fills every mode's, a PACT clip level of untrained bits starts from the nearest
    trained bits', and an LSQ step of untrained bits is zero (set again from data)."""
    out, slots = {}, {}
    for k, v in state.items():
        if k.startswith("_qdnn."):
            continue
        m = _MODE_KEY.search(k)
        if m:  # slot: the same entry across modes, e.g. layer1.0.bn1.bn.<mode>.weight
            slots.setdefault((k[:m.start(2)], k[m.end(2):]), {})[m.group(2)] = v
        else:
            out[k] = v
    for k in target_keys:
        m = _MODE_KEY.search(k)
        slot = slots.get((k[:m.start(2)], k[m.end(2):])) if m else None
        if not slot:
            continue  # not per mode (copied above), or absent: load_state_dict names it
        want = m.group(2)
        if want in slot:
            out[k] = slot[want]
        elif "shared" in slot:
            out[k] = slot["shared"]
        elif want == "shared":  # one BN for every mode, from a per-mode one: the most precise mode's
            out[k] = slot[max(slot, key=lambda c: sort_modes([parse_mode(x) for x in slot]).index(parse_mode(c)))]
        elif m.group(1) == "step":
            out[k] = torch.zeros_like(next(iter(slot.values())))
        else:
            out[k] = slot[str(nearest_mode(parse_mode(want), [parse_mode(c) for c in slot]))]
    return out


def keep_bn_of_mode(state: dict, mode) -> dict:
    """``state`` with every per-mode BN entry dropped except ``mode``'s (and a shared BN's):
    :func:`expand_state` then starts every mode's BN from that one."""
    out = {}
    for k, v in state.items():
        m = _MODE_KEY.search(k)
        if m and m.group(1) == "bn" and m.group(2) not in (str(mode), "shared"):
            continue
        out[k] = v
    return out


def top_mode(state: dict):
    """The most precise mode whose BN ``state`` holds (32, full precision, when trained)."""
    modes = {parse_mode(m.group(2)) for k in state for m in [_MODE_KEY.search(k)]
             if m and m.group(1) == "bn" and m.group(2) != "shared"}
    return sort_modes(modes, descending=True)[0] if modes else None
