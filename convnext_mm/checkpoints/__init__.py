"""Checkpoints: safe loading on torch >= 2.6, every common ConvNeXt layout."""
from .checks import check_weights
from .download import DownloadError
from .layouts import (LAYOUT_DESCRIPTIONS, detect_layout, infer_arch,
                      to_convnext_mm)
from .pretrained import check_pretrained, load_pretrained, read_checkpoint
from .safe_load import UnsafeCheckpointError, install, safe_torch_load

__all__ = [
    'DownloadError', 'LAYOUT_DESCRIPTIONS', 'UnsafeCheckpointError',
    'check_pretrained', 'check_weights', 'detect_layout',
    'infer_arch', 'install', 'load_pretrained', 'read_checkpoint',
    'safe_torch_load', 'to_convnext_mm'
]
