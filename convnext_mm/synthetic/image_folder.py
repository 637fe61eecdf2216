"""An ImageNet-style folder dataset (one folder per class) of shapes."""
from pathlib import Path
from typing import Dict, Tuple

import cv2
import numpy as np

from .shapes import SHAPE_CLASSES, draw_scene


def make_image_folder(root, per_class: int = 8, val_per_class: int = 3,
                      size: Tuple[int, int] = (64, 64),
                      seed: int = 0) -> Dict[str, object]:
    """Write ``root/{train,val}/<class>/*.jpg``, one shape per image.

    Returns:
        dict: ``data_root`` and ``classes``, for an mmpretrain
        ``CustomDataset`` with ``data_prefix='train'`` / ``'val'``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (('train', per_class), ('val', val_per_class)):
        for name in SHAPE_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                img, _ = draw_scene(rng, size, only=name)
                cv2.imwrite(str(folder / f'{name}_{index:04d}.jpg'), img,
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
    return dict(data_root=str(root) + '/', classes=SHAPE_CLASSES)
