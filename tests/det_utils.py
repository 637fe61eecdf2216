"""Build small versions of the released COCO configs for end-to-end tests."""
import copy
from pathlib import Path

from mmengine.config import Config

from convnext_mm.synthetic import SHAPE_CLASSES
from tool_utils import ROOT, short_schedule, shrink_sizes

SCALE = 0.2  # the released pipeline's sizes, shrunk for 128x160 images


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
    # 128x160 images with 1-3 objects: fewer proposals and RoI samples keep
    # the CPU run short
    model.test_cfg.rpn.nms_pre = model.test_cfg.rpn.max_per_img = 200
    model.train_cfg.rpn_proposal.nms_pre = 200
    model.train_cfg.rpn_proposal.max_per_img = 200
    rcnn = model.train_cfg.rcnn
    for stage in rcnn if isinstance(rcnn, list) else [rcnn]:
        stage.sampler.num = 128
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
            pipeline=shrink_sizes(copy.deepcopy(pipeline), SCALE))
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        evaluator.ann_file = val['data_root'] + val['ann_file']
    cfg.tta_pipeline = shrink_sizes(copy.deepcopy(cfg.tta_pipeline), SCALE)
    if tta_single_view:  # the plain test's scale, unflipped
        test_resize = [t for t in loader.dataset.pipeline
                       if t['type'] == 'Resize']
        views = cfg.tta_pipeline[1].transforms
        views[0] = test_resize
        views[1] = [dict(type='RandomFlip', prob=0.)]

    short_schedule(cfg, work_dir, max_iters, ckpt_interval, lr)
    path = Path(work_dir).parent / f'{Path(work_dir).name}_{leaf}.py'
    cfg.dump(str(path))
    return path
