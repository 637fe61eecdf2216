"""The ConvNeXt checkpoint layouts, in one table, and their mapping to ours
(the authors' detection/segmentation names without ``backbone.``).

Each layout of :data:`LAYOUTS` is recognised by key patterns and converted by
renaming rules (a regex and its replacement); a key no rule matches is not
backbone (heads, necks, decoders). A classifier's final norm keeps the
authors' name ``norm.*``: where it goes is the report's decision
(:mod:`.report`). The layouts as users see them: docs/checkpoints.md.
"""
import math
import re
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

StateDict = Dict[str, torch.Tensor]
# the containers checkpoints wrap their weights in, most specific first
_CONTAINERS = ('state_dict', 'model', 'module', 'model_ema', 'state_dict_ema')
_OURS = (r'(downsample_layers\.\d+\.\d+\.(weight|bias)|stages\.\d+\.\d+\.'
         r'(dwconv|norm|pwconv1|pwconv2)\.(weight|bias)|stages\.\d+\.\d+\.'
         r'(gamma|grn\.gamma|grn\.beta)|norm\d*\.(weight|bias))')
_HF = r'encoder\.stages\.(\d+)\.layers\.(\d+)'
_TIMM = r'stages\.(\d+)\.blocks\.(\d+)'
_TORCHVISION_BLOCK = {'0': 'dwconv', '2': 'norm', '3': 'pwconv1',
                      '5': 'pwconv2'}


def _dense_kernel(key: str, value: torch.Tensor) -> torch.Tensor:
    """A MinkowskiEngine kernel as a dense conv weight: (taps, in, out) ->
    (out, in, k, k), depthwise (taps, C) -> (C, 1, k, k); taps run over the
    kernel with x fastest, hence the final transpose."""
    size = math.isqrt(value.shape[0]) if value.ndim in (2, 3) else 0
    if not size or size * size != value.shape[0]:
        raise ValueError(f'{key}: a sparse kernel of shape '
                         f'{tuple(value.shape)} is not (k*k, in, out) or '
                         '(k*k, channels)')
    if value.ndim == 2:
        value = value.unsqueeze(1)
    taps, fan_in, fan_out = value.shape
    return value.permute(2, 1, 0).reshape(fan_out, fan_in, size,
                                          size).transpose(3, 2)


def _densify(state: StateDict) -> StateDict:
    """The V2 authors' FCMAE encoder (MinkowskiEngine layers: ``kernel``s,
    ``ln``/``linear`` wrappers, (1, C) biases) in the dense layout, as their
    fine-tuning's ``remap_checkpoint_keys`` does."""
    dense = OrderedDict()
    for key, value in state.items():
        if key.endswith('.kernel'):
            key = key[:-len('kernel')] + 'weight'
            value = _dense_kernel(key, value)
        else:
            key = re.sub(r'\.(ln|linear)\.([^.]+)$', r'.\2', key)
            if key.endswith('.bias') and value.ndim != 1:
                value = value.reshape(-1)
        dense[key] = value
    return dense


class Layout(NamedTuple):
    """A checkpoint layout: what it is, how it is recognised (every pattern
    matches some key), the prefixes its backbone may sit under, and the
    renaming rules to our names."""
    description: str
    patterns: Tuple[str, ...]
    prefixes: Tuple[str, ...]
    rules: Tuple[Tuple[str, object], ...]
    prepare: Optional[Callable[[StateDict], StateDict]] = None


