"""Hugging Face transformers layouts: ConvNext/ConvNextV2 models and
backbones, and whole UperNet segmentors.

``ConvNextModel`` and ``ConvNextV2Model`` name the stem
``embeddings.patch_embeddings`` / ``embeddings.layernorm``, the blocks
``encoder.stages.N.layers.M.*`` and the classifier's final norm
``layernorm``; the ``*ForImageClassification`` classes add a ``convnext.`` /
``convnextv2.`` prefix and ``classifier.*``; ``ConvNextBackbone`` has no
final norm but one dense norm per stage, ``hidden_states_norms.stageK``.
``UperNetForSemanticSegmentation`` (converted from mmseg's UperNet) holds
such a backbone under ``backbone.`` and mmseg's heads with ``batch_norm``
for ``bn`` and ``classifier`` for ``conv_seg``.
"""
import re
from collections import OrderedDict
from typing import List

from .renaming import (Converted, StateDict, apply_rules,
                       grn_and_scale_shapes, split_prefix)

_BLOCK = r'encoder\.stages\.(\d+)\.layers\.(\d+)'
RULES = [
    (r'embeddings\.patch_embeddings\.(weight|bias)',
     r'downsample_layers.0.0.\1'),
    (r'embeddings\.layernorm\.(weight|bias)', r'downsample_layers.0.1.\1'),
    (r'encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.(weight|bias)',
     r'downsample_layers.\1.\2.\3'),
    (_BLOCK + r'\.(dwconv|pwconv1|pwconv2)\.(weight|bias)',
     r'stages.\1.\2.\3.\4'),
    (_BLOCK + r'\.layernorm\.(weight|bias)', r'stages.\1.\2.norm.\3'),
    (_BLOCK + r'\.layer_scale_parameter', r'stages.\1.\2.gamma'),
    (_BLOCK + r'\.grn\.weight', r'stages.\1.\2.grn.gamma'),
    (_BLOCK + r'\.grn\.bias', r'stages.\1.\2.grn.beta'),
    # the classifier's final norm, under the authors' name
    (r'layernorm\.(weight|bias)', r'norm.\1'),
    (r'hidden_states_norms\.stage(\d+)\.(weight|bias)',
     lambda m: f'norm{int(m.group(1)) - 1}.{m.group(2)}'),
]


def convert_transformers(state: StateDict) -> Converted:
    dropped = []
    # an UperNet's backbone, or the classifiers' model under its prefix
    for prefix in ('backbone.', 'convnext.', 'convnextv2.'):
        state, more = split_prefix(state, prefix)
        dropped += more
    state, more = apply_rules(state, RULES)
    return grn_and_scale_shapes(state), dropped + more


def is_transformers_upernet(state: StateDict) -> bool:
    """Whether ``state`` is a whole ``UperNetForSemanticSegmentation``."""
    return 'backbone.embeddings.patch_embeddings.weight' in state and any(
        k.startswith('decode_head.') for k in state)


def _head_name(key: str) -> str:
    head, rest = key.split('.', 1)
    rest = re.sub(r'(^|\.)batch_norm\.', r'\1bn.', rest)
    rest = re.sub(r'^classifier\.', 'conv_seg.', rest)
    return f'{head}.{rest}'


def upernet_to_mmseg(state: StateDict) -> StateDict:
    """A transformers UperNet state dict under mmseg's (and our) names.

    Every tensor is accounted for: a key that maps nowhere is an error.
    """
    backbone, others = split_prefix(state, 'backbone.')
    converted, dropped = convert_transformers(backbone)
    out = OrderedDict((f'backbone.{k}', v) for k, v in converted.items())
    unknown: List[str] = [f'backbone.{k}' for k in dropped]
    for key in others:
        if key.startswith(('decode_head.', 'auxiliary_head.')):
            out[_head_name(key)] = state[key]
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            'a Hugging Face UperNet checkpoint with tensors convnext_mm '
            f'cannot place: {", ".join(unknown[:5])}')
    return out


def as_mmseg_checkpoint(name: str, checkpoint):
    """A whole transformers UperNet as mmseg's checkpoint
    (``{'state_dict': ...}`` under mmseg's names); anything else as it is.
    Converted once, where a file is read for a whole model: the pre-flight
    examines, and mmengine loads, the same names."""
    if not (isinstance(checkpoint, dict) and
            is_transformers_upernet(checkpoint)):
        return checkpoint
    try:
        return dict(state_dict=upernet_to_mmseg(checkpoint))
    except ValueError as err:
        raise ValueError(f'{name}: {err}') from None
