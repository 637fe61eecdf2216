"""An ADE20K-format semantic segmentation dataset of coloured shapes."""
from pathlib import Path
from typing import Dict, Tuple

import cv2
import numpy as np

from .shapes import SHAPE_CLASSES, draw_scene

# label 0 is ADE20K's "other", ignored under reduce_zero_label; the classes
# the model sees are these, in order
ADE_CLASSES = ('ground', ) + SHAPE_CLASSES
ADE_PALETTE = [[120, 120, 120], [220, 60, 40], [60, 200, 40], [40, 80, 220]]


def make_ade20k(root, num_train: int = 12, num_val: int = 4,
                size: Tuple[int, int] = (128, 128),
                seed: int = 0) -> Dict[str, object]:
    """Write ``images/{training,validation}/*.jpg`` and 8-bit label maps
    ``annotations/{training,validation}/*.png`` under ``root``.

    Label maps hold 0 in a 2-pixel border ("other", ignored), 1 for the
    ground and 2.. for the shapes, so ``reduce_zero_label=True`` yields the
    classes :data:`ADE_CLASSES`.

    Returns:
        dict: ``data_root`` and ``metainfo`` (classes and palette) for an
        mmseg ``ADE20KDataset`` config.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (('training', num_train), ('validation', num_val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            img, shapes = draw_scene(rng, size)
            label = np.ones(size, np.uint8)
            label[:2], label[-2:], label[:, :2], label[:, -2:] = 0, 0, 0, 0
            for shape, poly in shapes:
                cv2.fillPoly(label, [np.round(poly).astype(np.int32)],
                             ADE_CLASSES.index(shape) + 1)
            name = f'ADE_{split}_{index:08d}'
            cv2.imwrite(str(root / 'images' / split / f'{name}.jpg'), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / 'annotations' / split / f'{name}.png'),
                        label)
    return dict(
        data_root=str(root) + '/',
        metainfo=dict(classes=ADE_CLASSES, palette=ADE_PALETTE))
