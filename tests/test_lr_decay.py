"""ConvNeXtLRDecayConstructor gives every parameter exactly the learning rate
and weight decay of mmdet's and mmseg's own constructors."""
import pytest
import torch
from mmengine.hub import get_config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import convnext_mm  # noqa: F401
from convnext_mm.models import ARCH_SETTINGS
from helpers import captured_log


def backbone(arch, frozen_stages=0):
    return dict(type='ConvNeXt', arch=arch, frozen_stages=frozen_stages,
                layer_scale_init_value=1.0)


def cascade_mask_rcnn(arch, frozen_stages=0):
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    cfg = get_config('mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py')
    cfg.model.backbone = backbone(arch, frozen_stages)
    cfg.model.neck.in_channels = list(ARCH_SETTINGS[arch]['channels'])
    return MODELS.build(cfg.model)


def upernet(arch, frozen_stages=0):
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    cfg = get_config('mmseg::_base_/models/upernet_r50.py')
    cfg.model.pretrained = None
    channels = list(ARCH_SETTINGS[arch]['channels'])
    cfg.model.backbone = backbone(arch, frozen_stages)
    cfg.model.decode_head.in_channels = channels
    cfg.model.auxiliary_head.in_channels = channels[2]
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        head.norm_cfg = dict(type='BN', requires_grad=True)
    return MODELS.build(cfg.model)


def lr_and_wd(model, constructor, paramwise_cfg, lr=2e-4, wd=0.05):
    wrapper = build_optim_wrapper(
        model,
        dict(type='OptimWrapper', constructor=constructor,
             optimizer=dict(type='AdamW', lr=lr, weight_decay=wd,
                            betas=(0.9, 0.999)),
             paramwise_cfg=paramwise_cfg))
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            table[names[id(p)]] = (group['lr'], group['weight_decay'])
    return table, wrapper


CASES = [
    # (builder, reference constructor scope, arch, frozen, paramwise_cfg)
    ('det', 'tiny', 0, dict(decay_rate=0.7, decay_type='layer_wise',
                            num_layers=6)),
    ('det', 'small', 1, dict(decay_rate=0.8, decay_type='layer_wise',
                             num_layers=12)),
    ('seg', 'tiny', 0, dict(decay_rate=0.9, decay_type='stage_wise',
                            num_layers=6)),
    ('seg', 'small', 0, dict(decay_rate=0.9, decay_type='stage_wise',
                             num_layers=12)),
    ('seg', 'small', 2, dict(decay_rate=0.9, decay_type='layer_wise',
                             num_layers=12)),
]


@pytest.mark.parametrize('kind,arch,frozen,paramwise_cfg', CASES)
def test_matches_openmmlab_constructors(kind, arch, frozen, paramwise_cfg):
    build = cascade_mask_rcnn if kind == 'det' else upernet
    model = build(arch, frozen)
    ref, _ = lr_and_wd(model, 'LearningRateDecayOptimizerConstructor',
                       paramwise_cfg)
    ours, wrapper = lr_and_wd(model, 'ConvNeXtLRDecayConstructor',
                              paramwise_cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ours) == set(ref) == trainable
    for name in ref:
        assert ours[name] == pytest.approx(ref[name], rel=1e-12), name
    # the rule is exercised, not degenerate: several distinct lrs and both
    # weight-decay values appear
    assert len({lr for lr, _ in ours.values()}) >= (4 if frozen < 2 else 3)
    assert {wd for _, wd in ours.values()} == {0., 0.05}
    groups = {g['group_name'] for g in wrapper.optimizer.param_groups}
    assert all(g.startswith('layer_') for g in groups)


