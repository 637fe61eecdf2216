"""Route every checkpoint mmengine loads through convnext_mm's safe reader.

mmengine reads checkpoints through ``CheckpointLoader``, a table of URL
schemes to loader functions (``load_from``, ``--resume``, ``init_cfg``,
``load_checkpoint``, the runner's own loads). Each of its loaders calls
``torch.load`` on the file. :func:`install`, which ``import convnext_mm``
runs, replaces every scheme in that table, as found at that moment, with a
loader of ours that reads the same name through :mod:`.sources` (local
files, Hugging Face folders, http(s), mmengine's model-zoo names, s3/petrel)
or refuses it in one line (``pavi://``). ``CheckpointLoader.load_checkpoint``
itself is wrapped so that a scheme registered later, whose loader is not
ours, is refused rather than served unchecked.

A whole Hugging Face UperNet comes back under mmseg's names, so
``load_from`` and ``tools/test.py`` take it as it is.
"""
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

from .sources import UnsupportedSchemeError, read_checkpoint
from .transformers_layouts import as_mmseg_checkpoint


def _as_mmengine_checkpoint(name: str, checkpoint):
    converted = as_mmseg_checkpoint(name, checkpoint)
    if converted is not checkpoint:
        print_log(f'{name}: layout Hugging Face UperNetForSemanticSegmentation'
                  f'; {len(converted["state_dict"])} tensors read under '
                  "mmseg's names", logger='current')
    return converted


# mmengine logs ``loader.__name__[10:]`` as the backend's name
def load_from_safe(filename, map_location=None):
    """Our loader for every scheme we read."""
    return _as_mmengine_checkpoint(
        filename, read_checkpoint(filename, map_location=map_location))


def load_from_mmcls(filename, map_location=None):
    """``mmcls://``: as mmengine's, the backbone of an mmcls model."""
    from mmengine.runner.checkpoint import _process_mmcls_checkpoint
    return _process_mmcls_checkpoint(
        read_checkpoint(filename, map_location=map_location))


def load_from_refused(filename, map_location=None):
    """A scheme whose files we cannot fetch to read safely."""
    raise UnsupportedSchemeError(
        f'checkpoint {filename}: this scheme is not read by convnext_mm\'s '
        'safe loader (its mmengine loader would unpickle the file '
        'unchecked); copy the file to a local path and give that')


OURS = (load_from_safe, load_from_mmcls, load_from_refused)
_READABLE = ('', 'http://', 'https://', 'open-mmlab://', 'openmmlab://',
             'torchvision://', 'modelzoo://', r'(\S+\:)?s3://',
             r'(\S+\:)?petrel://')
_ORIGINAL_LOAD = CheckpointLoader.__dict__['load_checkpoint']


def _guarded_load(cls, filename, map_location=None, logger='current'):
    """``CheckpointLoader.load_checkpoint``, refusing loaders not ours."""
    loader = cls._get_checkpoint_loader(filename)
    if loader not in OURS:
        raise UnsupportedSchemeError(
            f'checkpoint {filename}: its scheme is served by '
            f'{getattr(loader, "__qualname__", loader)!s}, registered after '
            "convnext_mm's safe loading, which would read it unchecked; copy "
            'the file to a local path and give that')
    return _ORIGINAL_LOAD.__func__(cls, filename, map_location, logger)


def install() -> None:
    """Replace each of mmengine's checkpoint schemes with our loader (see
    the module docstring). Idempotent."""
    for prefix in list(CheckpointLoader._schemes):
        loader = load_from_mmcls if prefix == 'mmcls://' else (
            load_from_safe if prefix in _READABLE else load_from_refused)
        CheckpointLoader.register_scheme(prefix, loader, force=True)
    CheckpointLoader.load_checkpoint = classmethod(_guarded_load)
