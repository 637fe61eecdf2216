#!/usr/bin/env python
"""Parameters and FLOPs of configs, counted as the ConvNeXt paper counted.

    python tools/get_flops.py CONFIG [CONFIG ...] [--shape H W]

No dataset is needed. The input defaults to the paper's: 1280x800 for
detectors, 4 crop heights x crop width for segmentors (2048x512, 2560x640),
the test crop for classifiers. Where the paper reports the config's model,
its numbers are printed beside ours. FLOPs follow mmcv 1.x's counter (see
``convnext_mm/analysis/complexity.py``), on mmdet 2.x's dummy forward for
detectors (mask heads on the first 100 of 1000 proposals).
"""
import argparse
import os.path as osp
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings('ignore', category=UserWarning)

from mmengine.logging import MMLogger  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from convnext_mm import launch  # noqa: E402
from convnext_mm.analysis import count_complexity  # noqa: E402
from convnext_mm.analysis.dummy_forward import FORWARDS  # noqa: E402
from convnext_mm.analysis.paper import IMAGENET, paper_entry  # noqa: E402


def default_shape(cfg, task):
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
    init_default_scope(task)
    registry = __import__(f'{task}.registry', fromlist=['MODELS']).MODELS
    cfg.model.backbone.pop('init_cfg', None)  # counting needs no weights
    cfg.model.pop('pretrained', None)
    return registry.build(cfg.model).eval()


def paper_numbers(name, cfg, task, shape):
    if task == 'mmpretrain':
        return IMAGENET.get((cfg.model.backbone.get('arch'), shape[0]))
    return paper_entry(name)


def measure(config, shape=None):
    """(name, shape, params in M, GFLOPs, paper row or None)."""
    cfg = launch.load_config(config)
    task = launch.task_of(cfg)
    shape = tuple(shape) if shape else default_shape(cfg, task)
    model = build_model(cfg, task)
    flops, params = count_complexity(model, FORWARDS[task](model, shape))
    name = osp.splitext(osp.basename(config))[0]
    return (name, shape, params / 1e6, flops / 1e9,
            paper_numbers(name, cfg, task, shape))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', help='config files')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default: the paper\'s)')
    args = parser.parse_args(argv)
    MMLogger.get_instance('get_flops', log_level='WARNING')
    print('| config | input (HxW) | params (M) | paper | GFLOPs | paper | '
          'FLOPs vs paper |')
    print('|---|---|---|---|---|---|---|')
    for config in args.configs:
        try:
            name, shape, params, gflops, paper = measure(config, args.shape)
        except launch.ConfigError as err:
            sys.exit(f'error: {err}')
        if paper:
            deviation = f'{100 * (gflops / paper["flops"] - 1):+.2f}%'
            p_params, p_flops = f'{paper["params"]}', f'{paper["flops"]}'
        else:
            deviation = p_params = p_flops = '-'
        print(f'| {name} | {shape[0]}x{shape[1]} | {params:.1f} | '
              f'{p_params} | {gflops:.1f} | {p_flops} | {deviation} |',
              flush=True)


if __name__ == '__main__':
    main()
