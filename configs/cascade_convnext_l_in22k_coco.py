_base_ = './_base_/cascade_mask_rcnn_convnext_fpn_3x_coco.py'
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.7,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(
    optimizer=dict(lr=0.0001),
    paramwise_cfg=dict(decay_rate=0.7, num_layers=12))
