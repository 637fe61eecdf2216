"""ConvNeXt V2 recipes end to end on tiny models (atto, generated data):
Mask R-CNN started from an FCMAE checkpoint in the authors' sparse training
form, trained with large-scale jitter and tested with soft-NMS; UperNet
tested multi-scale as the V2 paper did; both exported and verified."""
import json

from convnext_mm.checkpoints import safe_torch_load
from tool_utils import metric, needs_mmdeploy, run_tool


def test_mask_rcnn_v2_trains_from_sparse_fcmae_and_tests_with_soft_nms(
        trained_v2_mask_rcnn):
    cfg, work, out = trained_v2_mask_rcnn
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


def test_upernet_v2_multi_scale_test(trained_v2_upernet):
    cfg, work, out = trained_v2_upernet
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
def test_v2_exports(trained_v2_mask_rcnn, trained_v2_upernet, tmp_path):
    det_cfg, det_work, _ = trained_v2_mask_rcnn
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
    seg_cfg, seg_work, _ = trained_v2_upernet
    _, out = run_tool('deploy.py', seg_cfg, seg_work / 'iter_10.pth',
                      '--out', tmp_path / 'seg', '--repeat',
                      '1', '--cfg-options', 'model.test_cfg.mode=whole')
    report = json.loads((tmp_path / 'seg' / 'export.json').read_text())
    assert report['passed'], out[-3000:]
