"""Load any common ConvNeXt checkpoint into our backbone, and report."""
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional

from mmengine.logging import print_log

from .checks import check_weights
from .layouts import LAYOUT_DESCRIPTIONS, infer_arch, to_convnext_mm


def read_checkpoint(checkpoint: str, map_location='cpu'):
    """Read a local path or URL through mmengine's (safe) loaders."""
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


def load_pretrained(model,
                    checkpoint,
                    prefix: Optional[str] = None,
                    map_location='cpu') -> Dict[str, List[str]]:
    """Load ``checkpoint`` (a path, URL or loaded dict) into a ConvNeXt.

    The layout is recognised automatically. Logs what was loaded, what
    starts fresh and what was left out, and returns those lists under the
    keys ``loaded``, ``fresh``, ``left_out`` and the ``layout`` name.
    """
    state, dropped, layout, source = _checked_state(model, checkpoint, prefix,
                                                    map_location)
    own = model.state_dict()
    usable = OrderedDict((k, v) for k, v in state.items() if k in own)
    left_out = dropped + [k for k in state if k not in own]
    fresh = [k for k in own if k not in usable]
    model.load_state_dict(usable, strict=False)

    lines = [
        f'ConvNeXt: loaded {len(usable)} tensors from {source} '
        f'(layout: {LAYOUT_DESCRIPTIONS[layout]})'
    ]
    if fresh:
        lines.append(f'  starts fresh (not in the checkpoint): '
                     f'{_summarise(fresh)}')
    if left_out:
        lines.append(f'  left out (not part of this backbone): '
                     f'{_summarise(left_out)}')
    print_log('\n'.join(lines), logger='current')
    return dict(
        loaded=list(usable), fresh=fresh, left_out=left_out, layout=layout)
