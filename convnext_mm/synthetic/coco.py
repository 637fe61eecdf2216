"""A COCO-format instance segmentation dataset of coloured shapes."""
import json
import math
from pathlib import Path
from typing import Dict, Tuple

import cv2
import numpy as np

SHAPE_CLASSES = ('square', 'disc', 'triangle')
# one colour family per class, so the task is learnable in a few minutes
_COLOURS = {'square': (40, 60, 220), 'disc': (40, 200, 60),
            'triangle': (220, 80, 40)}


def _polygon(shape: str, cx: float, cy: float, r: float,
             angle: float) -> np.ndarray:
    if shape == 'disc':
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    elif shape == 'square':
        t = np.arange(4) * math.pi / 2 + math.pi / 4
    else:
        t = np.arange(3) * 2 * math.pi / 3 - math.pi / 2
    t = t + angle
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


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
        img = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        placed = []
        for _ in range(int(rng.integers(1, 4))):
            shape = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            for _attempt in range(20):
                r = float(rng.uniform(0.12, 0.22) * min(h, w))
                cx = float(rng.uniform(r, w - r))
                cy = float(rng.uniform(r, h - r))
                if all(math.hypot(cx - x, cy - y) > r + q + 2
                       for x, y, q in placed):
                    break
            else:
                continue
            placed.append((cx, cy, r))
            poly = _polygon(shape, cx, cy, r, float(rng.uniform(0, math.pi)))
            colour = np.clip(
                np.array(_COLOURS[shape]) + rng.integers(-25, 26, 3), 0, 255)
            cv2.fillPoly(img, [np.round(poly).astype(np.int32)],
                         [int(c) for c in colour])
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
