"""Write files so that they appear whole or not at all: a private temporary
file in the destination's folder, flushed and renamed into place; on any
error it is removed and the destination stays as it was. The finished file
gets the mode a plain ``open`` would give it (0666 less the umask).
"""
import errno
import os
import os.path as osp
import tempfile
from contextlib import contextmanager
from typing import Dict, Optional

import torch
from safetensors.torch import save

from ..errors import NoSpaceError


def _umask() -> int:
    """The process umask, read from /proc where Linux has it (setting it to
    read it would change it for every thread for a moment)."""
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


PARTIAL_SUFFIX = '.partial'
# a full disk or quota: the write is abandoned, its partial file removed
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def partial_of(name: str) -> str:
    """The file name an :func:`atomic_file` temporary file ``name`` was
    to become ('' for another file); one is left behind only by a killed
    process."""
    if not name.endswith(PARTIAL_SUFFIX):
        return ''
    return name[:-len(PARTIAL_SUFFIX)].rpartition('.')[0]


def _sync_folder(folder: str) -> None:
    """Make a rename in ``folder`` survive a power cut."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder
    finally:
        os.close(fd)


@contextmanager
def atomic_file(dst, overwrite: bool = True):
    """Yield a binary file that becomes ``dst`` only when the block
    completes.

    With ``overwrite=False`` a ``dst`` that appeared meanwhile is left alone
    and FileExistsError is raised (the rename is then a hard link, which
    fails instead of replacing). A full disk raises :class:`NoSpaceError`
    naming ``dst``, after the partial file is removed.
    """
    dst = os.fspath(dst)
    folder = osp.dirname(dst) or '.'
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=osp.basename(dst)[:100] +
                               '.', suffix=PARTIAL_SUFFIX)
    try:
        try:
            with os.fdopen(fd, 'wb') as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
        except OSError as err:
            if err.errno not in NO_SPACE:
                raise
            os.remove(tmp)
            raise NoSpaceError(
                f'writing {dst} failed: {err.strerror}; its partial file '
                'was removed (free space and run again)') from None
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, dst)
        else:
            try:
                os.link(tmp, dst)
            except FileExistsError:
                raise FileExistsError(
                    f'{dst} appeared while it was being written; it was '
                    'left as it is (pass --force to overwrite it)') from None
        _sync_folder(folder)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def write_safetensors(state: Dict[str, torch.Tensor], out,
                      metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``state`` to the open binary file ``out`` as safetensors.

    Tensors are stored contiguous and unshared (the format keeps no views).
    """
    out.write(
        save({k: v.detach().contiguous().clone()
              for k, v in state.items()},
             metadata={k: str(v)
                       for k, v in (metadata or {}).items()}))
