#!/usr/bin/env python
"""Train a detection, segmentation or classification config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]
                          [--amp] [--cfg-options KEY=VALUE ...]

The config's ``default_scope`` (mmdet, mmseg or mmpretrain, set by the base
configs it inherits) picks the library. Dataset paths, ``--cfg-options`` keys,
the model and its LR-decay settings, and ``load_from`` or pretrained
checkpoints are checked before the run starts; bad input ends it with one
``error:`` line (exit code 2). Without CUDA, mixed precision and SyncBN are
switched off (and logged). One run at a time per work dir: a second is
refused while the first runs (``WORK_DIR/convnext_mm.lock``).
"""

import _tool  # noqa: E402  (first: checkout on sys.path, warnings)

from convnext_mm import launch  # noqa: E402
from convnext_mm.errors import checkpoint_errors  # noqa: E402


def parse_args(argv=None):
    parser = _tool.parser(
        __doc__, 'python tools/train.py configs/mask_rcnn_convnext_t_coco.py',
        'python tools/train.py configs/upernet_convnext_t_ade20k.py --resume '
        '--cfg-options train_dataloader.dataset.data_root=/data/ade/',
        'bash tools/dist_train.sh configs/cascade_convnext_b_coco.py 8')
    launch.add_run_args(parser)
    launch.add_lock_arg(parser)
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        help='resume from CKPT, or with no value from the latest checkpoint '
        'in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision even if the config has none')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def adjust(cfg):
        if args.amp:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        if args.resume == 'auto':
            cfg.resume, cfg.load_from = True, None
        elif args.resume is not None:
            cfg.resume, cfg.load_from = True, args.resume

    runner = launch.prepare_runner(args, launch.STAGE_SPLITS['train'],
                                   adjust, training=True)
    with launch.lock.holding(runner.work_dir), checkpoint_errors():
        runner.train()


if __name__ == '__main__':
    main()
