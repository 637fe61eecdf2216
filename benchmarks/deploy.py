#!/usr/bin/env python
"""docs/deployment.md's table: Mask R-CNN T, Cascade Mask R-CNN T and
UperNet T exported by tools/deploy.py and verified at their test resolution.

    python benchmarks/deploy.py [--work DIR] [--iters 40] [--models TEXT]

No released weights are downloaded: each model of the released config (its
heads, widths and class count unchanged) is first trained ``--iters``
iterations on the generated shapes (small images), so that it detects and
segments them, then exported and verified on a mosaic of generated scenes
at the config's test resolution (1333x800 for COCO, 2048x512 for ADE20K,
where the objects are as large as in training). Prints one markdown row
per model: the verification and each runtime's CPU latency. Run again in
the same ``--work``, it re-uses the models it trained there (same
``--iters``) and replaces its ONNX folders.
"""
import argparse
import copy
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools._tool import first_sentence  # noqa: E402

MODELS = (
    ('Mask R-CNN T', 'mask_rcnn_convnext_t_coco', []),
    ('Cascade Mask R-CNN T', 'cascade_convnext_t_coco', []),
    ('UperNet T (slide)', 'upernet_convnext_t_ade20k', []),
    ('UperNet T (whole, dynamic)', 'upernet_convnext_t_ade20k',
     ['--dynamic', '--cfg-options', 'model.test_cfg.mode=whole']),
)


