"""A COCO-format instance segmentation dataset of coloured shapes."""
import json
from pathlib import Path
from typing import Dict, Tuple

import cv2
import numpy as np

from .shapes import SHAPE_CLASSES, draw_scene


def make_coco_instances(root, num_images: int = 16,
                        size: Tuple[int, int] = (128, 160), seed: int = 0,
                        split: str = 'train') -> Dict[str, str]:
    """Write ``root/<split>/*.jpg`` and ``root/annotations/<split>.json``.

    Each image holds 1-3 non-overlapping shapes (class colour plus noise, on
    a noisy background) with polygon masks, COCO ``bbox`` and ``area``.

    Returns:
        dict: ``data_root``, ``ann_file`` (relative) and ``img_dir``
        (relative), ready for an mmdet ``CocoDataset`` config.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    h, w = size
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        img, shapes = draw_scene(rng, size)
        for shape, poly in shapes:
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=SHAPE_CLASSES.index(shape) + 1,
                    segmentation=[poly.round(2).flatten().tolist()],
                    area=float(cv2.contourArea(poly.astype(np.float32))),
                    bbox=[float(x0), float(y0), float(x1 - x0),
                          float(y1 - y0)],
                    iscrowd=0))
        name = f'{split}_{image_id:05d}.jpg'
        cv2.imwrite(str(root / split / name), img,
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=image_id, file_name=name, height=h, width=w))
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(SHAPE_CLASSES)
    ]
    ann_file = f'annotations/{split}.json'
    with open(root / ann_file, 'w') as f:
        json.dump(dict(info=dict(description='convnext_mm shapes',
                                 version='1.0'),
                       licenses=[], images=images, annotations=annotations,
                       categories=categories), f)
    return dict(data_root=str(root) + '/', ann_file=ann_file,
                img_dir=f'{split}/')
