"""Load any common ConvNeXt checkpoint into our backbone, and report.

Where a classification checkpoint's final norm goes is the one choice a
loader makes. The authors trained every detection and segmentation model of
the paper from a start where it goes nowhere: their dense backbone loads the
classification file with ``strict=False``, so ``norm.weight``/``norm.bias``
are unexpected keys and ``norm0``..``norm3`` begin as ones/zeros. That is
the default here (``final_norm='fresh'``). mmpretrain's converted files and
mmdet 3.x put it into ``norm3`` instead; ``final_norm='copy'`` does that. A
classification model (``gap_before_final_norm=True``) applies the final norm
to pooled vectors as the classifier did, so there it is always copied.
"""
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional

from mmengine.logging import print_log

from .checks import check_weights
from .layouts import LAYOUT_DESCRIPTIONS, infer_arch, to_convnext_mm

FINAL_NORM = ('fresh', 'copy')


def check_final_norm(value) -> str:
    """The ``final_norm`` choice of a Pretrained init_cfg, checked."""
    if value is None:
        return 'fresh'
    if value not in FINAL_NORM:
        raise ValueError(
            f"init_cfg final_norm={value!r}: use 'fresh' (the paper's start: "
            "norm0..norm3 begin as ones/zeros) or 'copy' (the classifier's "
            'final norm goes into the last stage norm, as mmdet 3.x does)')
    return value


def read_checkpoint(checkpoint: str, map_location='cpu'):
    """Read a local path or URL through mmengine's (safe) loaders: torch and
    safetensors files, Hugging Face folders."""
    from mmengine.runner.checkpoint import CheckpointLoader
    return CheckpointLoader.load_checkpoint(
        str(checkpoint), map_location=map_location, logger='silent')


def _summarise(names: Iterable[str], limit: int = 8) -> str:
    """'norm0, norm1 (4 tensors)' style summary grouped by leading module."""
    groups: Dict[str, int] = OrderedDict()
    for name in names:
        parts = name.split('.')
        head = '.'.join(parts[:2]) if parts[0] == 'stages' else parts[0]
        groups[head] = groups.get(head, 0) + 1
    shown = [f'{g} ({n})' for g, n in list(groups.items())[:limit]]
    if len(groups) > limit:
        shown.append(f'... {len(groups) - limit} more')
    return ', '.join(shown)


def _describe(depths, channels) -> str:
    from ..models.convnext import find_arch
    name = find_arch(depths, channels)
    spec = f'depths {list(depths)}, channels {list(channels)}'
    return f"arch '{name}' ({spec})" if name else f'a custom arch ({spec})'


def shape_mismatches(own: Dict, state: Dict) -> List[str]:
    """'key: checkpoint (shape) vs model (shape)' for every shared key whose
    shapes differ."""
    return [
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
        for k, v in state.items() if k in own and own[k].shape != v.shape
    ]


def check_compatible(model, state, source: str) -> None:
    """Raise a ValueError naming the mismatch and the arch that would fit."""
    depths, channels = infer_arch(state)
    if (depths, channels) != (tuple(model.depths), tuple(model.channels)):
        from ..models.convnext import find_arch
        fit = find_arch(depths, channels)
        hint = (f"set arch='{fit}'" if fit else
                f'set arch=dict(depths={list(depths)}, '
                f'channels={list(channels)})')
        raise ValueError(
            f'{source} holds a ConvNeXt of {_describe(depths, channels)}, but '
            f'the model is {_describe(model.depths, model.channels)}: '
            f'{hint} in the backbone config, or use a checkpoint of the '
            "model's arch")
    has_grn = any('.grn.' in k for k in state)
    if has_grn != bool(model.use_grn):
        raise ValueError(
            f'{source} is a ConvNeXt {"V2 (with GRN)" if has_grn else "V1"} '
            f'checkpoint but the model is built with use_grn={model.use_grn}:'
            + (' set use_grn=True, layer_scale_init_value=0.'
               if has_grn else ' set use_grn=False'))
    wrong = shape_mismatches(model.state_dict(), state)
    if wrong:
        raise ValueError(f'{source} does not fit the model: ' +
                         '; '.join(wrong[:5]))


