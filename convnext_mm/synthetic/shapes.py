"""Scenes of coloured shapes on a noisy background, the raw material of the
generated datasets."""
import math
from typing import List, Optional, Tuple

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


def draw_scene(rng: np.random.Generator, size: Tuple[int, int],
               only: Optional[str] = None
               ) -> Tuple[np.ndarray, List[Tuple[str, np.ndarray]]]:
    """A BGR image with 1-3 non-overlapping shapes (one of class ``only``
    if given), and the shapes as ``(class name, polygon (K, 2) in x, y
    pixels)``."""
    h, w = size
    img = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
    shapes, placed = [], []
    for _ in range(1 if only else int(rng.integers(1, 4))):
        shape = only or SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
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
        shapes.append((shape, poly))
    return img, shapes