_AUTHORS = ((_OURS, r'\g<0>'), )
# in the order they are recognised
LAYOUTS: Dict[str, Layout] = {
    'authors_fcmae': Layout(
        "the ConvNeXt V2 authors' FCMAE pre-training checkpoint (sparse "
        'encoder, converted to the dense layout as their fine-tuning does)',
        (r'(^|\.)dwconv\.kernel$', ), ('encoder.', ), _AUTHORS, _densify),
    'transformers': Layout(
        'Hugging Face transformers (ConvNext / ConvNextV2)',
        (r'(^|\.)embeddings\.patch_embeddings\.weight$', ),
        ('backbone.', 'convnext.', 'convnextv2.'), (
            (r'embeddings\.patch_embeddings\.(weight|bias)',
             r'downsample_layers.0.0.\1'),
            (r'embeddings\.layernorm\.(weight|bias)',
             r'downsample_layers.0.1.\1'),
            (r'encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.'
             r'(weight|bias)', r'downsample_layers.\1.\2.\3'),
            (_HF + r'\.(dwconv|pwconv1|pwconv2)\.(weight|bias)',
             r'stages.\1.\2.\3.\4'),
            (_HF + r'\.layernorm\.(weight|bias)', r'stages.\1.\2.norm.\3'),
            (_HF + r'\.layer_scale_parameter', r'stages.\1.\2.gamma'),
            (_HF + r'\.grn\.weight', r'stages.\1.\2.grn.gamma'),
            (_HF + r'\.grn\.bias', r'stages.\1.\2.grn.beta'),
            (r'layernorm\.(weight|bias)', r'norm.\1'),
            (r'hidden_states_norms\.stage(\d+)\.(weight|bias)',
             lambda m: f'norm{int(m[1]) - 1}.{m[2]}'))),
    'torchvision': Layout(
        'torchvision', (r'(^|\.)features\.0\.0\.weight$', ), ('backbone.', ),
        ((r'features\.(\d*[02468])\.(\d)\.(weight|bias)',
          lambda m: f'downsample_layers.{int(m[1]) // 2}.{m[2]}.{m[3]}'),
         (r'features\.(\d*[13579])\.(\d+)\.block\.([0235])\.(weight|bias)',
          lambda m: f'stages.{int(m[1]) // 2}.{m[2]}.'
          f'{_TORCHVISION_BLOCK[m[3]]}.{m[4]}'),
         (r'features\.(\d*[13579])\.(\d+)\.layer_scale',
          lambda m: f'stages.{int(m[1]) // 2}.{m[2]}.gamma'),
         (r'classifier\.0\.(weight|bias)', r'norm.\1'))),
    'timm': Layout(
        'timm', (r'(^|\.)stem\.0\.weight$', r'\.blocks\.\d+\.conv_dw\.'),
        ('backbone.', ), (
            (r'stem\.(\d)\.(weight|bias)', r'downsample_layers.0.\1.\2'),
            (r'stages\.(\d+)\.downsample\.(\d)\.(weight|bias)',
             r'downsample_layers.\1.\2.\3'),
            (_TIMM + r'\.conv_dw\.(weight|bias)', r'stages.\1.\2.dwconv.\3'),
            (_TIMM + r'\.norm\.(weight|bias)', r'stages.\1.\2.norm.\3'),
            (_TIMM + r'\.mlp\.fc([12])\.(weight|bias)',
             r'stages.\1.\2.pwconv\3.\4'),
            (_TIMM + r'\.mlp\.grn\.weight', r'stages.\1.\2.grn.gamma'),
            (_TIMM + r'\.mlp\.grn\.bias', r'stages.\1.\2.grn.beta'),
            (_TIMM + r'\.gamma', r'stages.\1.\2.gamma'),
            (r'head\.norm\.(weight|bias)', r'norm.\1'))),
    'mmpretrain': Layout(
        'mmpretrain / mmcls', (r'(^|\.)stages\.\d+\.\d+\.depthwise_conv\.', ),
        ('backbone.', ), (
            (r'(stages\.\d+\.\d+)\.depthwise_conv\.(weight|bias)',
             r'\1.dwconv.\2'),
            (r'(stages\.\d+\.\d+)\.pointwise_conv([12])\.(weight|bias)',
             r'\1.pwconv\2.\3')) + _AUTHORS),
    'authors_dense': Layout(
        "the ConvNeXt authors' detection/segmentation release (or "
        'convnext_mm)', (r'(^|\.)stages\.\d+\.\d+\.dwconv\.',
                         r'^backbone\.|(^|\.)norm\d\.weight$'),
        ('backbone.', ), _AUTHORS),
    'authors_cls': Layout(
        "the ConvNeXt authors' classification release",
        (r'(^|\.)stages\.\d+\.\d+\.dwconv\.', ), ('backbone.', ), _AUTHORS),
}


