"""Load a checkpoint into a model from its report, and check one before a
run without reading it twice.

``ConvNeXt.init_weights`` calls :func:`load_pretrained` for
``init_cfg=dict(type='Pretrained', checkpoint=...)``; the tools' pre-flight
calls :func:`prepare` (on a shapes-only model) first. Both go the same way:
:func:`.sources.read_checkpoint` reads the file through the one safe door,
:func:`.report.examine` maps it onto the model. The report :func:`prepare`
makes is kept for the load of the same file onto a model of the same
configuration, so a run reads and checks each checkpoint once.
"""
import os
from typing import Dict, List, Optional

from mmengine.logging import print_log

from .report import Report, check_final_norm, examine
from .sources import identity, keep, locate_cached, read_checkpoint
from .transformers_layouts import as_mmseg_checkpoint

__all__ = ['check_final_norm', 'load_pretrained', 'prepare',
           'prepare_whole']

_PREPARED: dict = {}


def _source(checkpoint) -> str:
    return os.fspath(checkpoint) if isinstance(checkpoint, (
        str, os.PathLike)) else 'the checkpoint'


def _key(model, checkpoint, prefix, final_norm):
    name = os.fspath(checkpoint)
    spec = tuple(getattr(model, k, None) for k in (
        'depths', 'channels', 'use_grn', 'out_indices',
        'gap_before_final_norm', 'num_stages'))
    return (name, identity(locate_cached(name)), prefix,
            check_final_norm(final_norm), repr(spec))


def _read(checkpoint, map_location='cpu'):
    """A backbone's pretrained checkpoint, read (a missing one named with
    the init_cfg that names it)."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return checkpoint
    try:
        return read_checkpoint(checkpoint, map_location)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f'pretrained checkpoint not found: {err}. Set '
            "init_cfg=dict(type='Pretrained', checkpoint=...) to a local "
            'checkpoint file or an http(s) URL') from None


def prepare(model, checkpoint, prefix: Optional[str] = None,
            final_norm: Optional[str] = None) -> Report:
    """Read and check ``checkpoint`` for ``model`` (a backbone, possibly
    shapes only) before a run; raise one ValueError if it cannot load. The
    report is kept for :func:`load_pretrained`."""
    report = examine(model, _read(checkpoint), _source(checkpoint), prefix,
                     final_norm).check()
    _PREPARED.clear()
    if isinstance(checkpoint, (str, os.PathLike)):
        _PREPARED[_key(model, checkpoint, prefix, final_norm)] = report
    return report


def prepare_whole(model, checkpoint) -> Report:
    """:func:`prepare` for a whole model's checkpoint (``load_from``, a test
    or deploy checkpoint); what was read is kept for mmengine's load."""
    raw = as_mmseg_checkpoint(_source(checkpoint), read_checkpoint(checkpoint))
    report = examine(model, raw, _source(checkpoint)).check()
    report.contents = [str(k) for k in raw] if isinstance(raw, dict) else []
    keep(os.fspath(checkpoint), raw)
    return report


def load_pretrained(model,
                    checkpoint,
                    prefix: Optional[str] = None,
                    map_location='cpu',
                    final_norm: Optional[str] = None) -> Dict[str, List[str]]:
    """Load ``checkpoint`` (a path, URL or loaded dict) into a ConvNeXt.

    The layout is recognised automatically. ``final_norm`` ('fresh' or
    'copy') says where a classification checkpoint's final norm goes in a
    dense model (see :mod:`.report`). Logs the report (layout, loaded,
    fresh, left out) and returns those lists under the keys ``loaded``,
    ``fresh``, ``left_out`` and the ``layout`` name.
    """
    report = None
    if isinstance(checkpoint, (str, os.PathLike)):
        report = _PREPARED.pop(_key(model, checkpoint, prefix, final_norm),
                               None)
    if report is None:
        report = examine(model, _read(checkpoint, map_location),
                         _source(checkpoint), prefix, final_norm).check()
    model.load_state_dict(report.state, strict=False)
    print_log('\n'.join(report.lines()), logger='current')
    return dict(loaded=report.loaded, fresh=report.fresh,
                left_out=report.left_out, layout=report.layout)
