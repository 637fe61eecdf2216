#!/usr/bin/env python
"""How long the data pre-flight of tools/train.py takes on a COCO-sized
dataset, and the deployment's mask pasting against mmdeploy's.

    python benchmarks/preflight.py [--work DIR] [--images 118287]

Writes a COCO-format annotation file of train2017's size (118,287 images,
7.3 annotations each with a 24-point polygon, 80 categories) and one file
per image holding a 640x480 JPEG's header (no image data), then times
``convnext_mm.launch.check_data`` (the default ``--check-data quick``:
existence, image headers and JSON) as tools/train.py runs it. Then
pastes 100 masks of 28x28 into an 800x1333 image with mmdeploy's per-box
``grid_sample`` and with ``convnext_mm.deploy.postprocess.paste_masks``
(median of 5). Prints the CPU first.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmengine.config import Config  # noqa: E402

from backbone import cpu_features  # noqa: E402  (benchmarks/backbone.py)
from convnext_mm.launch import check_data  # noqa: E402
from tools._tool import first_sentence  # noqa: E402


def jpeg_header(width: int, height: int) -> bytes:
    """A JPEG's header up to its scan (format and size, no image data):
    what the quick check reads of an image."""
    _, data = cv2.imencode('.jpg', np.zeros((height, width, 3), np.uint8))
    data = data.tobytes()
    scan = data.index(b'\xff\xda')
    return data[:scan + 2 + int.from_bytes(data[scan + 2:scan + 4], 'big')]


def coco_sized(root: Path, images: int) -> Path:
    rng = np.random.default_rng(0)
    header = jpeg_header(640, 480)
    img_dir = root / 'train2017'
    img_dir.mkdir(parents=True, exist_ok=True)
    records, anns = [], []
    per_image = rng.poisson(7.3, images)
    for i in range(images):
        name = f'{i:012d}.jpg'
        (img_dir / name).write_bytes(header)
        records.append(dict(id=i, file_name=name, width=640, height=480))
        for _ in range(per_image[i]):
            x, y = rng.uniform(0, 500, 2).round(2).tolist()
            poly = rng.uniform(0, 480, 48).round(2).tolist()
            anns.append(dict(id=len(anns), image_id=i, iscrowd=0,
                             category_id=int(rng.integers(1, 81)),
                             bbox=[x, y, 40.5, 30.25], area=1215.1,
                             segmentation=[poly]))
    cats = [dict(id=k, name=f'class{k}') for k in range(1, 81)]
    ann = root / 'annotations' / 'instances_train2017.json'
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(dict(images=records, annotations=anns,
                                   categories=cats)))
    return ann


def timed(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument('--work', default='work_dirs/benchmark_preflight')
    parser.add_argument('--images', type=int, default=118287)
    args = parser.parse_args()
    print(f'- CPU: {cpu_features()}; {torch.get_num_threads()} threads')
    root = Path(args.work).resolve()
    ann = coco_sized(root, args.images)
    cfg = Config(dict(default_scope='mmdet', train_dataloader=dict(
        dataset=dict(type='CocoDataset', data_root=str(root) + '/',
                     ann_file='annotations/instances_train2017.json',
                     data_prefix=dict(img='train2017/'),
                     metainfo=dict(classes=[f'class{k}'
                                            for k in range(1, 81)])))))
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    start = time.perf_counter()
    check_data(cfg, ['train'])
    took = time.perf_counter() - start
    print(f'- data pre-flight (--check-data quick): {args.images} images, '
          f'{ann.stat().st_size / 2**20:.0f} MiB of annotations: '
          f'{took:.1f} s')

    from mmdeploy.codebase.mmdet.deploy.object_detection_model import \
        End2EndModel

    from convnext_mm.deploy.postprocess import paste_masks
    gen = torch.Generator().manual_seed(0)
    n, h, w = 100, 800, 1333
    x0, y0 = torch.rand(n, generator=gen) * 1200, torch.rand(
        n, generator=gen) * 700
    boxes = torch.stack([x0, y0, x0 + torch.rand(n, generator=gen) * 300,
                         y0 + torch.rand(n, generator=gen) * 200], 1)
    masks = torch.rand(n, 28, 28, generator=gen)
    theirs = timed(lambda: End2EndModel.postprocessing_masks(
        boxes, masks, w, h) >= 0.5)
    ours = timed(lambda: paste_masks(masks, boxes, h, w))
    print(f'- pasting {n} masks into {h}x{w}: mmdeploy {1e3 * theirs:.0f} '
          f'ms, convnext_mm {1e3 * ours:.0f} ms ({theirs / ours:.1f}x)')


if __name__ == '__main__':
    main()