def test_released_values_spot_check():
    model = cascade_mask_rcnn('small')
    ours, _ = lr_and_wd(model, 'ConvNeXtLRDecayConstructor',
                        dict(decay_rate=0.8, num_layers=12), lr=1e-4)
    n = 14  # num_layers + 2
    expect = {
        'backbone.downsample_layers.0.0.weight': (0, 0.05),
        'backbone.stages.0.2.dwconv.weight': (1, 0.05),
        'backbone.downsample_layers.1.1.weight': (2, 0.05),
        'backbone.stages.2.14.pwconv1.weight': (3 + 14 // 3, 0.05),
        'backbone.stages.2.14.gamma': (3 + 14 // 3, 0.),
        'backbone.stages.3.0.pwconv2.bias': (12, 0.),
        'backbone.norm2.weight': (13, 0.),
        'neck.fpn_convs.0.conv.weight': (13, 0.05),
        'roi_head.bbox_head.0.fc_cls.bias': (13, 0.),
    }
    for name, (layer_id, wd) in expect.items():
        lr = 1e-4 * 0.8**(n - layer_id - 1)
        assert ours[name] == (pytest.approx(lr), wd), name


def test_classifier_and_default_num_layers():
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='convnext_mm.ConvNeXt', arch='tiny',
                      out_indices=(3, )),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=768)))
    ours, _ = lr_and_wd(model, 'ConvNeXtLRDecayConstructor',
                        dict(decay_rate=0.5), lr=1.)
    # num_layers defaults to 6 for tiny: N = 8
    assert ours['head.fc.weight'] == (1., 0.05)
    assert ours['backbone.stages.2.8.pwconv1.weight'][0] == \
        pytest.approx(0.5**(8 - (3 + 8 // 3) - 1))
    assert ours['backbone.downsample_layers.0.0.weight'][0] == \
        pytest.approx(0.5**7)


def test_log_has_one_line_per_group():
    model = upernet('tiny')
    with captured_log() as log:
        _, wrapper = lr_and_wd(model, 'ConvNeXtLRDecayConstructor',
                               dict(decay_rate=0.9, decay_type='stage_wise',
                                    num_layers=6))
    out = '\n'.join(log)
    lines = [l for l in out.splitlines() if 'lr_scale' in l]
    # ids 0 (downsampling), 1-4 (stages), 7 (the rest); decay and no_decay
    assert len(lines) == len(wrapper.optimizer.param_groups) == 12
    assert any('layer_0_decay' in l and 'lr_scale 0.478297' in l
               for l in lines)
    assert 'set param' not in out


@pytest.mark.parametrize('cfg,message', [
    (dict(decay_type='layer_wise'), 'needs paramwise_cfg.decay_rate'),
    (dict(decay_rate=0.9, decay_type='group_wise'),
     "decay_type='group_wise'; valid: layer_wise, stage_wise, block_wise"),
    (dict(decay_rate=0.9, decay_type='block_wise', num_layers=12),
     r'num_layers=12 is too small.*num_layers >= 18'),
    (dict(decay_rate=0.9, grn_weight_decay='yes'),
     r"grn_weight_decay='yes': True or False"),
    (dict(decay_rate=-0.7), r'decay_rate=-0.7: it must be a number in'),
    (dict(decay_rate=0.), r'decay_rate=0.0: it must be a number in'),
    (dict(decay_rate=1.5), r'decay_rate=1.5: it must be a number in'),
    (dict(decay_rate=0.7, num_layers=0), r'num_layers=0 is too small.*'
     r'num_layers >= 6'),
    (dict(decay_rate=0.7, num_layers=3), r'num_layers=3 is too small'),
    (dict(decay_rate=0.7, decay_type='stage_wise', num_layers=3),
     r'num_layers >= 4'),
])
def test_bad_paramwise_cfg(cfg, message):
    with pytest.raises(ValueError, match=message):
        lr_and_wd(upernet('tiny'), 'ConvNeXtLRDecayConstructor', cfg)


def test_num_layers_must_cover_the_deepest_block():
    # depth 27 needs 12: with 11, stage-2 blocks 24-26 would outrank the head
    with pytest.raises(ValueError, match='num_layers >= 12'):
        lr_and_wd(upernet('small'), 'ConvNeXtLRDecayConstructor',
                  dict(decay_rate=0.9, num_layers=11))
    ours, _ = lr_and_wd(upernet('small'), 'ConvNeXtLRDecayConstructor',
                        dict(decay_rate=0.9), lr=1.)
    assert max(lr for lr, _ in ours.values()) == 1.


def test_non_convnext_backbone_names_the_constructor_to_use():
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    vit = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='VisionTransformer', arch='b', img_size=32,
                      patch_size=16),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=768)))
    with pytest.raises(ValueError, match='VisionTransformer.*'
                       'LearningRateDecayOptimWrapperConstructor'):
        lr_and_wd(vit, 'ConvNeXtLRDecayConstructor', dict(decay_rate=0.9))


