"""tools/deploy.py: Mask R-CNN, Cascade Mask R-CNN and UperNet (sliding
window and whole image) exported to ONNX from the trained tiny models and
verified in ONNX Runtime; the verification's matching; the rewriters that
fix mmdeploy; bad input."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from convnext_mm.deploy import verify
from convnext_mm.launch import lock
from tool_utils import needs_mmdeploy, run_tool

EXPECTED_OPS = {'LayerNormalization'}
DET_OPS = {'RoiAlign', 'NonMaxSuppression'}


def _deploy(cfg, ckpt, out, *options):
    _, text = run_tool('deploy.py', cfg, ckpt, '--out', out, '--repeat', '1',
                       *options)
    report = json.loads((out / 'export.json').read_text())
    assert 'verification passed' in text and report['passed'], text[-3000:]
    assert report['opset'] == 17
    assert 'all standard ONNX' in text
    # the latency table: the graph apart from the post-processing
    assert '| runtime | graph | post-processing | total |' in text
    assert set(report['latency_ms']) == {'pytorch', 'onnxruntime',
                                         'onnxruntime_graph', 'postprocess'}
    resize = report['input']['resize']
    if '--shape' in options:
        h, w = options[options.index('--shape') + 1:][:2]
        assert resize['scale'] == [int(w), int(h)] and not resize[
            'keep_ratio']
    else:
        assert resize['keep_ratio'] is True and len(resize['scale']) == 2
    assert resize['interpolation'] == 'bilinear'
    assert sorted(p.name for p in out.iterdir()) == [
        'end2end.onnx', 'export.json']
    assert not list(out.parent.glob(f'.{out.name}.export@*'))
    return text, report


def _detections(report):
    row = next(r for r in report['verification']
               if r['check'].startswith('detections above'))
    ours, theirs = (int(v) for v in row['value'].split(' / '))
    assert ours == theirs
    return ours


@needs_mmdeploy
def test_mask_rcnn_dynamic_export_verifies(trained_mask_rcnn, coco,
                                           tmp_path):
    cfg, work, _ = trained_mask_rcnn
    image = coco['val']['data_root'] + 'val/val_00002.jpg'
    text, report = _deploy(cfg, work / 'iter_16.pth', tmp_path / 'onnx',
                           '--dynamic', '--image', image)
    assert _detections(report) > 0
    assert EXPECTED_OPS | DET_OPS <= set(report['ops'])
    assert report['outputs'] == ['dets', 'labels', 'masks']
    assert _row(report, 'largest mask probability difference')['ok']
    assert report['input']['dynamic_hw'] and report['classes']
    assert 'dynamic height and width' in text


@pytest.mark.long
@needs_mmdeploy
def test_dynamic_graph_runs_other_sizes_like_pytorch(trained_mask_rcnn,
                                                     coco, tmp_path):
    """The dynamic graph, exported on one image, on images of other sizes
    (one not a multiple of the pad divisor)."""
    from mmengine.config import Config

    from convnext_mm.deploy.export import Exported, deploy_config
    cfg, work, _ = trained_mask_rcnn
    cfg = Config.fromfile(str(cfg))
    deploy = deploy_config(cfg, dynamic=True)
    image = coco['val']['data_root'] + 'val/val_00001.jpg'
    first = Exported(cfg, deploy, str(work / 'iter_16.pth'), image)
    path = str(tmp_path / 'end2end.onnx')
    first.export(path)
    found = 0
    for shape in ((200, 264), (150, 170)):
        other = Exported(cfg, deploy_config(cfg, True, shape),
                         str(work / 'iter_16.pth'), image)
        assert tuple(other.graph_input.shape[2:]) == shape
        rows = verify.compare_detections(
            other.torch_predictor()().pred_instances,
            other.onnx_predictor(path)().pred_instances)
        assert all(r.ok for r in rows), verify.table(rows)
        found += int(rows[0].value.split(' / ')[0])
    assert found > 0


def _disagreeing_stages(ckpt, path):
    """The checkpoint with the first and last stage's mask logits moved
    apart by +-2: the mean of the logits stays, the mean of the
    probabilities (mmdet's merge) does not."""
    state = torch.load(ckpt, map_location='cpu', weights_only=False)
    weights = state['state_dict']
    weights['roi_head.mask_head.0.conv_logits.bias'] += 2
    weights['roi_head.mask_head.2.conv_logits.bias'] -= 2
    torch.save(state, path)
    return path


def _row(report, check):
    return next(r for r in report['verification'] if r['check'] == check)


@needs_mmdeploy
def test_cascade_class_specific_static_export_verifies(
        trained_cascade, coco, tmp_path):
    """Including the stages' mask merge: mmdet's mean of probabilities
    (mmdeploy's sigmoid of the mean logit fails the probability row)."""
    cfg, work, _ = trained_cascade
    ckpt = _disagreeing_stages(work / 'iter_20.pth', tmp_path / 'c.pth')
    image = coco['val']['data_root'] + 'val/val_00001.jpg'
    text, report = _deploy(cfg, ckpt, tmp_path / 'onnx', '--image', image)
    assert _detections(report) > 0
    assert EXPECTED_OPS | DET_OPS <= set(report['ops'])
    assert 'fixed height and width' in text
    assert _row(report, 'largest mask probability difference')['ok']


@needs_mmdeploy
# make test exports whole-image mode with the V2 UperNet (test_v2_e2e.py)
@pytest.mark.parametrize(
    'mode', ['slide', pytest.param('whole', marks=pytest.mark.long)])
def test_upernet_export_verifies(trained_upernet, ade, tmp_path, mode):
    cfg, work, _ = trained_upernet
    image = sorted(
        (Path(ade['data_root']) / 'images' / 'validation').glob('*.jpg'))[0]
    # 64x64 windows with stride 42 over a 64x120 input: three windows
    options = ['--shape', '64', '120'] if mode == 'slide' else [
        '--dynamic', '--cfg-options', 'model.test_cfg.mode=whole'
    ]
    _, report = _deploy(cfg, work / 'iter_20.pth', tmp_path / 'onnx',
                        '--image', image, *options)
    assert report['outputs'] == ['seg_logits']
    assert EXPECTED_OPS <= set(report['ops'])
    pixels = next(r for r in report['verification']
                  if r['check'] == 'pixels with the same label')
    assert float(pixels['value'].rstrip('%')) >= 99.9


def _instances(boxes, scores, labels):
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                        scores=torch.tensor(scores),
                        labels=torch.tensor(labels))


