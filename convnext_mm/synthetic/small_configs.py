"""The released configs scaled down to the generated datasets: an atto
backbone, the released pipelines with every size shrunk, a few iterations.
Used by the demo and the end-to-end tests."""
import copy
from pathlib import Path

from mmengine.config import Config, ConfigDict

from .shapes import SHAPE_CLASSES

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / 'configs'
ATTO_CHANNELS = [40, 80, 160, 320]


def shrink_sizes(node, factor):
    """Scale every resize scale and crop size in a pipeline config."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ('scale', 'crop_size') and isinstance(
                    value, (tuple, list)):
                value = tuple(int(v * factor) for v in value)
            elif key in ('scale', 'crop_size') and isinstance(value, int):
                value = int(value * factor)
            elif key == 'scales':
                value = [tuple(int(v * factor) for v in s) for s in value]
            out[key] = shrink_sizes(value, factor)
        return out
    if isinstance(node, list):
        return [shrink_sizes(v, factor) for v in node]
    return node


def short_schedule(cfg, work_dir, max_iters, ckpt_interval, lr,
                   log_interval=1):
    """A few iterations with checkpoints, a short warm-up and per-iteration
    logs, in place of a config's full schedule."""
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                         val_interval=10**6)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
             end=min(20, max(max_iters // 10, 3)))
    ]
    # as mmdet's and mmseg's iteration-based configs: the epoch-based
    # sampler makes mmengine's loop sleep 2 s at every pass over the data
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.default_hooks.checkpoint.update(interval=ckpt_interval,
                                        by_epoch=False)
    cfg.default_hooks.logger.interval = log_interval
    cfg.log_processor = dict(by_epoch=False)
    # the same numbers on a re-run on the same machine (CPU kernels differ
    # between machines, so other machines give other, close numbers)
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.work_dir = str(work_dir)


def small_det_config(leaf, data, work_dir, max_iters=10, ckpt_interval=5,
                     lr=2e-3, score_thr=0., tta_single_view=False,
                     log_interval=1, width=128) -> Config:
    """``configs/<leaf>.py`` (a COCO config) on ``make_coco_instances`` data
    (``data['train']``, ``data['val']``), scaled to 128x160 images, with
    FPN and heads ``width`` channels wide (256 in the released configs)."""
    scale = 0.2
    cfg = Config.fromfile(str(CONFIG_DIR / f'{leaf}.py'))
    model = cfg.model
    model.backbone.update(arch='atto', drop_path_rate=0.1, init_cfg=None)
    model.neck.update(in_channels=ATTO_CHANNELS, out_channels=width)
    # slim heads, as the segmentation configs get: half the FPN width halves
    # the cost of RoIAlign and of the heads, which dominate at this size
    model.rpn_head.update(in_channels=width, feat_channels=width)
    roi = model.roi_head
    roi.bbox_roi_extractor.out_channels = width
    roi.mask_roi_extractor.out_channels = width
    heads = roi.bbox_head
    for head in heads if isinstance(heads, list) else [heads]:
        head.update(num_classes=len(SHAPE_CLASSES), in_channels=width,
                    fc_out_channels=4 * width)
        if 'conv_out_channels' in head:  # Cascade's 4-conv box heads
            head.conv_out_channels = width
    roi.mask_head.update(num_classes=len(SHAPE_CLASSES), in_channels=width,
                         conv_out_channels=width)
    # 1-3 objects per small image: fewer proposals and RoI samples keep the
    # CPU run short
    model.test_cfg.rpn.nms_pre = model.test_cfg.rpn.max_per_img = 200
    model.train_cfg.rpn_proposal.nms_pre = 200
    model.train_cfg.rpn_proposal.max_per_img = 200
    rcnn = model.train_cfg.rcnn
    for stage in rcnn if isinstance(rcnn, list) else [rcnn]:
        stage.sampler.num = 128
    model.test_cfg.rcnn.score_thr = score_thr

    metainfo = dict(classes=SHAPE_CLASSES)
    train, val = data['train'], data['val']
    for loader, source, pipeline in (
            (cfg.train_dataloader, train, cfg.train_pipeline),
            (cfg.val_dataloader, val, cfg.test_pipeline),
            (cfg.test_dataloader, val, cfg.test_pipeline)):
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.update(
            data_root=source['data_root'], ann_file=source['ann_file'],
            data_prefix=dict(img=source['img_dir']), metainfo=metainfo,
            pipeline=shrink_sizes(copy.deepcopy(pipeline), scale))
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        evaluator.ann_file = val['data_root'] + val['ann_file']
    cfg.tta_pipeline = shrink_sizes(copy.deepcopy(cfg.tta_pipeline), scale)
    if tta_single_view:  # the plain test's scale, unflipped
        views = cfg.tta_pipeline[1].transforms
        views[0] = [
            t for t in cfg.test_dataloader.dataset.pipeline
            if t['type'] == 'Resize'
        ]
        views[1] = [dict(type='RandomFlip', prob=0.)]
    short_schedule(cfg, work_dir, max_iters, ckpt_interval, lr, log_interval)
    return cfg


def small_seg_config(leaf, data, work_dir, max_iters=20, ckpt_interval=10,
                     lr=6e-3, log_interval=1) -> Config:
    """``configs/<leaf>.py`` (an ADE20K config) on ``make_ade20k`` data,
    with slim heads and 64x64 crops."""
    scale = 1 / 8
    cfg = Config.fromfile(str(CONFIG_DIR / f'{leaf}.py'))
    model = cfg.model
    classes = len(data['metainfo']['classes'])
    model.backbone.update(arch='atto', drop_path_rate=0.1, init_cfg=None)
    model.decode_head.update(in_channels=ATTO_CHANNELS, channels=64,
                             num_classes=classes)
    model.auxiliary_head.update(in_channels=ATTO_CHANNELS[2], channels=32,
                                num_classes=classes)
    crop = tuple(int(v * scale) for v in cfg.crop_size)
    model.data_preprocessor.size = crop
    model.test_cfg.update(crop_size=crop,
                          stride=tuple(int(v * scale)
                                       for v in model.test_cfg.stride))
    for loader in (cfg.train_dataloader, cfg.val_dataloader,
                   cfg.test_dataloader):
        loader.update(num_workers=0, persistent_workers=False)
        # ADE20KDataset only admits its own 150 class names; BaseSegDataset
        # reads the same layout with the generated classes
        loader.dataset.update(
            type='BaseSegDataset', img_suffix='.jpg', seg_map_suffix='.png',
            reduce_zero_label=True, data_root=data['data_root'],
            metainfo=data['metainfo'],
            pipeline=shrink_sizes(copy.deepcopy(loader.dataset.pipeline),
                                  scale))
    cfg.tta_pipeline = shrink_sizes(copy.deepcopy(cfg.tta_pipeline), scale)
    short_schedule(cfg, work_dir, max_iters, ckpt_interval, lr, log_interval)
    return cfg


def small_cls_config(leaf, data, work_dir, max_iters=10, ckpt_interval=10,
                     lr=1e-3, log_interval=1) -> Config:
    """``configs/<leaf>.py`` (an ImageNet config) on ``make_image_folder``
    data, at 64x64."""
    scale = 64 / 224
    cfg = Config.fromfile(str(CONFIG_DIR / f'{leaf}.py'))
    classes = len(data['classes'])
    cfg.model.backbone.update(arch='atto', drop_path_rate=0.1)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.head.update(in_channels=ATTO_CHANNELS[-1], num_classes=classes)
    cfg.model.data_preprocessor = dict(cfg.data_preprocessor,
                                       num_classes=classes)
    for split, loader in (('train', cfg.train_dataloader),
                          ('val', cfg.val_dataloader),
                          ('val', cfg.test_dataloader)):
        pipeline = shrink_sizes(copy.deepcopy(loader.dataset.pipeline),
                                scale)
        loader.update(batch_size=4, num_workers=0, persistent_workers=False)
        loader.dataset = ConfigDict(
            type='CustomDataset', data_root=data['data_root'],
            data_prefix=split, pipeline=pipeline)
    cfg.val_evaluator = cfg.test_evaluator = dict(type='Accuracy',
                                                  topk=(1, ))
    short_schedule(cfg, work_dir, max_iters, ckpt_interval, lr, log_interval)
    return cfg


def dump_config(cfg: Config, work_dir, name: str) -> Path:
    """Write ``cfg`` beside ``work_dir`` for the tools to read."""
    path = Path(work_dir).parent / f'{Path(work_dir).name}_{name}.py'
    cfg.dump(str(path))
    return path
