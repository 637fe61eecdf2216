"""Models: the ConvNeXt backbone."""
from .convnext import ARCH_SETTINGS, ConvNeXt, find_arch

__all__ = ['ARCH_SETTINGS', 'ConvNeXt', 'find_arch']
