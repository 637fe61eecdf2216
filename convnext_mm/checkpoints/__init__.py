"""Checkpoints: read as untrusted input, mapped onto the model, loaded.

- :mod:`.safe_load` is the one door a file comes in by: it decides whether a
  file is safe (:mod:`.torch_file`, :mod:`.unpickler`, :mod:`.vocabulary`
  for torch files; safetensors; Hugging Face folders).
- :mod:`.sources` turns a name (path, URL, mmengine scheme) into bytes here,
  through :mod:`.download`, and keeps the package's one cache.
- :mod:`.report` maps what was read onto a model (layouts from
  :mod:`.layouts`), checks it before a run and loads from its report.
- :mod:`.mmengine_hook` routes mmengine's own loading through the door.
- :mod:`.saving` writes files whole or not at all.
"""
from ..errors import (CheckpointFileError, CheckpointTooCostlyError,
                      DownloadError, NoSpaceError, TruncatedError,
                      UnsafeCheckpointError)
from .layouts import LAYOUTS, detect_layout, infer_arch, to_convnext_mm
from .report import Report, examine, load_pretrained, prepare
from .safe_load import read_file, safe_torch_load
from .sources import read_checkpoint

__all__ = [
    'CheckpointFileError', 'CheckpointTooCostlyError', 'DownloadError',
    'LAYOUTS', 'NoSpaceError', 'Report', 'TruncatedError',
    'UnsafeCheckpointError', 'detect_layout', 'examine', 'infer_arch',
    'load_pretrained', 'prepare', 'read_checkpoint', 'read_file',
    'safe_torch_load', 'to_convnext_mm'
]
