"""Route every checkpoint mmengine loads through convnext_mm's safe reader.

:func:`install`, which ``import convnext_mm`` runs, replaces every scheme of
mmengine's ``CheckpointLoader`` (``load_from``, ``--resume``, ``init_cfg``,
``load_checkpoint``) with a loader of ours that reads the name through
:mod:`.sources`, or refuses it in one line (a scheme not in
:data:`.sources.SCHEMES`, or one registered later). A whole Hugging Face
UperNet comes back under mmseg's names.
"""
from mmengine.logging import print_log
from mmengine.runner.checkpoint import (CheckpointLoader,
                                        _process_mmcls_checkpoint)

from .layouts import as_mmseg_checkpoint
from .sources import SCHEMES, read_checkpoint, refused


# mmengine logs ``loader.__name__[10:]`` as the backend's name
def load_from_safe(filename, map_location=None):
    """Our loader for every scheme we read."""
    checkpoint = read_checkpoint(filename, map_location=map_location)
    converted = as_mmseg_checkpoint(filename, checkpoint)
    if converted is not checkpoint:
        print_log(f'{filename}: layout Hugging Face UperNetForSemantic'
                  f'Segmentation; {len(converted["state_dict"])} tensors '
                  "read under mmseg's names", logger='current')
    return converted


def load_from_mmcls(filename, map_location=None):
    """``mmcls://``: as mmengine's, the backbone of an mmcls model."""
    return _process_mmcls_checkpoint(
        read_checkpoint(filename, map_location=map_location))


def load_from_refused(filename, map_location=None):
    """A scheme whose files we cannot fetch to read safely."""
    raise refused(filename)


OURS = (load_from_safe, load_from_mmcls, load_from_refused)
_ORIGINAL_LOAD = CheckpointLoader.__dict__['load_checkpoint']


def _guarded_load(cls, filename, map_location=None, logger='current'):
    """``CheckpointLoader.load_checkpoint``, refusing loaders not ours."""
    if cls._get_checkpoint_loader(filename) not in OURS:
        raise refused(filename)
    return _ORIGINAL_LOAD.__func__(cls, filename, map_location, logger)


def install() -> None:
    """Replace each of mmengine's checkpoint schemes with our loader (see
    the module docstring). Idempotent."""
    for prefix in list(CheckpointLoader._schemes):
        kind = 'file' if prefix == '' else SCHEMES.get(prefix)
        loader = load_from_mmcls if kind == 'mmcls' else (
            load_from_safe if kind else load_from_refused)
        CheckpointLoader.register_scheme(prefix, loader, force=True)
    CheckpointLoader.load_checkpoint = classmethod(_guarded_load)
