# Table 6, V2-L FCMAE (54.4 / 47.7): from the FCMAE pre-training weights.
# Drop path 0.5: our choice, the top of the paper's sweep (0.2-0.5); V1's
# detection recipes raise it with model size.
_base_ = './_base_/mask_rcnn_convnextv2_fpn_lsj_3x_coco.py'
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_large_1k_224_fcmae.pt')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
