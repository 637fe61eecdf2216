"""ImageNet configs end to end on a generated class-folder dataset (the
session's trained classifier), and a classifier checkpoint as the init of a
detector's backbone."""

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from convnext_mm.checkpoints import safe_torch_load
from convnext_mm.synthetic.small_configs import (small_cls_config,
                                                 small_det_config)
from helpers import captured_log
from tool_utils import dumped, metric, run_tool, train_losses


def test_classifier_trains_and_evaluates(trained_classifier):
    cfg, work, out = trained_classifier
    losses = [loss for _, loss in train_losses(work)]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert 'EMAHook' in out
    _, out = run_tool('test.py', cfg, work / 'iter_10.pth')
    assert 0. <= metric(out, 'accuracy/top1') <= 100.


def test_fine_tune_config_uses_layer_decay(folders, tmp_path):
    """The optimizer the fine-tuning config's runner would build."""
    cfg = small_cls_config('convnext_b_in22k_ft_in1k', folders,
                           tmp_path / 'ft')
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model = MODELS.build(cfg.model)
    with captured_log() as lines:
        build_optim_wrapper(model, cfg.optim_wrapper)
    assert any('ConvNeXtLRDecayConstructor: layer_wise, decay_rate 0.8, '
               'num_layers 12' in line for line in lines), lines


def test_classifier_checkpoint_initialises_a_detector(trained_classifier,
                                                      coco, tmp_path):
    _, work, _ = trained_classifier
    ckpt = work / 'iter_2.pth'
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
