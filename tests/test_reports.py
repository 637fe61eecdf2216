"""tools/reproduce_tables.py and the demo (the README's main job)."""
import json
import re

import pytest

from convnext_mm.analysis.measure import measure_fps
from tool_utils import ROOT, run_tool


def fake_test_run(work, config_name, metrics, tta=False):
    """A work dir as tools/test.py leaves it: the config beside a
    timestamped folder with the metrics json and the dumped config."""
    run = work / '20260101_000000'
    (run / 'vis_data').mkdir(parents=True)
    (work / f'{config_name}.py').write_text('# dumped config\n')
    (run / 'vis_data' / 'config.py').write_text(
        "model = dict(type='SegTTAModel')\n" if tta else 'model = {}\n')
    (run / '20260101_000000.json').write_text(json.dumps(metrics) + '\n')


def test_tables_with_results_from_logs(tmp_path):
    det = tmp_path / 'det'
    fake_test_run(det, 'mask_rcnn_convnext_t_coco',
                  {'coco/bbox_mAP': 0.461, 'coco/segm_mAP': 0.416})
    seg_ss, seg_ms = tmp_path / 'seg_ss', tmp_path / 'seg_ms'
    fake_test_run(seg_ss, 'anything', {'mIoU': 45.9})
    fake_test_run(seg_ms, 'anything', {'mIoU': 46.8}, tta=True)
    out_file = tmp_path / 'report.md'
    _, out = run_tool(
        'reproduce_tables.py', '--configs', 'mask_rcnn_convnext_t_coco',
        'upernet_convnext_t_ade20k', '--logs', det,
        f'upernet_convnext_t_ade20k={seg_ss}',
        f'upernet_convnext_t_ade20k={seg_ms}', '--out', out_file)
    text = out_file.read_text()
    row3 = re.search(r'\| mask_rcnn_convnext_t_coco \| 48 / 48.1 \| '
                     r'262 / 262.1 \| 25.6 / - \| 46.2 / 46.1 \| '
                     r'41.7 / 41.6 \|', text)
    row4 = re.search(r'\| upernet_convnext_t_ade20k \| 60 / 60.2 \| '
                     r'939 / 938.7 \| 46.0 / 45.9 \| 46.7 / 46.8 \|', text)
    assert row3 and row4, text
    assert 'FPS: not measured (run with --fps on a CUDA GPU)' in text
    assert text.strip() in out


def test_fps_needs_cuda_and_unknown_log_dirs_are_named(tmp_path):
    code, out = run_tool('reproduce_tables.py', '--fps', check=False)
    assert code != 0 and '--fps needs a CUDA GPU' in out
    code, out = run_tool('reproduce_tables.py', '--logs', tmp_path,
                         check=False)
    assert code != 0 and 'pass NAME=DIR' in out


def test_fps_measurement_runs_the_test_pipeline():
    # the code path the --fps column takes, on the CPU for one image
    fps = measure_fps(str(ROOT / 'configs' / 'mask_rcnn_convnext_t_coco.py'),
                      iters=1, device='cpu')
    assert 0. < fps < 100.


@pytest.mark.long
def test_demo_learns_and_writes_pictures_curves_and_summary(tmp_path):
    """The demo at reduced length (120 + 300 iterations of its 400 + 800)
    holds a reduced floor; here it gives box AP 41.5, mask AP 54.7, mIoU
    65.7."""
    work = tmp_path / 'demo'
    _, out = run_tool('demo.py', '--work-dir', work, '--det-iters', '120',
                      '--seg-iters', '300')
    assert sorted(p.name for p in (work / 'vis').iterdir()) == [
        f'{kind}_{i}.png' for kind in ('det', 'seg') for i in range(4)
    ]
    assert (work / 'loss_curves.png').stat().st_size > 10_000
    summary = (work / 'summary.md').read_text()
    for row in ('Mask R-CNN box AP', 'Mask R-CNN mask AP', 'UperNet mIoU'):
        assert re.search(rf'\| {row} \| [\d.]+ \| [\d.]+ \| [\d.]+ \|',
                         summary), summary
    assert summary.strip() in out
    after = {
        row: float(re.search(rf'\| {row} \| [\d.]+ \| ([\d.]+) \|',
                             summary).group(1))
        for row in ('Mask R-CNN box AP', 'Mask R-CNN mask AP', 'UperNet mIoU')
    }
    assert after['Mask R-CNN box AP'] >= 30, summary
    assert after['Mask R-CNN mask AP'] >= 40, summary
    assert after['UperNet mIoU'] >= 55, summary
    # a second run never writes into a used work dir
    code, out = run_tool('demo.py', '--work-dir', work, check=False)
    assert code != 0 and 'is not empty' in out
