"""How a checkpoint maps onto a model: the one checker, its report, and the
loads made from it.

:func:`examine` maps what was read onto a ConvNeXt backbone (any layout of
:mod:`.layouts`, arch and GRN compared, a classifier's final norm placed as
the backbone's ``final_norm`` says) or onto a whole model (the state dict as
mmengine loads it) and returns a :class:`Report`: what loads, what stays
fresh, what is left out, and the problems that forbid loading (weights that
would load silently wrong, shapes that do not fit). The pre-flight
(:func:`prepare`) prints it and :func:`load_pretrained` loads from it, so
both say the same thing (docs/checkpoints.md).
"""
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import torch
from mmengine.logging import print_log

from ..arch import find_arch
from .layouts import (LAYOUTS, as_mmseg_checkpoint, infer_arch,
                      to_convnext_mm, unwrap)
from .sources import read_checkpoint

WHOLE_MODEL = 'whole_model'


def summarise(names: Iterable[str], limit: int = 8) -> str:
    """'norm0 (2), stages.1 (40)' style summary grouped by leading module."""
    groups = list(Counter('.'.join(n.split('.')[:2 if n.startswith((
        'stages.', 'backbone.')) else 1]) for n in names).items())
    shown = [f'{g} ({n})' for g, n in groups[:limit]]
    more = [f'... {len(groups) - limit} more'] if len(groups) > limit else []
    return ', '.join(shown + more)


def _parts(names: Iterable[str]) -> str:
    """'neck (12 tensors), roi_head (1 tensor)': by top-level module."""
    return ', '.join(f'{k} ({n} tensor{"s" * (n != 1)})' for k, n in Counter(
        n.split('.')[0] for n in names).items())


@dataclass
class Report:
    """What a checkpoint gives a model; see the module docstring."""
    source: str
    layout: str
    state: Dict[str, torch.Tensor] = field(default_factory=OrderedDict)
    loaded: List[str] = field(default_factory=list)
    fresh: List[str] = field(default_factory=list)
    left_out: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    note: str = ''
    model_size: int = 0
    # a whole checkpoint's top-level names (state_dict, meta, optimizer...)
    contents: List[str] = field(default_factory=list)

    def check(self) -> 'Report':
        """Raise one ValueError naming the problems, if any."""
        if self.problems:
            more = len(self.problems) - 3
            raise ValueError(f'{self.source}: ' + '; '.join(
                self.problems[:3]) + (f' (and {more} more)' if more > 0 else
                                      '') + '; refusing to load it')
        return self

    def check_whole(self, option: Optional[str] = '--allow-partial'
                    ) -> 'Report':
        """Refuse, in one ValueError, a whole model's checkpoint that leaves
        parts of the model without weights (a checkpoint of another task:
        an UperNet's through a Mask R-CNN config leaves its neck and heads
        random), naming them and ``option``, the way to accept it (None:
        there is none)."""
        if not self.fresh:
            return self
        other = f' (it has {_parts(self.left_out)} instead)' \
            if self.left_out else ''
        accept = f', or pass {option} to run with those parts at their ' \
            'initial weights' if option else ''
        raise ValueError(
            f'{self.source} has no weights for {_parts(self.fresh)} of this '
            f"config's model{other}: it is not a checkpoint of this model. "
            f'Give the checkpoint trained with this config{accept}')

    def lines(self) -> List[str]:
        """The report as logged: layout, loaded, fresh, left out."""
        whole = self.layout == WHOLE_MODEL
        part = 'model' if whole else 'backbone'
        lines = [f'ConvNeXt: {self.source}: layout ' + (
            "a whole model's state dict" if whole else
            LAYOUTS[self.layout].description),
                 f"  loaded: {len(self.loaded)} of the {part}'s "
                 f'{self.model_size} tensors' + ('' if self.fresh else
                                                 self.note)]
        if self.fresh:
            lines.append('  fresh (not in the checkpoint): '
                         f'{summarise(self.fresh)}{self.note}')
        if self.left_out:
            lines.append(f'  left out (not part of this {part}): '
                         f'{summarise(self.left_out)}')
        return lines


def bad_weight(name: str, value: torch.Tensor,
               expected: Optional[torch.dtype] = None) -> Optional[str]:
    """Why ``value`` is unfit to be the weight ``name``, or None.
    ``expected`` is the model's dtype for it (default: floating point)."""
    if value.is_meta:
        return (f'{name} is a meta tensor (shape only, no data): the file '
                'was saved from a model that was never materialised')
    if (expected is None or expected.is_floating_point) and \
            not value.is_floating_point():
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


def is_convnext(module) -> bool:
    """Whether ``module`` is our ConvNeXt backbone (what is read of it here:
    its arch, GRN and final-norm settings; the class lives in
    :mod:`convnext_mm.models`, which loads through this package)."""
    return all(hasattr(module, name) for name in (
        'depths', 'channels', 'use_grn', 'num_stages', 'final_norm',
        'gap_before_final_norm', 'downsample_layers'))


def _describe(depths, channels) -> str:
    name = find_arch(depths, channels)
    spec = f'depths {list(depths)}, channels {list(channels)}'
    return f"arch '{name}' ({spec})" if name else f'a custom arch ({spec})'


