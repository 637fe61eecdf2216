"""Build small versions of the released COCO configs for end-to-end tests."""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mmengine.config import Config

from convnext_mm.synthetic import SHAPE_CLASSES

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.2  # the released pipeline's sizes, shrunk for 128x160 images


def _shrink(node):
    """Scale every resize scale and crop size in a pipeline config."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ('scale', 'crop_size') and isinstance(
                    value, (tuple, list)):
                value = tuple(int(v * SCALE) for v in value)
            elif key == 'scales':
                value = [tuple(int(v * SCALE) for v in s) for s in value]
            out[key] = _shrink(value)
        return out
    if isinstance(node, list):
        return [_shrink(v) for v in node]
    return node


def small_config(leaf, data, work_dir, max_iters=10, ckpt_interval=5,
                 lr=2e-3, tta_single_view=False):
    """The released ``configs/<leaf>.py``, scaled to an atto backbone, the
    generated shapes data and a few iterations; returns the dumped path."""
    cfg = Config.fromfile(str(ROOT / 'configs' / f'{leaf}.py'))
    model = cfg.model
    model.backbone.update(arch='atto', drop_path_rate=0.1, init_cfg=None)
    model.neck.in_channels = [40, 80, 160, 320]
    heads = model.roi_head.bbox_head
    for head in heads if isinstance(heads, list) else [heads]:
        head.num_classes = len(SHAPE_CLASSES)
    model.roi_head.mask_head.num_classes = len(SHAPE_CLASSES)
    # 128x160 images: fewer RPN proposals keep the CPU run short
    model.test_cfg.rpn.nms_pre = model.test_cfg.rpn.max_per_img = 200
    # a few iterations leave foreground scores tiny: keep every box, so the
    # COCO metrics have detections to score
    model.test_cfg.rcnn.score_thr = 0.

    metainfo = dict(classes=SHAPE_CLASSES)
    train, val = data['train'], data['val']
    for split, loader, source, pipeline in (
            ('train', cfg.train_dataloader, train, cfg.train_pipeline),
            ('val', cfg.val_dataloader, val, cfg.test_pipeline),
            ('test', cfg.test_dataloader, val, cfg.test_pipeline)):
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.update(
            data_root=source['data_root'], ann_file=source['ann_file'],
            data_prefix=dict(img=source['img_dir']), metainfo=metainfo,
            pipeline=_shrink(copy.deepcopy(pipeline)))
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        evaluator.ann_file = val['data_root'] + val['ann_file']
    cfg.tta_pipeline = _shrink(copy.deepcopy(cfg.tta_pipeline))
    if tta_single_view:  # the plain test's scale, unflipped
        test_resize = [t for t in loader.dataset.pipeline
                       if t['type'] == 'Resize']
        views = cfg.tta_pipeline[1].transforms
        views[0] = test_resize
        views[1] = [dict(type='RandomFlip', prob=0.)]

    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                         val_interval=10**6)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
             end=3)
    ]
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                        interval=ckpt_interval,
                                        by_epoch=False)
    cfg.default_hooks.logger.interval = 1
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)
    cfg.work_dir = str(work_dir)
    path = Path(work_dir).parent / f'{Path(work_dir).name}_{leaf}.py'
    cfg.dump(str(path))
    return path


def run_tool(tool, *args, check=True, timeout=600):
    """Run ``tools/<tool>.py`` like a user does; return the output text."""
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2')
    res = subprocess.run([sys.executable, str(ROOT / 'tools' / tool)] +
                         [str(a) for a in args], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=timeout)
    out = res.stdout + res.stderr
    if check:
        assert res.returncode == 0, out[-4000:]
    return res.returncode, out


def train_losses(work_dir):
    """Per-iteration total losses from mmengine's scalars.json."""
    files = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    assert files, f'no scalars.json under {work_dir}'
    losses = []
    for line in files[-1].read_text().splitlines():
        record = json.loads(line)
        if 'loss' in record:
            losses.append((record['iter'], record['loss']))
    return losses


def metric(output, name):
    """A metric value from a test run's log, e.g. 'coco/segm_mAP'."""
    found = re.findall(rf'{re.escape(name)}: (-?[0-9.]+)', output)
    assert found, f'{name} not in output:\n{output[-3000:]}'
    return float(found[-1])
