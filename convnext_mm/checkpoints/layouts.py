"""Recognise the common ConvNeXt checkpoint layouts and map them to ours.

Ours are the names of the authors' detection/segmentation release without the
``backbone.`` prefix (see :mod:`convnext_mm.models.convnext`). Each converter
returns ``(backbone_state, dropped)``: the tensors under our names, and the
names of what is not part of the backbone (classifier heads, necks, heads).

A classification checkpoint's final norm (which the classifier applies to
pooled vectors) keeps the authors' name ``norm.weight``/``norm.bias``:
whether it goes into the dense model's ``norm3`` is the loader's decision
(:mod:`.pretrained`), not the layout's.
"""
import math
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .renaming import (Converted, StateDict, apply_rules,
                       grn_and_scale_shapes, split_prefix)
from .transformers_layouts import convert_transformers


# the containers checkpoints wrap their weights in, most specific first
_CONTAINERS = ('state_dict', 'model', 'module', 'model_ema', 'state_dict_ema')

LAYOUT_DESCRIPTIONS = {
    'authors_cls': "the ConvNeXt authors' classification release",
    'authors_dense': "the ConvNeXt authors' detection/segmentation release "
    '(or convnext_mm)',
    'mmpretrain': 'mmpretrain / mmcls',
    'timm': 'timm',
    'torchvision': 'torchvision',
    'transformers': 'Hugging Face transformers (ConvNext / ConvNextV2)',
    'authors_fcmae': "the ConvNeXt V2 authors' FCMAE pre-training "
    'checkpoint (sparse encoder, converted to the dense layout as their '
    'fine-tuning does)',
}


def unwrap(checkpoint) -> StateDict:
    """Return the tensor dict inside a checkpoint object."""
    seen = set()
    while True:
        if not isinstance(checkpoint, dict):
            raise ValueError(
                'expected a checkpoint dict of tensors, or one wrapped under '
                f'{"/".join(_CONTAINERS)}; got a {type(checkpoint).__name__}')
        if id(checkpoint) in seen:
            raise ValueError('the checkpoint nests its state dict inside '
                             'itself; it is not a model checkpoint')
        seen.add(id(checkpoint))
        inner = next((checkpoint[k] for k in _CONTAINERS
                      if isinstance(checkpoint.get(k), dict)), None)
        if inner is None:
            break
        checkpoint = inner
    state = OrderedDict(
        (k, v) for k, v in checkpoint.items() if isinstance(v, torch.Tensor))
    odd = [k for k in state if not isinstance(k, str)]
    if odd:
        raise ValueError(
            f'the state dict has a tensor under the {type(odd[0]).__name__} '
            f'key {odd[0]!r}; state dict keys are parameter names (strings)')
    if not state:
        raise ValueError(
            'the checkpoint holds no tensors (top-level keys: '
            f'{sorted(map(str, checkpoint))[:10]}); expected a state dict, '
            f'or one under {"/".join(_CONTAINERS)}')
    return state


def _strip_module_prefix(state: StateDict) -> StateDict:
    if all(k.startswith('module.') for k in state):
        return OrderedDict((k[len('module.'):], v) for k, v in state.items())
    return state


def detect_layout(state: StateDict) -> str:
    """Name the layout of a state dict, or raise a ValueError."""
    keys = list(state)

    def has(pattern):
        return any(re.search(pattern, k) for k in keys)

    if has(r'(^|\.)dwconv\.kernel$'):
        return 'authors_fcmae'
    if has(r'(^|\.)embeddings\.patch_embeddings\.weight$'):
        return 'transformers'
    if has(r'(^|\.)features\.0\.0\.weight$'):
        return 'torchvision'
    if has(r'(^|\.)stem\.0\.weight$') and has(r'\.blocks\.\d+\.conv_dw\.'):
        return 'timm'
    if has(r'(^|\.)stages\.\d+\.\d+\.depthwise_conv\.'):
        return 'mmpretrain'
    if has(r'(^|\.)stages\.\d+\.\d+\.dwconv\.'):
        if has(r'^backbone\.') or has(r'(^|\.)norm\d\.weight$'):
            return 'authors_dense'
        return 'authors_cls'
    sample = ', '.join(keys[:6])
    raise ValueError(
        'not a ConvNeXt checkpoint layout convnext_mm knows. Recognised: ' +
        '; '.join(LAYOUT_DESCRIPTIONS.values()) + f'. First keys: {sample}')


