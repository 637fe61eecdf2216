# Mask R-CNN + FPN with a ConvNeXt V2 backbone on the V2 paper's COCO recipe
# (its appendix A.3; mmdet's ConvNeXt-V2 project config): large-scale jitter
# at 1024x1024 (scale 0.1-2.0), 3x, 32 images per step (8 GPUs x 4), AdamW
# 1e-4 with layer-wise decay 0.95 over 12 groups, 1000 warm-up iterations,
# soft-NMS in the R-CNN test. Leaf configs set the arch, drop path, FPN
# input channels and the FCMAE checkpoint.
_base_ = './mask_rcnn_convnext_fpn_3x_coco.py'
image_size = (1024, 1024)
model = dict(
    backbone=dict(use_grn=True, layer_scale_init_value=0.),
    test_cfg=dict(rcnn=dict(nms=dict(type='soft_nms'))))
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size,
         recompute_bbox=True, allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
train_dataloader = dict(batch_size=4, dataset=dict(pipeline=train_pipeline))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True,
         milestones=[27, 33], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=1e-4),
                     paramwise_cfg=dict(decay_rate=0.95, num_layers=12))
auto_scale_lr = dict(base_batch_size=32)
