#!/usr/bin/env python
"""Test a checkpoint of a detection, segmentation or classification config.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--work-dir DIR]
                         [--out FILE] [--cfg-options KEY=VALUE ...]

``--tta`` tests with the config's ``tta_pipeline`` and ``tta_model``:
multi-scale + flip, for semantic segmentation (mmseg's merge of softmax
scores), classification, and instance segmentation (convnext_mm's
``InstanceSegTTAModel``: mmdet 3.3 refuses masks in its own).
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
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--work-dir', help='where the test log goes')
    parser.add_argument('--out', help='dump raw predictions to this .pkl')
    parser.add_argument('--tta', action='store_true',
                        help='multi-scale + flip test')
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
        if args.tta:
            launch.use_tta(cfg)
    except launch.ConfigError as err:
        sys.exit(f'error: {err}')
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    try:
        launch.check_data(cfg, ['test'])
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    launch.adapt_to_device(cfg)
    runner = launch.build_runner(cfg)
    try:
        launch.check_checkpoint_fits(runner.model, args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    if args.out:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
