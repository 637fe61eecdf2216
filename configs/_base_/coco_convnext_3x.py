# The released COCO 3x recipe shared by every ConvNeXt detector config:
# multi-scale + crop training, 36 epochs with lr steps at 27 and 33, AdamW with
# layer-wise lr decay, mixed precision, 16 images per step (8 GPUs x 2).
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)
# checkpoints written whole, old ones removed only after their successor
default_hooks = dict(checkpoint=dict(type='convnext_mm.SafeCheckpointHook'))
# our pre-flight (data, model, checkpoints) in mmdet's/mmseg's/mim's tools too
runner_type = 'convnext_mm.PreflightRunner'

short_sides = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(1333, s) for s in short_sides],
                    keep_ratio=True)
            ],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(1333, 400), (1333, 500), (1333, 600)],
                    keep_ratio=True),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True),
                dict(
                    type='RandomChoiceResize',
                    scales=[(1333, s) for s in short_sides],
                    keep_ratio=True)
            ],
        ]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='ConvNeXtLRDecayConstructor',
    paramwise_cfg=dict(decay_type='layer_wise'),
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        lr=2e-4,
        betas=(0.9, 0.999),
        weight_decay=0.05))
# fewer GPUs (or images per GPU) than 8 x 2 scale the lr linearly
auto_scale_lr = dict(enable=True, base_batch_size=16)

# multi-scale + flip test (tools/test.py --tta); mmdet 3.3's own TTA model
# refuses masks, convnext_mm's merges them
tta_model = dict(
    type='convnext_mm.InstanceSegTTAModel',
    tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale=(1333, s), keep_ratio=True)
                for s in (640, 800, 960)
            ],
            [dict(type='RandomFlip', prob=1.),
             dict(type='RandomFlip', prob=0.)],
            [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
            [
                dict(
                    type='PackDetInputs',
                    meta_keys=('img_id', 'img_path', 'ori_shape',
                               'img_shape', 'scale_factor', 'flip',
                               'flip_direction'))
            ],
        ])
]
