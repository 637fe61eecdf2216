#!/usr/bin/env python
"""Test a checkpoint of a detection, segmentation or classification config.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--work-dir DIR]
                         [--out FILE] [--cfg-options KEY=VALUE ...]

``--tta`` tests with the config's ``tta_pipeline`` and ``tta_model``:
multi-scale + flip, for semantic segmentation (mmseg's merge of softmax
scores), classification, and instance segmentation (convnext_mm's
``InstanceSegTTAModel``: mmdet 3.3 refuses masks in its own).
"""

import _tool  # noqa: E402  (first: checkout on sys.path, warnings)

from convnext_mm import launch  # noqa: E402
from convnext_mm.errors import checkpoint_errors  # noqa: E402


def parse_args(argv=None):
    parser = _tool.parser(
        __doc__, 'python tools/test.py configs/mask_rcnn_convnext_t_coco.py '
        'work_dirs/mask_rcnn_convnext_t_coco/epoch_36.pth',
        'python tools/test.py configs/upernet_convnext_t_ade20k.py '
        'work_dirs/upernet_convnext_t_ade20k/iter_160000.pth --tta')
    launch.add_run_args(parser)
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--out', help='dump raw predictions to this .pkl')
    parser.add_argument('--tta', action='store_true',
                        help='multi-scale + flip test')
    parser.add_argument('--allow-partial', action='store_true',
                        help='test even if the checkpoint leaves parts of '
                        'the model (neck, heads) without weights')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def adjust(cfg):
        if args.tta:
            launch.use_tta(cfg)
        cfg.load_from = args.checkpoint

    runner = launch.prepare_runner(args, lambda cfg: ['test'], adjust)
    if args.out:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    with checkpoint_errors():
        runner.test()


if __name__ == '__main__':
    main()
