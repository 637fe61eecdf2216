"""Write a file so that it appears whole or not at all."""
import os
import os.path as osp
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_file(dst: str):
    """Yield a binary file that is renamed to ``dst`` only when the block
    completes; on any error the temporary ``<dst>.*.partial`` is removed and
    an existing ``dst`` stays as it was."""
    folder = osp.dirname(os.fspath(dst)) or '.'
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix=osp.basename(os.fspath(dst)) + '.',
        suffix='.partial')
    try:
        with os.fdopen(fd, 'wb') as out:
            yield out
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
