# Table 6, V2-B FCMAE (52.9 box / 46.6 mask): from the FCMAE pre-training
# weights, no ImageNet fine-tuning. Drop path 0.4 as mmdet's V2-B config.
_base_ = './_base_/mask_rcnn_convnextv2_fpn_lsj_3x_coco.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_base_1k_224_fcmae.pt')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
