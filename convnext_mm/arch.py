"""The ConvNeXt family's depths and widths (V1 and V2 share them).

A leaf module: the backbone builds from it, and the checkpoint readers name
the arch a file holds from it, without either importing the other.
"""
from typing import Dict, Optional, Sequence

ARCH_SETTINGS: Dict[str, Dict[str, Sequence[int]]] = {
    'atto': dict(depths=(2, 2, 6, 2), channels=(40, 80, 160, 320)),
    'femto': dict(depths=(2, 2, 6, 2), channels=(48, 96, 192, 384)),
    'pico': dict(depths=(2, 2, 6, 2), channels=(64, 128, 256, 512)),
    'nano': dict(depths=(2, 2, 8, 2), channels=(80, 160, 320, 640)),
    'tiny': dict(depths=(3, 3, 9, 3), channels=(96, 192, 384, 768)),
    'small': dict(depths=(3, 3, 27, 3), channels=(96, 192, 384, 768)),
    'base': dict(depths=(3, 3, 27, 3), channels=(128, 256, 512, 1024)),
    'large': dict(depths=(3, 3, 27, 3), channels=(192, 384, 768, 1536)),
    'xlarge': dict(depths=(3, 3, 27, 3), channels=(256, 512, 1024, 2048)),
    'huge': dict(depths=(3, 3, 27, 3), channels=(352, 704, 1408, 2816)),
}


def find_arch(depths, channels) -> Optional[str]:
    """Return the name of the arch with these depths and channels, if any."""
    for name, setting in ARCH_SETTINGS.items():
        if tuple(setting['depths']) == tuple(depths) and \
                tuple(setting['channels']) == tuple(channels):
            return name
    return None
