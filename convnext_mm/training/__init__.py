"""Training that never loses work: :mod:`.checkpoint_hook` writes every
checkpoint whole (through :mod:`.atomic_backend`) and removes an old one only
after its successor is complete; :mod:`.resume` picks the newest complete
checkpoint to resume from."""
from .atomic_backend import ATOMIC_BACKEND, AtomicLocalBackend
from .checkpoint_hook import SafeCheckpointHook, use_safe_checkpoints
from .resume import checkpoint_template, choose_resume, newest_complete

__all__ = [
    'ATOMIC_BACKEND', 'AtomicLocalBackend', 'SafeCheckpointHook',
    'checkpoint_template', 'choose_resume', 'newest_complete',
    'use_safe_checkpoints'
]
