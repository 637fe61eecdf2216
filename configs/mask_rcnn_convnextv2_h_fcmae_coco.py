# Table 6, V2-H FCMAE (55.7 / 48.9): from the FCMAE pre-training weights.
# Drop path 0.5: our choice, as V2-L.
_base_ = './_base_/mask_rcnn_convnextv2_fpn_lsj_3x_coco.py'
model = dict(
    backbone=dict(
        arch='huge',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_huge_1k_224_fcmae.pt')),
    neck=dict(in_channels=[352, 704, 1408, 2816]))