def _failed(rows):
    return {r.check for r in rows if not r.ok}


def test_matching_accepts_equal_and_refuses_moved_or_missing():
    a = _instances([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.3], [0, 1])
    assert not _failed(verify.compare_detections(a, a))
    moved = _instances([[0, 0, 10, 10], [21, 20, 41, 40]], [0.9, 0.3],
                       [0, 1])
    assert _failed(verify.compare_detections(a, moved)) == {'lowest box IoU'}
    rescored = _instances([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.302],
                          [0, 1])
    assert _failed(verify.compare_detections(a, rescored)) == {
        'largest score difference'
    }
    relabelled = _instances([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.3],
                            [0, 0])
    assert 'without a match' in _failed(verify.compare_detections(
        a, relabelled))
    missing = _instances([[0, 0, 10, 10]], [0.9], [0])
    assert _failed(verify.compare_detections(a, missing)) == {
        'without a match'
    }
    # a detection at the score threshold may fall on either side of it
    edge = _instances([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.0505],
                      [0, 1])
    assert not _failed(verify.compare_detections(edge, missing))


def test_equal_scores_let_nms_keep_either_box():
    """A box ONNX kept in place of PyTorch's, with the same score, passes
    when PyTorch's NMS had it to choose from; otherwise it is a moved box."""
    a = _instances([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.3], [0, 1])
    b = _instances([[0, 0, 10, 10], [22, 20, 42, 40]], [0.9, 0.3], [0, 1])
    before_nms = _instances([[0, 0, 10, 10], [20, 20, 40, 40],
                             [22, 20, 42, 40]], [0.9, 0.3, 0.3], [0, 1, 1])
    rows = verify.compare_detections(a, b, lambda: before_nms)
    assert not _failed(rows)
    assert next(r.value for r in rows if r.check.startswith('NMS ties')) \
        == '1'
    assert _failed(verify.compare_detections(a, b, lambda: a)) == {
        'lowest box IoU'
    }


