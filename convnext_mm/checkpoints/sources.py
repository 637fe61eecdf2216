"""Where a checkpoint comes from, and reading it once per run.

A checkpoint is named by a local path (file or Hugging Face folder), an
http(s) URL, or one of the names mmengine's ``CheckpointLoader`` knows:
``open-mmlab://`` / ``openmmlab://`` and ``mmcls://`` (mmengine's model-zoo
tables), ``torchvision://`` / ``modelzoo://`` (torchvision's weight URLs),
``s3://`` / ``petrel://`` (mmengine's file backends, bytes fetched and read
in memory). Each is turned into bytes on this machine here and then read by
:func:`.safe_load.read_file`; a name of any other scheme (``pavi://``, or
one registered later) is refused, since its loader would read the file with
an unchecked ``torch.load``.

:func:`read_checkpoint` reads; :func:`keep` lets a pre-flight check hand
what it read to the next read of the same file (the runner's load), so a
run reads each checkpoint once.
"""
import io
import os
import os.path as osp
import re
from typing import Optional, Tuple

from .download import cache_path, cached_download
from .safe_load import CheckpointFileError, read_file, safe_torch_load

# mmengine's schemes, as regular expressions matched at the start of a name
MODEL_ZOO = ('open-mmlab://', 'openmmlab://')
MMCLS = 'mmcls://'
TORCHVISION = ('torchvision://', 'modelzoo://')
HTTP = ('http://', 'https://')
BACKENDS = (r'(\S+\:)?s3://', r'(\S+\:)?petrel://')
_SCHEME = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*:(\S+:)?//')


class UnsupportedSchemeError(CheckpointFileError):
    """A checkpoint name whose scheme convnext_mm cannot read safely."""


def _zoo_url(name: str) -> str:
    """The URL (or local file under mmengine's home) an mmengine model-zoo
    name stands for."""
    from mmengine.runner import checkpoint as mm
    if name.startswith(MODEL_ZOO):
        key = name.split('://', 1)[1]
        key = mm.get_deprecated_model_names().get(key, key)
        table, what = mm.get_external_models(), 'open-mmlab://'
    elif name.startswith(MMCLS):
        key, table, what = name[len(MMCLS):], mm.get_mmcls_models(), MMCLS
    else:
        key = name.split('://', 1)[1]
        table, what = mm.get_torchvision_models(), 'torchvision://'
    if key not in table:
        raise KeyError(f'{name}: mmengine has no {what} model named '
                       f'{key!r}; give a checkpoint path or URL instead')
    target = table[key]
    if target.startswith(HTTP):
        return target
    return osp.join(mm._get_mmengine_home(), target)


def locate(name: str, model_dir: Optional[str] = None) -> str:
    """The local path of checkpoint ``name`` (downloading a URL into the
    cache first). Raises :class:`UnsupportedSchemeError` for schemes that
    cannot be read safely."""
    name = os.fspath(name)
    if name.startswith(MODEL_ZOO + (MMCLS, ) + TORCHVISION):
        name = _zoo_url(name)
    if name.startswith(HTTP):
        return cached_download(name, model_dir=model_dir)
    scheme = _SCHEME.match(name)
    if scheme and not any(re.match(p, name) for p in BACKENDS):
        raise UnsupportedSchemeError(
            f'checkpoint {name}: the {scheme.group()} scheme is not read by '
            "convnext_mm's safe loader (its mmengine loader would unpickle "
            'the file unchecked); copy the file to a local path (or an '
            'http(s) URL) and give that')
    return name


def _read_backend(name: str, map_location):
    """s3:// and petrel:// names: the bytes through mmengine's file backend,
    read in memory as any torch file."""
    from mmengine.fileio import get_file_backend
    backend = get_file_backend(name, backend_args={'backend': 'petrel'})
    with io.BytesIO(backend.get(name)) as buffer:
        return safe_torch_load(buffer, map_location=map_location)


def identity(path: str) -> Tuple:
    try:
        stat = os.stat(path)
    except OSError:
        return (path, )
    return (osp.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


_KEPT: dict = {}


def keep(name: str, checkpoint) -> None:
    """Hand ``checkpoint``, just read from ``name``, to the next
    :func:`read_checkpoint` of the same unchanged file (one is kept)."""
    _KEPT.clear()
    if not _SCHEME.match(os.fspath(name)) or os.fspath(name).startswith(
            HTTP):
        _KEPT[(os.fspath(name), identity(locate_cached(name)))] = checkpoint


def locate_cached(name: str) -> str:
    """:func:`locate` for a name already read (no download)."""
    name = os.fspath(name)
    return cache_path(name) if name.startswith(HTTP) else name


def read_checkpoint(name, map_location='cpu'):
    """Read checkpoint ``name`` (see the module docstring) without running
    code; a file a pre-flight check :func:`keep`-s is not read again."""
    name = os.fspath(name)
    if any(re.match(p, name) for p in BACKENDS):
        return _read_backend(name, map_location)
    path = locate(name)
    kept = _KEPT.pop((name, identity(path)), None)
    _KEPT.clear()
    if kept is not None and map_location in (None, 'cpu'):
        return kept
    return read_file(path, map_location=map_location)
