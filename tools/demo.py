#!/usr/bin/env python
"""The main job: ConvNeXt detection and segmentation, end to end, on a CPU.

    python tools/demo.py [--work-dir work_dirs/demo] [--det-iters N]
                         [--seg-iters N]

It generates small COCO and ADE20K-format datasets of coloured shapes,
trains a ConvNeXt-atto Mask R-CNN and a ConvNeXt-atto UperNet on them with
the released recipes scaled down (configs/mask_rcnn_convnext_t_coco.py and
configs/upernet_convnext_t_ade20k.py), evaluates each before and after
training (COCO box/mask AP, mIoU), single-scale and multi-scale + flip, and
writes pictures of predictions, the loss curves and a summary into the work
dir. About 4 minutes on 2 cores.
"""
import json
import sys
import time
import warnings
from pathlib import Path

import _tool  # noqa: E402  (checkout on sys.path, warnings)
warnings.filterwarnings('ignore', category=UserWarning)

import torch  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.utils import track_iter_progress  # noqa: E402

from convnext_mm import launch  # noqa: E402
from convnext_mm.synthetic import make_ade20k, make_coco_instances  # noqa
from convnext_mm.synthetic.small_configs import (  # noqa: E402
    small_det_config, small_seg_config)


def train_and_evaluate(cfg, tta_cfg):
    """Metrics of the freshly initialised model, of the trained one, and of
    the trained one under TTA; the runner; training seconds."""
    launch.adapt_to_device(cfg)
    runner = launch.build_runner(cfg)
    runner.model.init_weights()
    before = runner.test()
    start = time.time()
    runner.train()
    seconds = time.time() - start
    after = runner.test()
    launch.use_tta(tta_cfg)
    tta_cfg.load_from = str(
        Path(cfg.work_dir) / f'iter_{cfg.train_cfg.max_iters}.pth')
    tta_cfg.work_dir = str(Path(cfg.work_dir) / 'tta')
    launch.adapt_to_device(tta_cfg)
    tta = launch.build_runner(tta_cfg).test()
    return before, after, tta, runner, seconds


def draw(runner, visualizer, out_dir, prefix, count=4):
    """Predictions next to ground truth for the first test images."""
    import mmcv
    out_dir.mkdir(parents=True, exist_ok=True)
    visualizer.dataset_meta = runner.test_dataloader.dataset.metainfo
    model = runner.model.eval()
    batches = iter(runner.test_dataloader)
    for index in track_iter_progress(range(count)):
        with torch.no_grad():
            sample = model.test_step(next(batches))[0]
        image = mmcv.imread(sample.img_path, channel_order='rgb')
        visualizer.add_datasample(
            f'{prefix}{index}', image, sample, draw_gt=True, show=False,
            out_file=str(out_dir / f'{prefix}{index}.png'),
            **({'pred_score_thr': 0.3} if prefix == 'det_' else {}))


def losses(runner):
    path = Path(runner.log_dir) / 'vis_data' / 'scalars.json'
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r['iter'], r['loss']) for r in records if 'loss' in r]


def plot_losses(curves, out_file):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5))
    for ax, (title, points) in zip(axes, curves.items()):
        ax.plot([i for i, _ in points], [v for _, v in points])
        ax.set_title(title)
        ax.set_xlabel('iteration')
        ax.set_ylabel('total loss')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)


def summary(det, seg, timings):
    d_before, d_after, d_tta = det
    s_before, s_after, s_tta = seg
    rows = [
        ('Mask R-CNN box AP', 'coco/bbox_mAP', d_before, d_after, d_tta,
         100.),
        ('Mask R-CNN mask AP', 'coco/segm_mAP', d_before, d_after, d_tta,
         100.),
        ('UperNet mIoU', 'mIoU', s_before, s_after, s_tta, 1.),
    ]
    lines = [
        '| metric | before training | after training | after, '
        'multi-scale + flip |', '|---|---|---|---|'
    ]
    for name, key, before, after, tta, scale in rows:
        # mmdet reports no metrics when a model keeps no box at all: AP 0
        cells = [f'{m.get(key, 0.) * scale:.1f}' for m in (before, after, tta)]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append(f'Training time: Mask R-CNN {timings[0]:.0f} s, UperNet '
                 f'{timings[1]:.0f} s; the whole demo {timings[2]:.0f} s, on '
                 f'{torch.get_num_threads()} CPU threads.')
    return '\n'.join(lines)


def main(argv=None):
    parser = _tool.parser(__doc__)
    parser.add_argument('--work-dir',
                        help='an empty or new folder (default: '
                        'work_dirs/demo/<date>_<time>)')
    parser.add_argument('--det-iters', type=int, default=400)
    parser.add_argument('--seg-iters', type=int, default=800)
    args = parser.parse_args(argv)
    start = time.time()
    work = Path(args.work_dir or Path('work_dirs', 'demo',
                                      time.strftime('%Y%m%d_%H%M%S')))
    work = work.resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f'error: {work} is not empty; the demo writes a fresh run '
                 'there. Pick another --work-dir or remove it.')

    print('[demo] generating the datasets', flush=True)
    coco = dict(
        train=make_coco_instances(work / 'data' / 'coco', num_images=48),
        val=make_coco_instances(work / 'data' / 'coco', num_images=12,
                                seed=1, split='val'))
    ade = make_ade20k(work / 'data' / 'ade20k', num_train=36, num_val=12)

    print('[demo] Mask R-CNN (ConvNeXt-atto) on generated COCO shapes',
          flush=True)
    init_default_scope('mmdet')

    def det_cfg():
        return small_det_config(
            'mask_rcnn_convnext_t_coco', coco, work / 'mask_rcnn',
            max_iters=args.det_iters, ckpt_interval=args.det_iters,
            lr=4e-3, score_thr=0.05, log_interval=5)

    *det, det_runner, det_seconds = train_and_evaluate(det_cfg(), det_cfg())

    print('[demo] UperNet (ConvNeXt-atto) on generated ADE20K-style maps',
          flush=True)
    init_default_scope('mmseg')

    def seg_cfg():
        return small_seg_config(
            'upernet_convnext_t_ade20k', ade, work / 'upernet',
            max_iters=args.seg_iters, ckpt_interval=args.seg_iters,
            log_interval=5)

    *seg, seg_runner, seg_seconds = train_and_evaluate(seg_cfg(), seg_cfg())

    print('[demo] drawing predictions and loss curves', flush=True)
    from mmdet.visualization import DetLocalVisualizer
    from mmseg.visualization import SegLocalVisualizer
    init_default_scope('mmdet')
    draw(det_runner, DetLocalVisualizer(name='demo_det'), work / 'vis',
         'det_')
    init_default_scope('mmseg')
    draw(seg_runner, SegLocalVisualizer(name='demo_seg', alpha=0.6),
         work / 'vis', 'seg_')
    plot_losses(
        {
            'Mask R-CNN': losses(det_runner),
            'UperNet': losses(seg_runner)
        }, work / 'loss_curves.png')

    text = summary(det, seg, (det_seconds, seg_seconds, time.time() - start))
    (work / 'summary.md').write_text(text + '\n')
    print('\n' + text)
    print(f'\n[demo] pictures in {work / "vis"}, loss curves in '
          f'{work / "loss_curves.png"}, summary in {work / "summary.md"}')


if __name__ == '__main__':
    main()
