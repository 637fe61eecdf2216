"""Checkpoints: read as untrusted input, mapped onto the model, loaded.

- :mod:`.safe_load` is the one door a file comes in by: it decides whether a
  file is safe (:mod:`.torch_file`, :mod:`.unpickler`, :mod:`.vocabulary`
  for torch files; safetensors; Hugging Face folders).
- :mod:`.sources` turns a name (path, URL, mmengine scheme) into bytes here,
  through :mod:`.download`.
- :mod:`.report` decides how what was read maps onto a model (layouts from
  :mod:`.layouts`), and :mod:`.pretrained` loads from its report.
- :mod:`.mmengine_hook` routes mmengine's own loading through the door.
- :mod:`.saving` writes files whole or not at all.
"""
from .download import DownloadError
from .layouts import (LAYOUT_DESCRIPTIONS, detect_layout, infer_arch,
                      to_convnext_mm)
from .pretrained import load_pretrained, prepare, prepare_whole
from .report import Report, examine
from .safe_load import (CheckpointFileError, CheckpointTooCostlyError,
                        TruncatedError, UnsafeCheckpointError, read_file,
                        safe_torch_load)
from .saving import NoSpaceError
from .sources import read_checkpoint

__all__ = [
    'CheckpointFileError', 'CheckpointTooCostlyError', 'DownloadError',
    'LAYOUT_DESCRIPTIONS', 'NoSpaceError', 'Report', 'TruncatedError',
    'UnsafeCheckpointError', 'detect_layout', 'examine', 'infer_arch',
    'load_pretrained', 'prepare', 'prepare_whole', 'read_checkpoint',
    'read_file', 'safe_torch_load', 'to_convnext_mm'
]
