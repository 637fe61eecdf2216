# Mask R-CNN + FPN with a ConvNeXt backbone on the COCO 3x recipe. Leaf configs
# set the arch, drop path, FPN input channels, init checkpoint and lr decay.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './coco_convnext_3x.py',
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        out_indices=(0, 1, 2, 3),
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained')))
