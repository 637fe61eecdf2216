"""Params, FLOPs and FPS of a config's model, the way the paper measured."""
import os.path as osp
import time
from typing import Optional, Tuple

import torch

from .. import launch
from .complexity import count_complexity
from .dummy_forward import FORWARDS
from .paper import IMAGENET, paper_entry


def default_shape(cfg, task) -> Tuple[int, int]:
    """The paper's input: 1280x800 for detectors, four crop heights by one
    crop width for segmentors, the test crop for classifiers."""
    if task == 'mmdet':
        return (1280, 800)
    if task == 'mmseg':
        crop = cfg.get('crop_size', (512, 512))
        return (4 * crop[0], crop[1])
    size = 224
    for step in cfg.test_dataloader.dataset.pipeline:
        for key in ('crop_size', 'scale'):
            value = step.get(key)
            if value is not None:
                size = value if isinstance(value, int) else value[0]
    return (size, size)


def build_model(cfg, task):
    """The config's model in eval mode, with no pretrained checkpoint named
    (nothing is downloaded; counting and timing need no trained weights)."""
    from mmengine.registry import init_default_scope
    init_default_scope(task)
    registry = __import__(f'{task}.registry', fromlist=['MODELS']).MODELS
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.pop('pretrained', None)
    return registry.build(cfg.model).eval()


def measure_config(config: str, shape: Optional[Tuple[int, int]] = None):
    """dict(name, shape, params (M), gflops, paper) for a config file."""
    cfg = launch.load_config(config)
    task = launch.task_of(cfg)
    shape = tuple(shape) if shape else default_shape(cfg, task)
    # counting needs shapes only: on the meta device no weights are
    # initialised and nothing is computed
    with torch.device('meta'):
        model = build_model(cfg, task)
        flops, params = count_complexity(model, FORWARDS[task](model, shape))
    name = osp.splitext(osp.basename(config))[0]
    if task == 'mmpretrain':
        paper = IMAGENET.get((cfg.model.backbone.get('arch'), shape[0]))
    else:
        paper = paper_entry(name)
    return dict(name=name, shape=shape, params=params / 1e6,
                gflops=flops / 1e9, paper=paper)


def measure_fps(config: str, checkpoint: Optional[str] = None,
                iters: int = 50, amp: bool = False,
                device: str = 'cuda') -> float:
    """Images per second, one image at a time through the config's test
    pipeline (a 640x480 image for detectors, as COCO's typical size, and a
    683x512 one for segmentors, as ADE20K's), warm-up excluded."""
    import numpy as np
    from mmcv.transforms import Compose
    from mmengine.dataset import pseudo_collate
    cfg = launch.load_config(config)
    task = launch.task_of(cfg)
    model = build_model(cfg, task).to(device)
    if checkpoint:
        from mmengine.runner import load_checkpoint
        load_checkpoint(model, checkpoint, map_location=device)
    h, w = (480, 640) if task == 'mmdet' else (512, 683)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)
    steps = [t for t in cfg.test_dataloader.dataset.pipeline
             if not t['type'].startswith('LoadAnnotations')]
    steps[0] = dict(type='LoadImageFromNDArray')
    pipeline = Compose(steps)
    data = pseudo_collate([pipeline(dict(img=image, img_id=0,
                                         img_path='none'))])
    sync = torch.cuda.synchronize if device.startswith('cuda') else (
        lambda: None)
    with torch.no_grad(), torch.autocast(device.split(':')[0],
                                         enabled=amp):
        for _ in range(min(5, iters)):
            model.test_step(data)
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            model.test_step(data)
        sync()
    return iters / (time.perf_counter() - start)