def train_config(leaf, data, work, iters):
    """The released config, trained on generated data at small size; its
    test pipeline (the test resolution) left as released."""
    from mmengine.config import Config

    from convnext_mm.synthetic.shapes import SHAPE_CLASSES
    from convnext_mm.synthetic.small_configs import (CONFIG_DIR,
                                                     short_schedule,
                                                     shrink_sizes)
    cfg = Config.fromfile(str(CONFIG_DIR / f'{leaf}.py'))
    cfg.model.backbone.init_cfg = None
    loader = cfg.train_dataloader
    loader.update(num_workers=0, persistent_workers=False, batch_size=2)
    if 'coco' in leaf:
        train = data['train']
        loader.dataset.update(data_root=train['data_root'],
                              ann_file=train['ann_file'],
                              data_prefix=dict(img=train['img_dir']),
                              metainfo=dict(classes=SHAPE_CLASSES),
                              pipeline=shrink_sizes(
                                  copy.deepcopy(cfg.train_pipeline), 0.2))
    else:
        loader.dataset.update(
            type='BaseSegDataset', img_suffix='.jpg', seg_map_suffix='.png',
            reduce_zero_label=True, data_root=data['data_root'],
            metainfo=data['metainfo'],
            pipeline=shrink_sizes(copy.deepcopy(loader.dataset.pipeline),
                                  1 / 8))
        crop = tuple(v // 8 for v in cfg.crop_size)
        cfg.model.data_preprocessor.size = crop
    short_schedule(cfg, work, iters, iters, lr=1e-3 if 'coco' in leaf else 3e-3,
                   log_interval=10)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader.dataset.metainfo = loader.dataset.metainfo
    path = Path(work).parent / f'{leaf}.py'
    cfg.dump(str(path))
    return path


def mosaic(images, rows, cols, size):
    """Tile ``rows x cols`` of the generated images, each resized to
    ``size`` (h, w): objects as large as in training, at test
    resolution."""
    h, w = size
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k in range(rows * cols):
        img = cv2.resize(cv2.imread(str(images[k % len(images)])), (w, h))
        out[k // cols * h:(k // cols + 1) * h,
            k % cols * w:(k % cols + 1) * w] = img
    return out


def run(cmd):
    res = subprocess.run([sys.executable] + [str(c) for c in cmd],
                         cwd=ROOT, capture_output=True, text=True)
    if res.returncode not in (0, 1):
        sys.exit(res.stdout[-3000:] + res.stderr[-3000:])
    return res.stdout + res.stderr


def main():
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument('--work', default='work_dirs/benchmark_deploy')
    parser.add_argument('--iters', type=int, default=40)
    parser.add_argument('--models', default='',
                        help='only the models whose name holds this text')
    args = parser.parse_args()
    import mmdeploy
    import onnxruntime as ort
    import torch

    from convnext_mm.synthetic import make_ade20k, make_coco_instances
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    coco = dict(train=make_coco_instances(work / 'coco', 16, split='train'),
                val=make_coco_instances(work / 'coco', 8, seed=1,
                                        split='val'))
    ade = make_ade20k(work / 'ade')
    val = sorted((work / 'coco' / 'val').glob('*.jpg'))
    # 6 x 8 scenes of 128 x 160 (the training size): 768 x 1280 -> 800 x 1333
    cv2.imwrite(str(work / 'coco_mosaic.jpg'), mosaic(val, 6, 8, (128, 160)))
    ade_val = sorted((work / 'ade' / 'images' / 'validation').glob('*.jpg'))
    # 8 x 11 scenes of 64 x 64: 512 x 704, tested at 512 x 704
    cv2.imwrite(str(work / 'ade_mosaic.jpg'), mosaic(ade_val, 8, 11,
                                                     (64, 64)))
    caps = torch.cpu.get_capabilities() if hasattr(
        torch.cpu, 'get_capabilities') else {}
    flags = sorted(k for k, v in caps.items() if v is True)
    print(f'- CPU: {caps.get("cpu_name") or platform.machine()}, '
          f'{torch.get_num_threads()} threads; '
          f'{", ".join(f for f in flags if f.startswith(("avx", "amx")))}')
    print(f'- torch {torch.__version__}, onnxruntime {ort.__version__}, '
          f'mmdeploy {mmdeploy.__version__}; trained {args.iters} '
          'iterations on generated shapes')
    print('| model | input | detections / pixels | verification | '
          'PyTorch ms | ONNX Runtime ms |')
    print('|---|---|---|---|---|---|')
    trained = {}
    for name, leaf, options in MODELS:
        if args.models not in name:
            continue
        checkpoint = work / leaf / f'iter_{args.iters}.pth'
        if leaf not in trained:
            data = coco if 'coco' in leaf else ade
            cfg = train_config(leaf, data, work / leaf, args.iters)
            if not checkpoint.is_file():  # else trained by an earlier run
                shutil.rmtree(work / leaf, ignore_errors=True)
                run(['tools/train.py', cfg])
            trained[leaf] = cfg
        cfg = trained[leaf]
        out = work / f'onnx_{name.split()[0].lower()}_{len(options)}'
        shutil.rmtree(out, ignore_errors=True)  # an earlier run's export
        image = work / ('coco_mosaic.jpg' if 'coco' in leaf else
                        'ade_mosaic.jpg')
        run(['tools/deploy.py', cfg, checkpoint,
             '--out', out, '--image', image] + options)
        report = json.loads((out / 'export.json').read_text())
        rows = {r['check']: r for r in report['verification']}
        if 'pixels' in rows:
            what = rows['pixels with the same label']['value'] + ' agree'
        else:
            what = rows['detections above 0.05 (PyTorch / ONNX)']['value']
            what += (f', box IoU >= {rows["lowest box IoU"]["value"]}, '
                     f'score diff <= '
                     f'{rows["largest score difference"]["value"]}')
            if 'lowest mask IoU' in rows:
                what += (f', mask IoU >= {rows["lowest mask IoU"]["value"]}'
                         ', mask probability diff <= ' + rows[
                             'largest mask probability difference']['value'])
        shape = report['input']['shape']
        print(f'| {name} | {shape[2]}x{shape[3]} | {what} | '
              f'{"passed" if report["passed"] else "FAILED"} | '
              f'{report["latency_ms"]["pytorch"]:.0f} | '
              f'{report["latency_ms"]["onnxruntime"]:.0f} |', flush=True)


if __name__ == '__main__':
    main()
