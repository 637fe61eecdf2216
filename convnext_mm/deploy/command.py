"""``tools/deploy.py``: export one of our COCO or ADE20K configs to ONNX,
verify it in ONNX Runtime against PyTorch, and report."""
import importlib.util
import json
import os
import os.path as osp
import platform
import shutil
import sys
import tempfile
from typing import List, Optional

import cv2
import numpy as np
import torch

from .. import launch
from ..errors import user_errors
from ..launch import lock
from ..synthetic.shapes import draw_scene
from . import verify
from .export import Exported, deploy_config, graph_ops, output_names
from .support import check_export_support

ONNX_FILE = 'end2end.onnx'
REPORT_FILE = 'export.json'
EXIT_BROKE_DOWN = 3
# the image exported and verified on when none is given: a 480x640 scene
# of the generated shapes, as large as a typical COCO or ADE20K photo
DEFAULT_IMAGE_SIZE = (480, 640)


def _check_out_dir(out: str) -> None:
    if osp.exists(out) and not osp.isdir(out):
        raise NotADirectoryError(f'--out {out} is a file; give a directory '
                                 'for the ONNX file and its report')
    if osp.isdir(out) and os.listdir(out):
        previous = sorted(f for f in os.listdir(out)
                          if f.endswith('.onnx') or f == REPORT_FILE)
        holds = (f'a previous export ({", ".join(previous)})' if previous
                 else f'other files ({", ".join(sorted(os.listdir(out))[:3])}'
                 ')')
        raise FileExistsError(
            f'--out {out} holds {holds}; give a new or empty directory (the '
            'export appears there whole), or move those files away first')


def _work_prefix(out: str) -> str:
    """The name start of the folders an export is written in, beside
    ``--out`` (``.NAME.export@host@pid@start@``: their owner)."""
    return f'.{osp.basename(osp.normpath(out))}.export@'


def remove_stale_work(out: str) -> None:
    """Remove the work folders of earlier exports to ``out`` whose process
    is gone (killed mid-export); a live one's, or another host's, stays."""
    parent = osp.dirname(osp.abspath(out))
    prefix = _work_prefix(out)
    for name in os.listdir(parent) if osp.isdir(parent) else ():
        if name.startswith(prefix) and \
                lock.is_alive(lock.owner_of(name)) is False:
            shutil.rmtree(osp.join(parent, name), ignore_errors=True)


def _publish(work: str, out: str) -> None:
    """Move the finished folder to ``out`` in one rename (an empty ``out``
    is replaced): a reader sees the whole export or none."""
    try:
        os.rename(work, out)
    except OSError:
        if not osp.isdir(out) or os.listdir(out):
            raise
        os.rmdir(out)  # where rename does not replace an empty folder
        os.rename(work, out)


def read_image(path: Optional[str]) -> np.ndarray:
    """The image to export and verify on (BGR), refused in one line when
    it cannot be read."""
    if path is None:
        return draw_scene(np.random.default_rng(0), DEFAULT_IMAGE_SIZE)[0]
    if not osp.isfile(path):
        raise FileNotFoundError(f'--image {path} does not exist')
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'--image {path} is not an image OpenCV can read '
                         '(give a JPEG, PNG, BMP or TIFF file)')
    return image


def check_request(args, cfg) -> None:
    """Everything that can be refused before the model is built."""
    if importlib.util.find_spec('mmdeploy') is None:
        raise ModuleNotFoundError(
            'tools/deploy.py needs mmdeploy 1.3.1, which is not installed: '
            'python3 tools/setup_env.py installs it on x86-64 Linux and '
            'Windows (it has no wheels for other machines)')
    check_export_support(cfg)
    slide = (cfg.model.get('test_cfg') or {}).get('mode') == 'slide'
    if args.dynamic and slide:
        raise launch.ConfigError(
            'the sliding-window test mode exports for one input size (its '
            'window grid is unrolled): drop --dynamic, or export whole-image '
            'inference with --cfg-options model.test_cfg.mode=whole')
    if args.shape and min(args.shape) < 32:
        raise ValueError(f'--shape {args.shape[0]} {args.shape[1]}: height '
                         'and width must be at least 32 pixels')
    if args.repeat < 1:
        raise ValueError(f'--repeat {args.repeat}: give 1 or more runs')
    _check_out_dir(args.out)


def _classes(cfg) -> List[str]:
    dataset = cfg.test_dataloader.dataset
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None:
        from mmengine.registry import DATASETS, init_default_scope
        init_default_scope(cfg.get('default_scope'))
        cls = DATASETS.get(dataset.type)
        classes = getattr(cls, 'METAINFO', {}).get('classes', ())
    return list(classes)


def resize_rule(cfg, shape: Optional[List[int]]) -> dict:
    """How a runtime must resize an image before the graph, as the export
    did: the test pipeline's ``Resize`` (scale, keep-ratio, interpolation,
    backend), or the exact ``--shape``."""
    if shape:
        return dict(scale=[shape[1], shape[0]], keep_ratio=False,
                    interpolation='bilinear', backend='cv2',
                    note='--shape H W: every image resized to exactly HxW')
    resize = next((t for t in cfg.test_pipeline
                   if str(t.get('type', '')).split('.')[-1] == 'Resize'),
                  None)
    if resize is None:
        return dict(scale=None, note='the test pipeline does not resize')
    scale = resize.get('scale')
    return dict(scale=list(scale) if isinstance(scale, (list, tuple)) else
                scale, keep_ratio=bool(resize.get('keep_ratio', False)),
                interpolation=resize.get('interpolation', 'bilinear'),
                backend=resize.get('backend', 'cv2'),
                note='scale is (width, height); with keep_ratio the image '
                'is scaled by one factor to fit inside it (as mmcv.imrescale)')


