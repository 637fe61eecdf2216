"""Renaming helpers the layout converters share (a leaf module)."""
import re
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

StateDict = Dict[str, torch.Tensor]
Converted = Tuple[StateDict, List[str]]


def split_prefix(state: StateDict, prefix: str) -> Converted:
    """Keep the keys under ``prefix`` (stripped); name the rest dropped."""
    if not any(k.startswith(prefix) for k in state):
        return OrderedDict(state), []
    kept = OrderedDict(
        (k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
    return kept, [k for k in state if not k.startswith(prefix)]


def apply_rules(state: StateDict, rules) -> Converted:
    """Rename with ``(regex, replacement)`` rules; unmatched keys drop."""
    out, dropped = OrderedDict(), []
    for key, value in state.items():
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            dropped.append(key)
    return out, dropped


def grn_and_scale_shapes(state: StateDict) -> StateDict:
    """Flatten GRN/layer-scale params and 1x1-conv MLP weights to ours."""
    for key, value in state.items():
        if key.endswith(('.gamma', '.grn.beta')):
            state[key] = value.reshape(-1)
        elif re.search(r'\.pwconv[12]\.weight$', key) and value.ndim == 4:
            state[key] = value.flatten(1)
    return state