_BACKBONE_KEY = (r'(downsample_layers\.\d+\.\d+\.(weight|bias)|'
                 r'stages\.\d+\.\d+\.(dwconv|norm|pwconv1|pwconv2)\.'
                 r'(weight|bias)|stages\.\d+\.\d+\.(gamma|grn\.gamma|'
                 r'grn\.beta)|norm\d*\.(weight|bias))')


def convert_authors(state: StateDict) -> Converted:
    """Both authors' releases (V1, and V2 with GRN); ours too."""
    state, dropped = split_prefix(state, 'backbone.')
    state, more = apply_rules(state, [(_BACKBONE_KEY, r'\g<0>')])
    return grn_and_scale_shapes(state), dropped + more


def _dense_kernel(key: str, value: torch.Tensor) -> torch.Tensor:
    """A MinkowskiEngine kernel as a dense conv weight: (taps, in, out) ->
    (out, in, k, k), depthwise (taps, C) -> (C, 1, k, k); taps run over the
    kernel with x fastest, hence the final transpose."""
    size = math.isqrt(value.shape[0]) if value.ndim in (2, 3) else 0
    if not size or size * size != value.shape[0]:
        raise ValueError(f'{key}: a sparse kernel of shape '
                         f'{tuple(value.shape)} is not (k*k, in, out) or '
                         '(k*k, channels)')
    if value.ndim == 3:
        taps, fan_in, fan_out = value.shape
        return value.permute(2, 1, 0).reshape(fan_out, fan_in, size,
                                              size).transpose(3, 2)
    return value.permute(1, 0).reshape(value.shape[1], 1, size,
                                       size).transpose(3, 2)


def convert_fcmae(state: StateDict) -> Converted:
    """The V2 authors' FCMAE pre-training checkpoint: its ``encoder.``
    (MinkowskiEngine layers: ``kernel``s, ``ln``/``linear`` wrappers,
    (1, C) biases and GRN) to the dense layout, as their fine-tuning's
    ``remap_checkpoint_keys`` does; ``decoder``, ``mask_token``, ``proj``
    and ``pred`` are not backbone."""
    encoder, dropped = split_prefix(state, 'encoder.')
    dense = OrderedDict()
    for key, value in encoder.items():
        if key.endswith('.kernel'):
            key = key[:-len('kernel')] + 'weight'
            value = _dense_kernel(key, value)
        else:
            parts = key.split('.')
            if len(parts) > 2 and parts[-2] in ('ln', 'linear'):
                del parts[-2]
            key = '.'.join(parts)
            if key.endswith('.bias') and value.ndim != 1:
                value = value.reshape(-1)
        dense[key] = value
    converted, more = convert_authors(dense)
    return converted, dropped + more


def convert_mmpretrain(state: StateDict) -> Converted:
    state, dropped = split_prefix(state, 'backbone.')
    renamed = OrderedDict()
    for key, value in state.items():
        key = key.replace('.depthwise_conv.', '.dwconv.')
        key = re.sub(r'\.pointwise_conv([12])\.', r'.pwconv\1.', key)
        renamed[key] = value
    state, more = apply_rules(renamed, [(_BACKBONE_KEY, r'\g<0>')])
    return grn_and_scale_shapes(state), dropped + more


def convert_timm(state: StateDict) -> Converted:
    state, dropped = split_prefix(state, 'backbone.')
    blk = r'stages\.(\d+)\.blocks\.(\d+)'
    state, more = apply_rules(state, [
        (r'stem\.(\d)\.(weight|bias)', r'downsample_layers.0.\1.\2'),
        (r'stages\.(\d+)\.downsample\.(\d)\.(weight|bias)',
         r'downsample_layers.\1.\2.\3'),
        (blk + r'\.conv_dw\.(weight|bias)', r'stages.\1.\2.dwconv.\3'),
        (blk + r'\.norm\.(weight|bias)', r'stages.\1.\2.norm.\3'),
        (blk + r'\.mlp\.fc([12])\.(weight|bias)', r'stages.\1.\2.pwconv\3.\4'),
        (blk + r'\.mlp\.grn\.weight', r'stages.\1.\2.grn.gamma'),
        (blk + r'\.mlp\.grn\.bias', r'stages.\1.\2.grn.beta'),
        (blk + r'\.gamma', r'stages.\1.\2.gamma'),
        (r'head\.norm\.(weight|bias)', r'norm.\1'),
    ])
    return grn_and_scale_shapes(state), dropped + more


