"""Models: the ConvNeXt backbone."""
from ..arch import ARCH_SETTINGS, find_arch
from .convnext import ConvNeXt

__all__ = ['ARCH_SETTINGS', 'ConvNeXt', 'find_arch']