def _report(args, exported, opset, ops, rows, times, passed) -> dict:
    cfg = exported.model_cfg
    pre = cfg.model.data_preprocessor
    shape = list(exported.graph_input.shape)
    return dict(
        config=args.config, checkpoint=args.checkpoint,
        onnx=ONNX_FILE, opset=opset, ops=ops,
        input=dict(name='input', shape=shape, dynamic_hw=bool(args.dynamic),
                   resize=resize_rule(cfg, args.shape),
                   mean=list(pre.mean), std=list(pre.std),
                   bgr_to_rgb=bool(pre.get('bgr_to_rgb', False)),
                   padded_by_graph_to=None if exported.segmentation else
                   getattr(exported.model.data_preprocessor,
                           'pad_size_divisor', 1)),
        outputs=output_names(cfg), classes=_classes(cfg),
        verification=[r._asdict() for r in rows], passed=passed,
        latency_ms={k: 1e3 * v for k, v in times.items()},
        cpu=platform.processor() or platform.machine())


def run(args) -> int:
    """Export, verify, report; the exit code (0: verified, 1: not, 2: bad
    input, before any work; 3: the export or its verification broke down,
    and nothing was left in ``--out``). ``--out`` appears whole, in one
    rename; a killed export's work folder is removed by the next export."""
    with user_errors():
        cfg = launch.load_config(args.config, args.cfg_options)
        check_request(args, cfg)
        image = read_image(args.image)
        model = launch.check_model(cfg, training=False)
        launch.check_checkpoint(model, args.checkpoint, args.allow_partial)
        del model
    remove_stale_work(args.out)
    parent = osp.dirname(osp.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    # everything is written in a folder beside --out, which becomes --out
    # in one rename when the report is written
    work = tempfile.mkdtemp(dir=parent,
                            prefix=_work_prefix(args.out) + lock.tag() + '@')
    try:
        passed = _export_and_verify(args, cfg, image, work)
        _publish(work, args.out)
    except Exception as err:  # noqa: BLE001  whatever broke, said once
        detail = ' '.join(str(err).split())[:500]
        print(f'error: the export broke down ({type(err).__name__}: '
              f'{detail}); nothing was written to {args.out}',
              file=sys.stderr)
        return EXIT_BROKE_DOWN
    finally:  # gone after the rename; else what a breakdown left
        shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


def _export_and_verify(args, cfg, image, work: str) -> bool:
    deploy_cfg = deploy_config(cfg, args.dynamic, args.shape)
    exported = Exported(cfg, deploy_cfg, args.checkpoint, image)
    print(f'input: {tuple(exported.graph_input.shape)} (N, C, H, W; '
          f'{"dynamic" if args.dynamic else "fixed"} height and width)',
          flush=True)
    path = osp.join(work, ONNX_FILE)
    exported.export(path)
    opset, ops, custom = graph_ops(path)
    print(f'exported {ONNX_FILE}: ONNX opset {opset}, {len(ops)} op types'
          + (f', non-standard: {", ".join(custom)}' if custom else
             ', all standard ONNX'), flush=True)

    # the compared predictions are the timing's warm-up runs
    ours, torch_time = verify.timed(exported.torch_predictor(), args.repeat)
    graph, post = exported.onnx_stages(path)
    raw, graph_time = verify.timed(graph, args.repeat)
    theirs, post_time = verify.timed(lambda: post(raw), args.repeat)
    if exported.segmentation:
        rows = verify.compare_labels(ours.pred_sem_seg.data,
                                     theirs.pred_sem_seg.data)
    else:
        rows = verify.compare_detections(ours.pred_instances,
                                         theirs.pred_instances,
                                         exported.torch_candidates)
        if 'masks' in ours.pred_instances:
            rows.append(verify.compare_mask_probabilities(
                exported.torch_mask_probabilities(),
                exported.onnx_mask_probabilities(raw)))
    rows.append(verify.Row('standard ONNX ops only',
                           'yes' if not custom else ', '.join(custom),
                           'yes', not custom))
    times = dict(pytorch=torch_time, onnxruntime=graph_time + post_time,
                 onnxruntime_graph=graph_time, postprocess=post_time)
    passed = all(r.ok for r in rows)
    print(verify.table(rows))
    print(verify.latency_table(times, args.repeat, torch.get_num_threads()))
    report = _report(args, exported, opset, ops, rows, times, passed)
    with open(osp.join(work, REPORT_FILE), 'w') as f:
        json.dump(report, f, indent=1)
    print(f'wrote {osp.join(args.out, ONNX_FILE)} and {REPORT_FILE}')
    print('verification passed' if passed else
          'verification FAILED: ' + '; '.join(
              f'{r.check} {r.value} (limit {r.limit})'
              for r in rows if not r.ok))
    return passed