def test_masks_are_compared():
    a = _instances([[0, 0, 10, 10]], [0.9], [0])
    b = _instances([[0, 0, 10, 10]], [0.9], [0])
    a.masks = torch.zeros(1, 12, 12, dtype=torch.bool)
    b.masks = torch.zeros(1, 12, 12, dtype=torch.bool)
    a.masks[0, :10, :10] = True
    b.masks[0, :10, :9] = True
    assert _failed(verify.compare_detections(a, b)) == {'lowest mask IoU'}


def test_mask_probabilities_are_compared():
    """Binary masks alike, probabilities 0.02 apart: a failure (mmdet's
    uint8 probabilities against float ones)."""
    a = _instances([[0, 0, 10, 10]], [0.9], [0])
    b = _instances([[0, 0, 10, 10]], [0.9], [0])
    a.masks = torch.full((1, 12, 12), 204, dtype=torch.uint8)  # 0.8
    b.masks = torch.full((1, 12, 12), 0.802)
    assert verify.compare_mask_probabilities(a, b).ok
    b.masks += 0.02
    assert not verify.compare_mask_probabilities(a, b).ok


def test_label_agreement_limit():
    labels = torch.zeros(100, 100, dtype=torch.long)
    other = labels.clone()
    other[0, :10] = 1  # 0.1% of the pixels
    assert not _failed(verify.compare_labels(labels, other))
    other[1, :1] = 1
    assert _failed(verify.compare_labels(labels, other))


@needs_mmdeploy
@pytest.mark.parametrize('size', [(7, 11), (16, 16), (13, 29)])
def test_adaptive_pooling_exports_exactly(tmp_path, size):
    """UperNet's pyramid pooling (1, 2, 3, 6) in ONNX Runtime equals
    PyTorch's adaptive pooling, also where 3 or 6 do not divide the size
    (mmdeploy's own rewrite averages other windows there)."""
    import onnxruntime as ort
    import torch.nn.functional as F
    from mmengine.config import Config

    from convnext_mm.deploy import rewriters  # noqa: F401
    from convnext_mm.deploy.export import _rewriting

    class Pyramid(torch.nn.Module):

        def forward(self, x):
            return torch.cat([
                F.adaptive_avg_pool2d(x, s).flatten(2) for s in (1, 2, 3, 6)
            ], 2)

    x = torch.randn(1, 4, *size)
    cfg = Config(
        dict(onnx_config=dict(type='onnx', opset_version=17),
             backend_config=dict(type='onnxruntime'),
             codebase_config=dict(type='mmseg')))
    with _rewriting(cfg, 'onnxruntime', 17), torch.no_grad():
        torch.onnx.export(Pyramid(), (x, ), tmp_path / 'p.onnx',
                          dynamo=False, opset_version=17,
                          input_names=['x'])
    got = ort.InferenceSession(str(tmp_path / 'p.onnx')).run(
        None, {'x': x.numpy()})[0]
    np.testing.assert_allclose(got, Pyramid()(x).numpy(), atol=1e-5)


