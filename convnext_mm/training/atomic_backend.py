"""A local file backend whose writes appear whole or not at all.

mmengine's ``save_checkpoint`` serialises a checkpoint into memory and hands
the bytes to the file backend that the checkpoint hook's ``backend_args``
name; its ``LocalBackend.put`` opens the destination and writes in place, so
a kill or a full disk mid-write leaves a truncated checkpoint under the
final name. This backend writes through :func:`~convnext_mm.checkpoints.
saving.atomic_file` (temporary name, flush, fsync, rename, folder synced)
and, on a full disk, removes the partial file and raises one
:class:`~convnext_mm.checkpoints.saving.NoSpaceError`. Reading, listing and
removing are LocalBackend's.

It is registered under :data:`ATOMIC_BACKEND` when a
:class:`~.checkpoint_hook.SafeCheckpointHook` is built (a file backend is
found by name through mmengine's backend table; importing the package
registers nothing).
"""
from typing import Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio.backends import backends

from ..checkpoints.saving import atomic_file

ATOMIC_BACKEND = 'convnext_mm_atomic_local'


class AtomicLocalBackend(LocalBackend):
    """``LocalBackend`` with whole-or-nothing ``put`` and ``put_text``."""

    def put(self, obj: bytes, filepath) -> None:
        with atomic_file(filepath) as out:
            out.write(obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


def register() -> str:
    """Register the backend (once); returns its name for ``backend_args``."""
    if ATOMIC_BACKEND not in backends:
        register_backend(ATOMIC_BACKEND, AtomicLocalBackend)
    return ATOMIC_BACKEND


def is_local(path: Union[str, None]) -> bool:
    """A plain path (no ``scheme://``) is written by the local backend."""
    return path is None or '://' not in str(path)