def split_prefix(state: StateDict, prefix: str) -> Tuple[StateDict, List]:
    """Keep the keys under ``prefix`` (stripped); name the rest dropped."""
    if not any(k.startswith(prefix) for k in state):
        return OrderedDict(state), []
    kept = OrderedDict(
        (k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
    return kept, [k for k in state if not k.startswith(prefix)]


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
    if all(k.startswith('module.') for k in state):
        state = OrderedDict((k[len('module.'):], v) for k, v in state.items())
    return state


def detect_layout(state: StateDict) -> str:
    """Name the layout of a state dict, or raise a ValueError."""
    for name, layout in LAYOUTS.items():
        if all(any(re.search(p, k) for k in state) for p in layout.patterns):
            return name
    raise ValueError(
        'not a ConvNeXt checkpoint layout convnext_mm knows. Recognised: ' +
        '; '.join(layout.description for layout in LAYOUTS.values()) +
        f'. First keys: {", ".join(list(state)[:6])}')


def _convert(layout: Layout, state: StateDict) -> Tuple[StateDict, List]:
    """``state`` in ``layout`` under our names, and what was not backbone."""
    dropped = []
    for prefix in layout.prefixes:
        state, more = split_prefix(state, prefix)
        dropped += more
    if layout.prepare:
        state = layout.prepare(state)
    out = OrderedDict()
    for key, value in state.items():
        for pattern, repl in layout.rules:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, repl, key)
                # GRN, layer scale and 1x1-conv MLPs flattened to ours
                if key.endswith(('.gamma', '.grn.beta')):
                    value = value.reshape(-1)
                elif re.search(r'\.pwconv[12]\.weight$', key) and \
                        value.ndim == 4:
                    value = value.flatten(1)
                out[key] = value
                break
        else:
            dropped.append(key)
    return out, dropped


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


def to_convnext_mm(checkpoint, prefix: Optional[str] = None
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
    state, dropped = unwrap(checkpoint), []
    if prefix and prefix != 'backbone.':
        if not any(k.startswith(prefix) for k in state):
            raise ValueError(f'no key starts with prefix {prefix!r}; first '
                             f'keys: {", ".join(list(state)[:6])}')
        state, dropped = split_prefix(state, prefix)
    layout = detect_layout(state)
    converted, more = _convert(LAYOUTS[layout], state)
    return _name_classifier_norm(converted), dropped + more, layout


def infer_arch(state: StateDict) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Depths and channels of a backbone state dict under our names."""
    depths, channels = [], []
    stage = 0
    while f'downsample_layers.{stage}.{int(stage == 0)}.weight' in state:
        blocks = {int(m.group(1)) for k in state
                  for m in [re.match(rf'stages\.{stage}\.(\d+)\.', k)] if m}
        depths.append(len(blocks))
        channels.append(state[f'stages.{stage}.0.dwconv.weight'].shape[0]
                        if blocks else 0)
        stage += 1
    return tuple(depths), tuple(channels)


def as_mmseg_checkpoint(name: str, checkpoint):
    """A whole transformers ``UperNetForSemanticSegmentation`` as mmseg's
    checkpoint (``{'state_dict': ...}`` under mmseg's names), every tensor
    accounted for; anything else as it is. Converted once, where a file is
    read for a whole model: the pre-flight examines, and mmengine loads, the
    same names."""
    if not (isinstance(checkpoint, dict) and
            'backbone.embeddings.patch_embeddings.weight' in checkpoint and
            any(k.startswith('decode_head.') for k in checkpoint)):
        return checkpoint
    backbone, others = split_prefix(checkpoint, 'backbone.')
    converted, unknown = _convert(LAYOUTS['transformers'], backbone)
    out = OrderedDict((f'backbone.{k}', v) for k, v in converted.items())
    unknown = [f'backbone.{k}' for k in unknown]
    for key in others:
        if key.startswith(('decode_head.', 'auxiliary_head.')):
            head, rest = key.split('.', 1)
            rest = re.sub(r'(^|\.)batch_norm\.', r'\1bn.', rest)
            rest = re.sub(r'^classifier\.', 'conv_seg.', rest)
            out[f'{head}.{rest}'] = checkpoint[key]
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f'{name}: a Hugging Face UperNet checkpoint with tensors '
            f'convnext_mm cannot place: {", ".join(unknown[:5])}')
    return dict(state_dict=out)
