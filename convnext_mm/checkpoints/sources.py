"""Where a checkpoint comes from, and the package's one cache.

A checkpoint is named by a local path (a file or a Hugging Face folder), or
by one of the schemes of mmengine's ``CheckpointLoader`` in :data:`SCHEMES`
(http(s) URLs downloaded once by :mod:`.download`, mmengine's model-zoo
names, ``s3://`` / ``petrel://`` through mmengine's file backend), and read
by :mod:`.safe_load`. Any other scheme is refused by :func:`refused`: its
mmengine loader would read the file with an unchecked ``torch.load``.
"""
import io
import os
import os.path as osp
import re

from mmengine.fileio import get_file_backend
from mmengine.runner import checkpoint as mm

from ..errors import UnsupportedSchemeError
from .download import cached_download
from .safe_load import read_file, safe_torch_load

# mmengine's scheme prefixes (regular expressions matched at the start of a
# name) and how a name of each is read
SCHEMES = {
    'http://': 'url', 'https://': 'url',
    'open-mmlab://': 'open-mmlab', 'openmmlab://': 'open-mmlab',
    'mmcls://': 'mmcls',
    'torchvision://': 'torchvision', 'modelzoo://': 'torchvision',
    r'(\S+\:)?s3://': 'backend', r'(\S+\:)?petrel://': 'backend',
}
_ANY_SCHEME = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*:(\S+:)?//')

# The package's one cache: the checkpoint a pre-flight check read
# (``read_checkpoint(..., keep=True)``), under its name and the file's
# identity (real path, size, mtime, inode). The next read_checkpoint takes
# it if it is of that name and the file is unchanged, and drops it in any
# case: it carries one file from a run's pre-flight to the runner's load.
_KEPT: dict = {}


def refused(name: str) -> UnsupportedSchemeError:
    """The refusal of a name whose scheme is not read safely."""
    return UnsupportedSchemeError(
        f"checkpoint {name}: this scheme is not read by convnext_mm's safe "
        "loader (mmengine's loader for it, or one registered after "
        "convnext_mm's, would unpickle the file unchecked); copy the file "
        'to a local path or an http(s) URL and give that')


def scheme(name: str) -> str:
    """How ``name`` is read: a value of :data:`SCHEMES`, or 'file'."""
    for prefix, kind in SCHEMES.items():
        if re.match(prefix, name):
            return kind
    if _ANY_SCHEME.match(name):
        raise refused(name)
    return 'file'


def _zoo_target(name: str, kind: str) -> str:
    """The URL (or local file under mmengine's home) of a model-zoo name."""
    key = name.split('://', 1)[1]
    if kind == 'open-mmlab':
        key = mm.get_deprecated_model_names().get(key, key)
    table = {'open-mmlab': mm.get_external_models, 'mmcls':
             mm.get_mmcls_models, 'torchvision': mm.get_torchvision_models}
    models = table[kind]()
    if key not in models:
        raise KeyError(f'{name}: mmengine has no {kind}:// model named '
                       f'{key!r}; give a checkpoint path or URL instead')
    if scheme(models[key]) == 'url':
        return models[key]
    return osp.join(mm._get_mmengine_home(), models[key])


def locate(name: str) -> str:
    """The local path of checkpoint ``name``, a URL downloaded first."""
    kind = scheme(name)
    if kind in ('open-mmlab', 'mmcls', 'torchvision'):
        name = _zoo_target(name, kind)
        kind = scheme(name)
    return cached_download(name) if kind == 'url' else name


def _identity(path: str) -> tuple:
    try:
        stat = os.stat(path)
    except OSError:
        return (path, )
    return (osp.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def read_checkpoint(name, map_location='cpu', keep: bool = False):
    """Read checkpoint ``name`` (see the module docstring) without running
    code; with ``keep``, hand what was read to the next read of the same
    unchanged file (see ``_KEPT``)."""
    name = os.fspath(name)
    if scheme(name) == 'backend':
        _KEPT.clear()
        backend = get_file_backend(name, backend_args={'backend': 'petrel'})
        with io.BytesIO(backend.get(name)) as buffer:
            return safe_torch_load(buffer, map_location=map_location)
    path = locate(name)
    key = (name, _identity(path))
    checkpoint = _KEPT.pop(key, None)
    _KEPT.clear()
    if checkpoint is None or map_location not in (None, 'cpu'):
        checkpoint = read_file(path, map_location=map_location)
    if keep and map_location in (None, 'cpu'):
        _KEPT[key] = checkpoint
    return checkpoint
