#!/usr/bin/env python
"""Export a COCO or ADE20K config's whole model to ONNX and verify it.

    python tools/deploy.py CONFIG CHECKPOINT --out DIR [--shape H W]
                           [--dynamic] [--image IMG] [--repeat N]
                           [--cfg-options KEY=VALUE ...]

Writes ``DIR/end2end.onnx`` (standard ONNX ops, opset 17) and
``DIR/export.json`` (input, outputs, label map, the verification), runs the
graph in ONNX Runtime and the model in PyTorch on the same image, prints a
table of their differences and the CPU latencies (ONNX Runtime's graph
apart from the post-processing), and exits with 1 when the verification
fails, 2 on bad input (before any work: a soft-NMS test, say, is refused)
and 3 when the export or its verification breaks down; the two files
appear in DIR only together, when the report is complete.
"""
import sys

import _tool  # noqa: E402  (first: checkout on sys.path, warnings)

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = _tool.parser(
        __doc__, 'python tools/deploy.py configs/mask_rcnn_convnext_t_coco.py '
        'epoch_36.pth --out onnx/mask_rcnn_t --image demo.jpg',
        'python tools/deploy.py configs/upernet_convnext_t_ade20k.py '
        'iter_160000.pth --out onnx/upernet_t --dynamic --cfg-options '
        'model.test_cfg.mode=whole')
    parser.add_argument('config', help='a COCO (Mask R-CNN, Cascade Mask '
                        'R-CNN) or ADE20K (UperNet) config')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True,
                        help='directory for end2end.onnx and export.json '
                        '(new, or without a previous export)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='resize the image to exactly H x W for the '
                        'export (default: the config\'s test resize of '
                        'the image)')
    parser.add_argument('--dynamic', action='store_true',
                        help='any input height and width (not with the '
                        'sliding-window test mode)')
    parser.add_argument('--image', help='image to export and verify on '
                        '(default: a generated 480x640 scene)')
    parser.add_argument('--allow-partial', action='store_true',
                        help='export even if the checkpoint leaves parts '
                        'of the model (neck, heads) without weights')
    parser.add_argument('--repeat', type=int, default=3,
                        help='timed runs for the latency (median)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, KEY=VALUE')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from convnext_mm.deploy.command import run
    sys.exit(run(args))


if __name__ == '__main__':
    main()