def mask_rcnn_v2(arch, mmpretrain_backbone=False):
    """mmdet's Mask R-CNN on a ConvNeXt V2 backbone: ours, or mmpretrain's
    as mmdet's ConvNeXt-V2 project config builds it."""
    init_default_scope('mmdet')
    import mmpretrain.models  # noqa: F401  (registers mmpretrain.ConvNeXt)
    from mmdet.registry import MODELS
    cfg = get_config('mmdet::_base_/models/mask-rcnn_r50_fpn.py')
    cfg.model.backbone = dict(
        type='mmpretrain.ConvNeXt' if mmpretrain_backbone else 'ConvNeXt',
        arch=arch, use_grn=True, layer_scale_init_value=0.)
    if mmpretrain_backbone:
        cfg.model.backbone.update(out_indices=[0, 1, 2, 3],
                                  gap_before_final_norm=False)
    cfg.model.neck.in_channels = list(ARCH_SETTINGS[arch]['channels'])
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('mmpretrain_backbone', [False, True])
def test_v2_groups_match_mmdets_constructor(mmpretrain_backbone):
    """mmdet's ConvNeXt-V2 recipe (layer_wise, 0.95, 12 layers: the V2
    paper's group-wise decay) on a depth-27 V2 model: every parameter's lr
    and weight decay as mmdet's constructor gives them; GRN undecayed, and
    decayed with grn_weight_decay=True."""
    model = mask_rcnn_v2('small', mmpretrain_backbone)
    cfg = dict(decay_rate=0.95, decay_type='layer_wise', num_layers=12)
    ref, _ = lr_and_wd(model, 'LearningRateDecayOptimizerConstructor', cfg)
    ours, _ = lr_and_wd(model, 'ConvNeXtLRDecayConstructor', cfg)
    assert set(ours) == set(ref)
    for name in ref:
        assert ours[name] == pytest.approx(ref[name], rel=1e-12), name
    grn = [n for n in ours if '.grn.' in n]
    assert len(grn) == 2 * 36 and all(ours[n][1] == 0. for n in grn)
    assert len({lr for lr, _ in ours.values()}) == 14  # 0..12 and heads
    decayed, _ = lr_and_wd(model, 'ConvNeXtLRDecayConstructor',
                           dict(cfg, grn_weight_decay=True))
    for name in ours:
        wd = 0.05 if name in grn else ours[name][1]
        assert decayed[name] == (ours[name][0], wd), name


def test_block_wise_is_the_v2_authors_single_rule():
    """Every block its own layer (the V2 authors' default fine-tuning
    decay): atto's depths (2, 2, 6, 2) give 12 layers."""
    model = mask_rcnn_v2('atto')
    table, _ = lr_and_wd(model, 'ConvNeXtLRDecayConstructor',
                         dict(decay_rate=0.8, decay_type='block_wise'),
                         lr=1.)
    scale = {n: lr for n, (lr, _) in table.items()}
    expected = {
        'backbone.downsample_layers.0.0.weight': 0.8**12,  # id 1
        'backbone.stages.0.0.dwconv.weight': 0.8**12,  # id 1
        'backbone.stages.0.1.pwconv1.weight': 0.8**11,  # id 2
        'backbone.downsample_layers.2.1.weight': 0.8**8,  # id 5
        'backbone.stages.2.3.grn.gamma': 0.8**5,  # id 2 + 2 + 3 + 1
        'backbone.stages.3.1.pwconv2.weight': 0.8**1,  # id 12
        'backbone.norm3.weight': 1.,  # not a stage: id 13
        'neck.fpn_convs.0.conv.weight': 1.,
    }
    for name, value in expected.items():
        assert scale[name] == pytest.approx(value, rel=1e-12), name
    assert len(set(scale.values())) == 13
