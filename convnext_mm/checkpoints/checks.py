"""Refuse weights that would load silently wrong.

mmengine copies whatever a checkpoint holds into the model: NaN or Inf
values, integer or bool tensors (cast to the parameter's dtype: zeros and
ones) and meta tensors (no data at all) all "load" without a word. These
checks name the first offending key instead.
"""
from typing import Dict, Mapping, Optional

import torch


def bad_weight(name: str, value: torch.Tensor,
               expected: Optional[torch.dtype] = None) -> Optional[str]:
    """Why ``value`` is unfit to be the weight ``name``, or None.

    ``expected`` is the model's dtype for that weight; without it the weight
    must be floating point.
    """
    if value.is_meta:
        return (f'{name} is a meta tensor (shape only, no data): the file '
                'was saved from a model that was never materialised')
    floating = expected is None or expected.is_floating_point
    if floating and not value.is_floating_point():
        return (f'{name} has dtype {value.dtype}, but weights are floating '
                'point: loading it would turn its values into integers')
    if expected is not None and not expected.is_floating_point and \
            value.is_floating_point():
        return f'{name} has dtype {value.dtype}, the model {expected}'
    if value.is_floating_point() and value.numel() and \
            not bool(torch.isfinite(value).all()):
        count = int((~torch.isfinite(value)).sum())
        return (f'{name} holds {count} NaN/Inf value(s) of {value.numel()}: '
                'the file is corrupt or was saved from a diverged run')
    return None


def check_weights(state: Mapping[str, torch.Tensor], source: str,
                  model_state: Optional[Dict[str, torch.Tensor]] = None
                  ) -> None:
    """Raise a ValueError naming the first unfit weight of ``state``.

    With ``model_state``, only the keys the model shares are checked, each
    against the model's dtype (integer buffers such as BatchNorm's
    ``num_batches_tracked`` stay integers).
    """
    for name, value in state.items():
        expected = None
        if model_state is not None:
            if name not in model_state:
                continue
            expected = model_state[name].dtype
        why = bad_weight(name, value, expected)
        if why:
            raise ValueError(f'{source}: {why}; refusing to load it')
