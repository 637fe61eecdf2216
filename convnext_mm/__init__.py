"""convnext_mm: ConvNeXt for OpenMMLab detection, segmentation, classification.

Importing the package (``custom_imports=dict(imports=['convnext_mm'])`` in a
config) registers the ``ConvNeXt`` backbone and the
``ConvNeXtLRDecayConstructor`` optimizer constructor. Its one change to the
process is the line below that calls ``mmengine_hook.install()``: every
checkpoint mmengine loads then goes through convnext_mm's safe reader. It
needs neither mmpretrain nor torchvision.
"""
from .checkpoints import load_pretrained, mmengine_hook, safe_torch_load
from .models import ARCH_SETTINGS, ConvNeXt
from .optim import ConvNeXtLRDecayConstructor

__version__ = '0.1.0'

mmengine_hook.install()  # mmengine's checkpoint loading -> our safe reader

__all__ = [
    'ARCH_SETTINGS', 'ConvNeXt', 'ConvNeXtLRDecayConstructor',
    'load_pretrained', 'safe_torch_load', '__version__'
]
