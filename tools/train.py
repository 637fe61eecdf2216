#!/usr/bin/env python
"""Train a detection, segmentation or classification config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]
                          [--amp] [--cfg-options KEY=VALUE ...]

The config's ``default_scope`` (mmdet, mmseg or mmpretrain, set by the base
configs it inherits) picks the library. Dataset paths, ``--cfg-options`` keys
and ``load_from`` checkpoints are checked before the run starts. Without
CUDA, mixed precision and SyncBN are switched off (and logged).
"""
import argparse
import os
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmengine.config import DictAction  # noqa: E402

from convnext_mm import launch  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir',
                        help='where logs and checkpoints go (default: '
                        'work_dirs/<config name>)')
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        help='resume from CKPT, or with no value from the latest checkpoint '
        'in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision even if the config has none')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, KEY=VALUE')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = launch.load_config(args.config, args.cfg_options)
    except launch.ConfigError as err:
        sys.exit(f'error: {err}')
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    splits = ['train'] + (['val'] if cfg.get('val_cfg') else [])
    try:
        launch.check_data(cfg, splits)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    launch.adapt_to_device(cfg)
    runner = launch.build_runner(cfg)
    if cfg.get('load_from'):
        try:
            launch.check_checkpoint_fits(runner.model, cfg.load_from)
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f'error: {err}')
    runner.train()


if __name__ == '__main__':
    main()