def _checked_state(model, checkpoint, prefix, map_location):
    """Read, convert and check ``checkpoint`` against ``model``."""
    source = checkpoint if isinstance(checkpoint, str) else 'the checkpoint'
    try:
        raw = read_checkpoint(checkpoint, map_location) if isinstance(
            checkpoint, str) else checkpoint
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f'ConvNeXt pretrained checkpoint not found: {err}. Set '
            "init_cfg=dict(type='Pretrained', checkpoint=...) to a local "
            'checkpoint file or an http(s) URL') from None
    try:
        state, dropped, layout = to_convnext_mm(raw, prefix=prefix)
    except ValueError as err:
        raise ValueError(f'{source}: {err}') from err
    check_weights(state, source)
    check_compatible(model, state, source)
    return state, dropped, layout, source


def check_pretrained(model, checkpoint, prefix: Optional[str] = None) -> None:
    """Everything :func:`load_pretrained` checks, without loading (for the
    tools to fail before a run starts)."""
    _checked_state(model, checkpoint, prefix, 'cpu')


def _place_final_norm(model, state, final_norm: str) -> str:
    """Copy or leave out a classifier's final norm (``norm.*``); return the
    note for the report, if any."""
    if 'norm.weight' not in state:
        return ''
    last = f'norm{model.num_stages - 1}'
    if not hasattr(model, last):
        return ''
    if model.gap_before_final_norm or final_norm == 'copy':
        for name in ('weight', 'bias'):
            if f'norm.{name}' in state:
                state[f'{last}.{name}'] = state.pop(f'norm.{name}')
        return '' if model.gap_before_final_norm else (
            f" (final_norm='copy': {last} holds the classifier's final norm)")
    return (f" (the paper's start: the classifier's final norm is not "
            f"copied into {last}; init_cfg final_norm='copy' does, as mmdet "
            '3.x)')


def load_pretrained(model,
                    checkpoint,
                    prefix: Optional[str] = None,
                    map_location='cpu',
                    final_norm: Optional[str] = None) -> Dict[str, List[str]]:
    """Load ``checkpoint`` (a path, URL or loaded dict) into a ConvNeXt.

    The layout is recognised automatically. ``final_norm`` ('fresh' or
    'copy') says where a classification checkpoint's final norm goes in a
    dense model (see the module docstring). Logs one line for the layout
    and at most three for what was loaded, what starts fresh and what was
    left out, and returns those lists under the keys ``loaded``, ``fresh``,
    ``left_out`` and the ``layout`` name.
    """
    final_norm = check_final_norm(final_norm)
    state, dropped, layout, source = _checked_state(model, checkpoint, prefix,
                                                    map_location)
    note = _place_final_norm(model, state, final_norm)
    own = model.state_dict()
    usable = OrderedDict((k, v) for k, v in state.items() if k in own)
    left_out = dropped + [k for k in state if k not in own]
    fresh = [k for k in own if k not in usable]
    model.load_state_dict(usable, strict=False)

    lines = [f'ConvNeXt: {source}: layout {LAYOUT_DESCRIPTIONS[layout]}',
             f'  loaded: {len(usable)} of the backbone\'s {len(own)} tensors'
             + (note if not fresh else '')]
    if fresh:
        lines.append(f'  fresh (not in the checkpoint): {_summarise(fresh)}'
                     + note)
    if left_out:
        lines.append(f'  left out (not part of this backbone): '
                     f'{_summarise(left_out)}')
    print_log('\n'.join(lines), logger='current')
    return dict(
        loaded=list(usable), fresh=fresh, left_out=left_out, layout=layout)
