"""convnext_mm: ConvNeXt for OpenMMLab detection, segmentation, classification.

Importing the package (``custom_imports=dict(imports=['convnext_mm'])`` in a
config) registers the ``ConvNeXt`` backbone and the
``ConvNeXtLRDecayConstructor`` optimizer constructor, and makes mmengine load
its own checkpoints safely under torch >= 2.6. It needs neither mmpretrain nor
torchvision.
"""
from . import checkpoints
from .checkpoints import load_pretrained, safe_torch_load
from .models import ARCH_SETTINGS, ConvNeXt
from .optim import ConvNeXtLRDecayConstructor

__version__ = '0.1.0'

checkpoints.install()

__all__ = [
    'ARCH_SETTINGS', 'ConvNeXt', 'ConvNeXtLRDecayConstructor',
    'load_pretrained', 'safe_torch_load', '__version__'
]
