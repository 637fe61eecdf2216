"""COCO configs end to end on generated data, through tools/train.py and
tools/test.py: training, COCO evaluation, resume, multi-scale + flip test
with masks, distributed training, and the errors for bad input."""
import pickle
import shutil
import subprocess
import sys

import torch

from convnext_mm.checkpoints import safe_torch_load
from convnext_mm.synthetic.small_configs import small_det_config
from tool_utils import ROOT, dumped, metric, run_tool, train_losses


def test_mask_rcnn_trains_with_the_released_recipe(trained_mask_rcnn):
    _, work, out = trained_mask_rcnn
    assert 'ConvNeXtLRDecayConstructor: layer_wise, decay_rate 0.95' in out
    assert 'mixed precision off' in out  # CPU: AmpOptimWrapper -> fp32
    losses = [loss for _, loss in train_losses(work)]
    assert len(losses) == 16
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    ckpt = safe_torch_load(work / 'iter_16.pth')
    assert ckpt['meta']['iter'] == 16


def test_mask_rcnn_evaluates_with_coco_metrics(trained_mask_rcnn):
    cfg, work, _ = trained_mask_rcnn
    _, out = run_tool('test.py', cfg, work / 'iter_16.pth', '--work-dir',
                      work / 'test')
    for name in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert 0. <= metric(out, name) <= 1.


def test_resume_reaches_the_same_final_iteration(trained_mask_rcnn, tmp_path):
    cfg, work, _ = trained_mask_rcnn
    # an interrupted run: only the iteration-8 checkpoint made it to disk
    interrupted = tmp_path / 'interrupted'
    interrupted.mkdir()
    shutil.copy(work / 'iter_8.pth', interrupted / 'iter_8.pth')
    (interrupted / 'last_checkpoint').write_text(
        str(interrupted / 'iter_8.pth'))
    _, out = run_tool('train.py', cfg, '--work-dir', interrupted, '--resume')
    assert 'resumed epoch: 0, iter: 8' in out
    final = safe_torch_load(interrupted / 'iter_16.pth')
    assert final['meta']['iter'] == 16
    steps = {s['step'].item() for s in final['optimizer']['state'].values()}
    assert steps == {16.}


def test_cascade_trains_and_evaluates(trained_cascade):
    cfg, work, out = trained_cascade
    assert 'layer_wise, decay_rate 0.7' in out
    assert 'SyncBN norm configs use BN' in out
    losses = [loss for _, loss in train_losses(work)]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    _, out = run_tool('test.py', cfg, work / 'iter_20.pth')
    assert 0. <= metric(out, 'coco/segm_mAP') <= 1.


def _predictions(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def test_tta_single_view_equals_plain_test(trained_mask_rcnn, coco, tmp_path):
    cfg, work, _ = trained_mask_rcnn
    ckpt = work / 'iter_16.pth'
    run_tool('test.py', cfg, ckpt, '--out', tmp_path / 'plain.pkl')
    single = dumped(small_det_config,
                    'mask_rcnn_convnext_t_coco',
                    coco,
                    tmp_path / 'single',
                    tta_single_view=True)
    run_tool('test.py', single, ckpt, '--tta', '--out', tmp_path / 'tta.pkl')
    plain, tta = _predictions(tmp_path / 'plain.pkl'), _predictions(tmp_path /
                                                                    'tta.pkl')
    assert len(plain) == len(tta) == 6
    detections = 0
    for p, t in zip(plain, tta):
        p, t = p['pred_instances'], t['pred_instances']
        order_p, order_t = p['scores'].argsort(), t['scores'].argsort()
        for key in ('bboxes', 'scores', 'labels', 'masks'):
            assert torch.equal(p[key][order_p], t[key][order_t]), key
        detections += len(p['scores'])
    assert detections > 0


def test_tta_multi_scale_flip_gives_coco_results_with_masks(
        trained_mask_rcnn, tmp_path):
    cfg, work, _ = trained_mask_rcnn
    # two of the six images: six views each
    _, out = run_tool('test.py', cfg, work / 'iter_16.pth', '--tta', '--out',
                      tmp_path / 'tta.pkl', '--cfg-options',
                      'test_dataloader.dataset.indices=2')
    assert 0. <= metric(out, 'coco/segm_mAP') <= 1.
    results = _predictions(tmp_path / 'tta.pkl')
    assert len(results) == 2
    pred = results[0]['pred_instances']
    assert pred['masks'].shape[1:] == tuple(results[0]['ori_shape'])
    assert len(pred['scores']) <= 100
    assert pred['masks'].dtype == torch.bool


def test_two_process_distributed_training(coco, tmp_path):
    work = tmp_path / 'dist'
    cfg = dumped(small_det_config,
                 'mask_rcnn_convnext_t_coco',
                 coco,
                 work,
                 max_iters=3,
                 ckpt_interval=3)
    env_cmd = ['bash', str(ROOT / 'tools' / 'dist_train.sh'), str(cfg), '2']
    res = subprocess.run(env_cmd,
                         capture_output=True,
                         text=True,
                         cwd=ROOT,
                         timeout=600,
                         env={
                             **__import__('os').environ, 'PORT': '29517',
                             'PYTHON': sys.executable,
                             'OMP_NUM_THREADS': '1',
                             'PYTHONWARNINGS': 'ignore'
                         })
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert 'distributed training over gloo' in out
    # 2 processes x 2 images against the recipe's 16: lr x 1/4
    assert 'the current batch size is 4. Scaling the original LR by 0.25' \
        in out
    ckpt = safe_torch_load(work / 'iter_3.pth')
    assert ckpt['meta']['iter'] == 3
    # written whole by the main process only: the marker names it, no
    # temporary file of either rank is left
    assert 'Checkpoints are written whole' in out
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_3.pth')
    assert not list(work.glob('*.partial'))


def test_missing_dataset_fails_before_training(coco, tmp_path):
    cfg = dumped(small_det_config, 'mask_rcnn_convnext_t_coco', coco,
                 tmp_path / 'w')
    code, out = run_tool('train.py',
                         cfg,
                         '--cfg-options',
                         'train_dataloader.dataset.data_root=/nowhere/coco/',
                         check=False)
    assert code != 0
    assert 'train_dataloader.dataset.data_root: /nowhere/coco/ does not ' \
        'exist' in out
    assert 'Traceback' not in out


def test_checkpoint_of_another_arch_is_refused(trained_mask_rcnn):
    cfg, work, _ = trained_mask_rcnn
    code, out = run_tool('test.py',
                         cfg,
                         work / 'iter_16.pth',
                         '--cfg-options',
                         'model.backbone.arch=femto',
                         'model.neck.in_channels=[48,96,192,384]',
                         check=False)
    assert code != 0
    assert "holds a ConvNeXt of arch 'atto'" in out
    assert "set arch='atto'" in out


def test_unknown_config_key_is_refused(trained_mask_rcnn):
    cfg, _, _ = trained_mask_rcnn
    code, out = run_tool('train.py',
                         cfg,
                         '--cfg-options',
                         'train_dataloder.batch_size=4',
                         check=False)
    assert code != 0 and "did you mean train_dataloader" in out
    code, out = run_tool('train.py',
                         cfg,
                         '--cfg-options',
                         'model.backbone.drop_path_rat=0.2',
                         check=False)
    assert code != 0 and 'did you mean drop_path_rate' in out