def _convert(backbone, checkpoint, source: str, prefix=None, what=''):
    """``checkpoint`` under our ConvNeXt's names, of ``backbone``'s arch and
    GRN: (state, what is not backbone, layout)."""
    try:
        state, dropped, layout = to_convnext_mm(checkpoint, prefix=prefix)
    except ValueError as err:
        raise ValueError(f'{source}: {what}{err}') from None
    depths, channels = infer_arch(state)
    if (depths, channels) != (tuple(backbone.depths),
                              tuple(backbone.channels)):
        fit = find_arch(depths, channels)
        hint = (f"set arch='{fit}'" if fit else f'set arch=dict(depths='
                f'{list(depths)}, channels={list(channels)})')
        raise ValueError(
            f'{source} holds a ConvNeXt of {_describe(depths, channels)}, '
            f'but the model is {_describe(backbone.depths, backbone.channels)}'
            f": {hint} in the backbone config, or use a checkpoint of the "
            "model's arch")
    has_grn = any('.grn.' in k for k in state)
    if has_grn != bool(backbone.use_grn):
        raise ValueError(
            f'{source} is a ConvNeXt {"V2 (with GRN)" if has_grn else "V1"} '
            f'checkpoint but the model is built with use_grn='
            f'{backbone.use_grn}: set ' + (
                'use_grn=True, layer_scale_init_value=0.' if has_grn else
                'use_grn=False'))
    return state, dropped, layout


def _place_final_norm(backbone, state) -> str:
    """Copy or leave out a classifier's final norm (``norm.*``) as the
    backbone's ``final_norm`` says; return the note for the report."""
    last = f'norm{backbone.num_stages - 1}'
    if 'norm.weight' not in state:
        return '' if any(k.startswith('norm') for k in state) else (
            " (expected: the checkpoint has no final norm, as ConvNeXt V2's "
            "FCMAE encoders are released - the authors' pt_only files, "
            "timm's .fcmae, mmpretrain's fcmae_in1k)")
    if not hasattr(backbone, last):
        return ''
    if backbone.gap_before_final_norm or backbone.final_norm == 'copy':
        for name in ('weight', 'bias'):
            if f'norm.{name}' in state:
                state[f'{last}.{name}'] = state.pop(f'norm.{name}')
        return '' if backbone.gap_before_final_norm else (
            f" (final_norm='copy': {last} holds the classifier's final norm)")
    return (f" (the paper's start: the classifier's final norm is not "
            f"copied into {last}; init_cfg final_norm='copy' does, as mmdet "
            '3.x)')


def examine(model, checkpoint, source: str,
            prefix: Optional[str] = None) -> Report:
    """Map ``checkpoint`` (as read) onto ``model``, a ConvNeXt backbone or a
    whole model, possibly built on the meta device (only shapes and dtypes
    are compared). Structural mismatches (not a checkpoint, another arch)
    raise a ValueError at once; the rest is in the report's ``problems``."""
    if is_convnext(model):
        state, dropped, layout = _convert(model, checkpoint, source, prefix)
        report = Report(source, layout, note=_place_final_norm(model, state),
                        left_out=dropped)
    else:
        checkpoint = as_mmseg_checkpoint(source, checkpoint)
        try:
            state = unwrap(checkpoint)
        except ValueError as err:
            raise ValueError(f'{source}: {err}') from None
        backbone = getattr(model, 'backbone', None)
        if is_convnext(backbone) and any(k.startswith('backbone.')
                                         for k in state):
            _convert(backbone, OrderedDict((k, v) for k, v in state.items()
                                           if k.startswith('backbone.')),
                     source, what='its backbone: ')
        report = Report(source, WHOLE_MODEL, contents=list(map(
            str, checkpoint)))
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            report.left_out.append(key)
        elif own[key].shape != value.shape:
            report.problems.append(f'{key}: checkpoint {tuple(value.shape)} '
                                   f'vs model {tuple(own[key].shape)}')
        else:
            why = bad_weight(key, value, own[key].dtype)
            report.problems += [why] if why else []
            report.state[key] = value
    report.loaded = list(report.state)
    report.fresh = [k for k in own if k not in report.state]
    report.model_size = len(own)
    if report.layout == WHOLE_MODEL and not report.loaded and \
            not report.problems:
        raise ValueError(
            f'{source} shares no parameter name with the model of this '
            f'config; its first keys: {", ".join(list(state)[:5])}')
    return report


def _read(model, checkpoint, map_location='cpu', keep=False):
    """``checkpoint`` (a name, or what was read) and how to name it; a
    backbone's missing one named with the ``init_cfg`` that names it."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return checkpoint, 'the checkpoint'
    try:
        return read_checkpoint(checkpoint, map_location,
                               keep=keep), os.fspath(checkpoint)
    except FileNotFoundError as err:
        if not is_convnext(model):
            raise
        raise FileNotFoundError(
            f'pretrained checkpoint not found: {err}. Set '
            "init_cfg=dict(type='Pretrained', checkpoint=...) to a local "
            'checkpoint file or an http(s) URL') from None


def prepare(model, checkpoint, prefix: Optional[str] = None) -> Report:
    """The pre-flight check of ``checkpoint`` for ``model`` (a backbone's
    pretrained checkpoint or a whole model's; the model possibly shapes
    only): one ValueError if it cannot load, else its report. What was read
    is kept for the run's own load (:func:`.sources.read_checkpoint`)."""
    return examine(model, *_read(model, checkpoint, keep=True),
                   prefix).check()


def load_pretrained(model, checkpoint, prefix: Optional[str] = None,
                    map_location='cpu') -> Dict[str, List[str]]:
    """Load ``checkpoint`` (a path, URL or loaded dict) into a ConvNeXt.

    The layout is recognised automatically; the backbone's ``final_norm``
    says where a classification checkpoint's final norm goes. Logs the
    report (layout, loaded, fresh, left out) and returns those lists under
    the keys ``loaded``, ``fresh``, ``left_out`` and the ``layout`` name.
    """
    report = examine(model, *_read(model, checkpoint, map_location),
                     prefix).check()
    model.load_state_dict(report.state, strict=False)
    print_log('\n'.join(report.lines()), logger='current')
    return dict(loaded=report.loaded, fresh=report.fresh,
                left_out=report.left_out, layout=report.layout)
