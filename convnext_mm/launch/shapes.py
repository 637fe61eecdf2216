"""Shape pre-flight: the whole model runs once on the meta device (shapes
only, no weights, no compute) at a small input before the runner starts.

Building a model checks no widths: a released config with
``model.backbone.arch=atto`` and its neck still at T widths builds, starts
the runner, and fails at the first iteration with a conv2d channel error.
Here each part is fed what the part before it gives - backbone, neck,
RPN/RoI heads (RoI features of the neck's width), decode/auxiliary heads,
a classifier's head - and a part whose ``in_channels`` does not match is
one line naming both widths and the value to set; any other failure of a
part is one line naming the part.
"""
from typing import List, Sequence

import torch

from ..errors import ConfigError

SIZE = (64, 64)  # divisible by every stride of the detectors' FPN (64)
_FAILURES = (RuntimeError, ValueError, IndexError, TypeError, AssertionError)


def _widths(feats) -> List[int]:
    if isinstance(feats, torch.Tensor):
        return [feats.shape[1]]
    return [f.shape[1] for f in feats]


def _expect(path: str, module, given: List[int], source: str) -> None:
    """``module.in_channels`` (an int for every level, or one per level,
    selected by ``in_index`` where the module has one) against ``given``."""
    want = getattr(module, 'in_channels', None)
    if not isinstance(want, (int, list, tuple)):
        return
    index = getattr(module, 'in_index', None)
    if index is not None and len(given) > 1:
        picked = index if isinstance(index, (list, tuple)) else [index]
        if any(not -len(given) <= i < len(given) for i in picked):
            raise ConfigError(
                f'model.{path}: in_index={index} but {source} gives '
                f'{len(given)} feature maps')
        given = [given[i] for i in picked]
    if isinstance(want, int):
        ok, fix = all(g == want for g in given), given[0] if len(
            set(given)) == 1 else given
    else:
        ok, fix = list(want) == given, given
    if not ok:
        shown = given[0] if isinstance(want, int) and len(set(given)) == 1 \
            else given
        raise ConfigError(
            f'model.{path}: {type(module).__name__} takes in_channels='
            f'{list(want) if not isinstance(want, int) else want} but '
            f'{source} gives {shown} channels; set model.{path}.in_channels'
            f'={fix}')


def _run(path: str, fn, *args):
    try:
        return fn(*args)
    except _FAILURES as err:
        detail = ' '.join(str(err).split())[:300]
        raise ConfigError(
            f'model.{path}: the shapes-only forward at {SIZE[0]}x{SIZE[1]} '
            f'failed ({type(err).__name__}: {detail})') from None


def _source(name: str, module) -> str:
    arch = getattr(module, 'arch', None)
    kind = type(module).__name__ + (f' arch {arch}' if isinstance(
        arch, str) else '')
    return f'the {name} ({kind})'


def _roi_heads(roi_head, name: str) -> Sequence:
    heads = getattr(roi_head, name, None)
    if heads is None:
        return []
    return list(heads) if isinstance(heads, torch.nn.ModuleList) else [heads]


def _roi_size(roi_head, extractor: str):
    layers = getattr(getattr(roi_head, extractor, None), 'roi_layers', None)
    size = getattr(layers[0], 'output_size', 7) if layers else 7
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def check_shapes(model) -> None:
    """Run the module docstring's shapes-only forward of ``model`` (a
    detector, segmentor or classifier, built on the meta device or for
    real); raise one ConfigError for the first part that cannot take what
    it is given."""
    backbone = getattr(model, 'backbone', None)
    if backbone is None:
        return
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('meta')
    was_training = model.training
    model.eval()  # batch statistics of 1x1 maps are undefined
    try:
        with torch.no_grad():
            _forward(model, torch.empty(1, 3, *SIZE, device=device))
    finally:
        model.train(was_training)


def _forward(model, x) -> None:
    feats = _run('backbone', model.backbone, x)
    source = _source('backbone', model.backbone)
    neck = getattr(model, 'neck', None)
    if neck is not None:
        _expect('neck', neck, _widths(feats), source)
        feats = _run('neck', neck, feats)
        source = _source('neck', neck)
    feats = feats if isinstance(feats, (list, tuple)) else (feats, )
    widths = _widths(feats)
    for name in ('rpn_head', 'decode_head', 'auxiliary_head', 'head'):
        heads = getattr(model, name, None)
        for i, head in enumerate(heads if isinstance(
                heads, torch.nn.ModuleList) else [heads] if heads else []):
            path = f'{name}.{i}' if isinstance(heads, torch.nn.ModuleList) \
                else name
            # a classifier's head takes the last feature map only
            _expect(path, head, widths[-1:] if name == 'head' else widths,
                    source)
            _run(path, head, feats)
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is None:
        return
    width = widths[0]
    for name, extractor in (('bbox_head', 'bbox_roi_extractor'),
                            ('mask_head', 'mask_roi_extractor')):
        size = _roi_size(roi_head, extractor)
        for head in _roi_heads(roi_head, name):
            path = f'roi_head.{name}'
            _expect(path, head, [width], f'{source}, pooled per RoI,')
            _run(path, head, torch.empty(2, width, *size,
                                         device=x.device))
