# UperNet with a ConvNeXt backbone on the released 160k-iteration recipe:
# AdamW with stage-wise lr decay 0.9, 1500 warm-up iterations then poly decay
# to 0, mixed precision. The dataset bases add crops, test and TTA settings;
# leaf configs set the arch, drop path, channels, checkpoint and lr.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)
# checkpoints written whole, old ones removed only after their successor
default_hooks = dict(checkpoint=dict(type='convnext_mm.SafeCheckpointHook'))
# our pre-flight (data, model, checkpoints) in mmdet's/mmseg's/mim's tools too
runner_type = 'convnext_mm.PreflightRunner'

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        out_indices=(0, 1, 2, 3),
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained')),
    decode_head=dict(channels=512, pool_scales=(1, 2, 3, 6), num_classes=150),
    auxiliary_head=dict(
        in_index=2, channels=256, num_classes=150,
        loss_decode=dict(loss_weight=0.4)))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    constructor='ConvNeXtLRDecayConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'),
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
        end=1500),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        begin=1500,
        end=160000,
        by_epoch=False)
]
# 16 images per step (8 GPUs x 2); fewer scale the lr linearly
auto_scale_lr = dict(enable=True, base_batch_size=16)


# multi-scale + flip test (tools/test.py --tta) as the paper's mmseg 0.x ran
# it: ratios of the test scale (mmseg 1.x's dataset base scales the raw image
# instead), softmax scores averaged by mmseg's SegTTAModel
def _tta_pipeline(test_scale, ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)):
    return [
        dict(type='LoadImageFromFile', backend_args=None),
        dict(
            type='TestTimeAug',
            transforms=[
                [
                    dict(
                        type='Resize',
                        scale=(int(test_scale[0] * r),
                               int(test_scale[1] * r)),
                        keep_ratio=True) for r in ratios
                ],
                [
                    dict(type='RandomFlip', prob=0.,
                         direction='horizontal'),
                    dict(type='RandomFlip', prob=1., direction='horizontal')
                ],
                [dict(type='LoadAnnotations', reduce_zero_label=True)],
                [dict(type='PackSegInputs')],
            ])
    ]


# ConvNeXt V2's (its appendix A.4): 0.75-1.25 of the test scale
_v2_ratios = (0.75, 0.875, 1.0, 1.125, 1.25)
tta_pipelines = dict(
    crop512=_tta_pipeline((2048, 512)), crop640=_tta_pipeline((2560, 640)),
    v2_crop512=_tta_pipeline((2048, 512), _v2_ratios),
    v2_crop640=_tta_pipeline((2560, 640), _v2_ratios))
