# Table 7, V2-H FCMAE (55.0 mIoU): from the FCMAE weights fine-tuned on
# ImageNet-1K, which the paper found better than the raw FCMAE ones.
# Drop path 0.4 (our choice, as B and L: the top of the sweep).
_base_ = './_base_/upernet_convnextv2_160k_ade20k.py'
model = dict(
    backbone=dict(
        arch='huge',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_huge_1k_224_ema.pt')),
    decode_head=dict(in_channels=[352, 704, 1408, 2816]),
    auxiliary_head=dict(in_channels=1408))
