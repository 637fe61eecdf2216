# ConvNeXt (convnext_mm's backbone) in mmpretrain's ImageClassifier, on the
# released ImageNet-1K recipe: 300 epochs, AdamW lr 4e-3 at 4096 images per
# step, 20 warm-up epochs then cosine, wd 0.05 (none on norms, biases and
# layer scales), RandAugment m9/mstd 0.5, Mixup 0.8, CutMix 1.0, random
# erasing 0.25, label smoothing 0.1, EMA. Leaf configs set arch and drop path.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)
# checkpoints written whole, old ones removed only after their successor
default_hooks = dict(checkpoint=dict(type='convnext_mm.SafeCheckpointHook'))
# our pre-flight (data, model, checkpoints) in mmdet's/mmseg's/mim's tools too
runner_type = 'convnext_mm.PreflightRunner'

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='convnext_mm.ConvNeXt',
        out_indices=(3, ),
        gap_before_final_norm=True,
        layer_scale_init_value=1e-6),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=None),
    init_cfg=dict(
        type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]))

train_dataloader = dict(batch_size=128)
optim_wrapper = dict(optimizer=dict(lr=4e-3), clip_grad=None)
param_scheduler = [
    # from (almost) 0, as the release's warm-up starts at 0
    dict(
        type='LinearLR',
        start_factor=1e-6,
        by_epoch=True,
        end=20,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-6,
        by_epoch=True,
        begin=20,
        end=300,
        convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=300)
# decay 0.9999 per iteration; validation uses the averaged weights
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
auto_scale_lr = dict(enable=True, base_batch_size=4096)