def test_onnx_runtime_runs_the_threads_pytorch_runs(tmp_path):
    """Without options a session takes one thread per core: the latency
    table would compare PyTorch on N threads with ONNX Runtime on all."""
    from convnext_mm.deploy.export import ort_session
    path = tmp_path / 'linear.onnx'
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4), ), path,
                      dynamo=False, input_names=['x'])
    options = ort_session(str(path), 1).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == \
        (1, 1)


@needs_mmdeploy
def test_a_breakdown_after_the_export_leaves_nothing(trained_upernet,
                                                     tmp_path, monkeypatch):
    cfg, work, _ = trained_upernet

    def broken(*args):
        raise RuntimeError('the runtime fell over')

    monkeypatch.setattr(verify, 'compare_labels', broken)
    out = tmp_path / 'onnx'
    # the work folders of two earlier exports: one killed (its process is
    # gone), one still running (this process)
    ended = subprocess.Popen([sys.executable, '-c', 'pass'])
    ended.wait()
    killed = tmp_path / f'.onnx.export@{socket.gethostname()}@{ended.pid}@@x1'
    (killed / 'end2end.onnx').parent.mkdir()
    (killed / 'end2end.onnx').write_bytes(b'half an export')
    running = tmp_path / f'.onnx.export@{lock.tag()}@x2'
    running.mkdir()
    code, text = run_tool('deploy.py', cfg, work / 'iter_20.pth', '--out', out,
                          '--repeat', '1', '--cfg-options',
                          'model.test_cfg.mode=whole', check=False)
    assert code == 3, text[-3000:]
    assert text.strip().splitlines()[-1] == ('error: the export broke down (RuntimeError: the '
                       f'runtime fell over); nothing was written to {out}')
    assert not out.exists()  # a rerun is not blocked
    assert not killed.exists() and running.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name]


def test_pasted_masks_are_mmdeploys(tmp_path):
    """The vectorised paste against mmdeploy's per-box grid_sample."""
    pytest.importorskip('mmdeploy')
    from mmdeploy.codebase.mmdet.deploy.object_detection_model import \
        End2EndModel

    from convnext_mm.deploy.postprocess import paste_masks
    gen = torch.Generator().manual_seed(0)
    n, h, w = 40, 120, 160
    x0, y0 = torch.rand(n, generator=gen) * 150, torch.rand(
        n, generator=gen) * 110
    boxes = torch.stack([x0, y0, x0 + torch.rand(n, generator=gen) * 60,
                         y0 + torch.rand(n, generator=gen) * 40], 1)
    boxes[0, 2] = boxes[0, 0]  # a box of no width
    boxes[1] = torch.tensor([-20., -10., 200., 150.])  # past the image
    masks = torch.rand(n, 28, 28, generator=gen)
    ref = End2EndModel.postprocessing_masks(boxes, masks, w, h) >= 0.5
    ours = paste_masks(masks, boxes, h, w)
    assert ours.shape == (n, h, w) and ours.dtype == torch.bool
    assert torch.equal(ours, ref)


@pytest.mark.long
@needs_mmdeploy
def test_the_deploy_benchmark_runs_again_in_its_work_folder(tmp_path):
    """A second run in the same --work re-uses the model it trained there
    and replaces its own ONNX folder."""
    from tool_utils import ROOT
    command = [sys.executable, 'benchmarks/deploy.py', '--work', str(tmp_path),
               '--iters', '1', '--models', 'whole']
    trained = tmp_path / 'upernet_convnext_t_ade20k' / 'iter_1.pth'
    rows, made = [], []
    for _ in range(2):
        res = subprocess.run(command, capture_output=True, text=True,
                             cwd=ROOT, timeout=1800)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        rows.append(next(line for line in res.stdout.splitlines()
                         if line.startswith('| UperNet T (whole, dynamic) |')))
        made.append(trained.stat().st_mtime_ns)
    assert made[0] == made[1]  # not trained again
    assert all('| passed |' in row for row in rows), rows
