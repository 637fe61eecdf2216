"""ImageNet configs end to end on a generated class-folder dataset, and a
classifier checkpoint as the init of a detector's backbone."""

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from convnext_mm.checkpoints import safe_torch_load
from convnext_mm.synthetic import make_coco_instances, make_image_folder
from convnext_mm.synthetic.small_configs import (small_cls_config,
                                                 small_det_config)
from tool_utils import dumped, metric, run_tool, train_losses, trained

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('shapes_folders'))


@pytest.fixture(scope='module')
def trained_classifier(folders, tmp_path_factory):
    return trained(tmp_path_factory, 'cls', small_cls_config,
                   'convnext_t_in1k', folders, max_iters=10, ckpt_interval=2)


def test_classifier_trains_and_evaluates(trained_classifier):
    cfg, work, out = trained_classifier
    losses = [loss for _, loss in train_losses(work)]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert 'EMAHook' in out
    _, out = run_tool('test.py', cfg, work / 'iter_10.pth')
    assert 0. <= metric(out, 'accuracy/top1') <= 100.


def test_fine_tune_config_uses_layer_decay(folders, tmp_path):
    cfg = dumped(small_cls_config,
                 'convnext_b_in22k_ft_in1k',
                 folders,
                 tmp_path / 'ft',
                 max_iters=2,
                 ckpt_interval=2)
    _, out = run_tool('train.py', cfg)
    assert 'ConvNeXtLRDecayConstructor: layer_wise, decay_rate 0.8, ' \
        'num_layers 12' in out


def test_classifier_checkpoint_initialises_a_detector(trained_classifier,
                                                      tmp_path):
    _, work, _ = trained_classifier
    ckpt = work / 'iter_2.pth'
    coco = dict(train=make_coco_instances(tmp_path / 'coco', num_images=2),
                val=make_coco_instances(tmp_path / 'coco',
                                        num_images=2,
                                        split='val'))
    det_cfg = Config.fromfile(
        str(
            dumped(small_det_config, 'mask_rcnn_convnext_t_coco', coco,
                   tmp_path / 'd')))
    det_cfg.model.backbone.init_cfg = dict(type='Pretrained',
                                           checkpoint=str(ckpt))
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    detector = MODELS.build(det_cfg.model)
    detector.init_weights()
    saved = safe_torch_load(ckpt)['state_dict']
    own = detector.backbone.state_dict()
    # everything but the output norms, which start fresh as in the paper
    # (the classifier's final norm, saved as norm3, is not copied)
    norms = [f'norm{i}.{p}' for i in range(4) for p in ('bias', 'weight')]
    arrived = [k for k in own if k not in norms]
    assert all(f'backbone.{k}' in saved for k in arrived)
    for key in norms:
        assert torch.equal(own[key], torch.ones_like(own[key]) if
                           key.endswith('weight') else
                           torch.zeros_like(own[key])), key
    assert not torch.equal(saved['backbone.norm3.weight'], torch.ones(320))
    for key in arrived:
        assert torch.equal(own[key], saved[f'backbone.{key}']), key
