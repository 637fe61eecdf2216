"""ConvNeXt V2 recipes end to end on tiny models (atto, generated data):
Mask R-CNN started from an FCMAE checkpoint in the authors' sparse training
form, trained with large-scale jitter and tested with soft-NMS; UperNet
tested multi-scale as the V2 paper did; both exported and verified."""
import json

import pytest
import torch

from convnext_mm import ConvNeXt
from convnext_mm.checkpoints import safe_torch_load
from convnext_mm.synthetic.small_configs import (dump_config,
                                                 small_det_config,
                                                 small_seg_config)
from helpers import randomise_, sparse_fcmae
from tool_utils import dumped, metric, needs_mmdeploy, run_tool, trained

pytestmark = pytest.mark.slow

DET, SEG = 'mask_rcnn_convnextv2_b_fcmae_coco', 'upernet_convnextv2_b_ade20k'


@pytest.fixture(scope='module')
def fcmae_atto(tmp_path_factory):
    """An atto FCMAE pre-training checkpoint as the authors save it."""
    path = tmp_path_factory.mktemp('fcmae') / 'convnextv2_atto_fcmae.pt'
    dense = randomise_(ConvNeXt('atto', use_grn=True,
                                layer_scale_init_value=0.)).state_dict()
    torch.save({'model': sparse_fcmae(dense), 'epoch': 1599}, path)
    return path


@pytest.fixture(scope='module')
def v2_mask_rcnn(coco, fcmae_atto, tmp_path_factory):
    work = tmp_path_factory.mktemp('runs') / 'v2_det'
    cfg = small_det_config(DET, coco, work, max_iters=16, ckpt_interval=16)
    cfg.model.backbone.init_cfg = dict(type='Pretrained',
                                       checkpoint=str(fcmae_atto))
    path = dump_config(cfg, work, DET)
    _, out = run_tool('train.py', path)
    return path, work, out


def test_mask_rcnn_v2_trains_from_sparse_fcmae_and_tests_with_soft_nms(
        v2_mask_rcnn):
    cfg, work, out = v2_mask_rcnn
    # the sparse encoder converted, its decoder left out, norms fresh
    assert "layout the ConvNeXt V2 authors' FCMAE pre-training checkpoint" \
        in out
    assert 'left out (not part of this backbone): mask_token (1)' in out
    assert 'ConvNeXtLRDecayConstructor: layer_wise, decay_rate 0.95, ' \
        'num_layers 12' in out
    # it trained with large-scale jitter (1024x1024 shrunk to the
    # generated images' size)
    from mmengine.config import Config
    pipeline = Config.fromfile(str(cfg)).train_dataloader.dataset.pipeline
    jitter = next(t for t in pipeline if t['type'] == 'RandomResize')
    assert jitter['ratio_range'] == (0.1, 2.0) and jitter['keep_ratio']
    ckpt = safe_torch_load(work / 'iter_16.pth')
    assert ckpt['meta']['iter'] == 16
    assert ckpt['state_dict']['backbone.stages.0.0.grn.gamma'].shape == (160,)
    _, tested = run_tool('test.py', cfg, work / 'iter_16.pth')
    assert "type='soft_nms'" in tested  # the R-CNN test, as configured
    assert 0. <= metric(tested, 'coco/bbox_mAP') <= 1.
    assert 0. <= metric(tested, 'coco/segm_mAP') <= 1.


def test_upernet_v2_multi_scale_test(ade, tmp_path_factory):
    cfg, work, out = trained(tmp_path_factory, 'v2_seg', small_seg_config,
                             SEG, ade, max_iters=10, ckpt_interval=10)
    assert 'ConvNeXtLRDecayConstructor: layer_wise, decay_rate 0.9, ' \
        'num_layers 12' in out
    _, single = run_tool('test.py', cfg, work / 'iter_10.pth')
    _, multi = run_tool('test.py', cfg, work / 'iter_10.pth', '--tta')
    assert 0. <= metric(single, 'mIoU') <= 100.
    assert 0. <= metric(multi, 'mIoU') <= 100.
    from mmengine.config import Config
    tta = Config.fromfile(str(cfg)).tta_pipeline[1]['transforms'][0]
    # 0.75-1.25 of the (shrunk) 2048x512 test scale: five scales
    assert [t['scale'] for t in tta] == [
        (192, 48), (224, 56), (256, 64), (288, 72), (320, 80)]


@needs_mmdeploy
def test_v2_exports(v2_mask_rcnn, ade, tmp_path):
    det_cfg, det_work, _ = v2_mask_rcnn
    ckpt = det_work / 'iter_16.pth'
    code, out = run_tool('deploy.py', det_cfg, ckpt, '--out',
                         tmp_path / 'soft', check=False)
    assert code == 2 and "is 'soft_nms'" in out.strip().splitlines()[-1]
    assert not (tmp_path / 'soft').exists()
    _, out = run_tool('deploy.py', det_cfg, ckpt, '--out', tmp_path / 'det',
                      '--repeat', '1', '--cfg-options',
                      'model.test_cfg.rcnn.nms.type=nms')
    report = json.loads((tmp_path / 'det' / 'export.json').read_text())
    assert report['passed'] and 'verification passed' in out, out[-3000:]
    seg_cfg = dumped(small_seg_config, SEG, ade, tmp_path / 'seg_work',
                     max_iters=2, ckpt_interval=2)
    run_tool('train.py', seg_cfg)
    _, out = run_tool('deploy.py', seg_cfg, tmp_path / 'seg_work' /
                      'iter_2.pth', '--out', tmp_path / 'seg', '--repeat',
                      '1', '--cfg-options', 'model.test_cfg.mode=whole')
    report = json.loads((tmp_path / 'seg' / 'export.json').read_text())
    assert report['passed'], out[-3000:]