def convert_torchvision(state: StateDict) -> Converted:
    state, dropped = split_prefix(state, 'backbone.')
    out, more = OrderedDict(), []
    for key, value in state.items():
        m = re.fullmatch(r'features\.(\d+)\.(\d+)\.(.+)', key)
        if m is None:
            m_cls = re.fullmatch(r'classifier\.0\.(weight|bias)', key)
            if m_cls:
                out[f'norm.{m_cls.group(1)}'] = value
            else:
                more.append(key)
            continue
        feature, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if feature == 0:
            out[f'downsample_layers.0.{index}.{rest}'] = value
        elif feature % 2 == 0:
            out[f'downsample_layers.{feature // 2}.{index}.{rest}'] = value
        else:
            prefix = f'stages.{feature // 2}.{index}'
            names = {'0': 'dwconv', '2': 'norm', '3': 'pwconv1',
                     '5': 'pwconv2'}
            parts = rest.split('.')
            if parts[0] == 'layer_scale':
                out[f'{prefix}.gamma'] = value
            elif parts[0] == 'block' and parts[1] in names:
                out[f'{prefix}.{names[parts[1]]}.{parts[2]}'] = value
            else:
                more.append(key)
    return grn_and_scale_shapes(out), dropped + more


def _name_classifier_norm(state: StateDict) -> StateDict:
    """A checkpoint whose only stage norm is the last stage's is a
    classifier's (mmpretrain's and our ImageNet models store the final norm
    there): give it the authors' name for a classifier's final norm."""
    norms = {int(m.group(1)) for k in state
             for m in [re.fullmatch(r'norm(\d+)\.weight', k)] if m}
    last = len(infer_arch(state)[0]) - 1
    if 'norm.weight' in state or norms != {last}:
        return state
    return OrderedDict((re.sub(rf'^norm{last}\.', 'norm.', k), v)
                       for k, v in state.items())


CONVERTERS: Dict[str, Callable[[StateDict], Converted]] = {
    'authors_cls': convert_authors,
    'authors_dense': convert_authors,
    'authors_fcmae': convert_fcmae,
    'mmpretrain': convert_mmpretrain,
    'timm': convert_timm,
    'torchvision': convert_torchvision,
    'transformers': convert_transformers,
}


def to_convnext_mm(checkpoint,
                   prefix: Optional[str] = None
                   ) -> Tuple[StateDict, List[str], str]:
    """Convert any known checkpoint to our backbone's names.

    Args:
        checkpoint (dict): A loaded checkpoint or state dict.
        prefix (str, optional): Take only the keys under this prefix (as
            mmengine's ``Pretrained`` init does). A ``backbone.`` prefix is
            recognised without it.

    Returns:
        (state, dropped, layout): the backbone tensors under our names (a
        classifier's final norm as ``norm.weight``/``norm.bias``), the
        original names of everything that is not backbone, the layout name.
    """
    state = _strip_module_prefix(unwrap(checkpoint))
    dropped: List[str] = []
    if prefix and prefix != 'backbone.':
        if not any(k.startswith(prefix) for k in state):
            raise ValueError(f'no key starts with prefix {prefix!r}; first '
                             f'keys: {", ".join(list(state)[:6])}')
        state, dropped = split_prefix(state, prefix)
    layout = detect_layout(state)
    converted, more = CONVERTERS[layout](state)
    return _name_classifier_norm(converted), dropped + more, layout


def infer_arch(state: StateDict) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Depths and channels of a backbone state dict under our names."""
    depths, channels = [], []
    stage = 0
    while f'downsample_layers.{stage}.{1 if stage == 0 else 0}.weight' in \
            state:
        blocks = {
            int(m.group(1))
            for k in state
            for m in [re.match(rf'stages\.{stage}\.(\d+)\.', k)] if m
        }
        depths.append(len(blocks))
        channels.append(state[f'stages.{stage}.0.dwconv.weight'].shape[0]
                        if blocks else 0)
        stage += 1
    return tuple(depths), tuple(channels)
