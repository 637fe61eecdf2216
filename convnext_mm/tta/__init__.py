"""Test-time augmentation models (loaded lazily through the registry)."""
try:
    from .instance_seg import InstanceSegTTAModel
except ImportError:  # mmdet is not installed: no detection TTA to offer
    InstanceSegTTAModel = None

__all__ = ['InstanceSegTTAModel']
