# Table 7, V2-H "FCMAE, 22K ft" at 640x640 (57.0 mIoU): from the FCMAE
# weights fine-tuned on ImageNet-22K then 1K at 512 (our choice of the two
# 22K-fine-tuned H releases: the one nearest the 640 crops). Drop path 0.4.
_base_ = './_base_/upernet_convnextv2_160k_ade20k_640.py'
model = dict(
    backbone=dict(
        arch='huge',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im22k/convnextv2_huge_22k_512_ema.pt')),
    decode_head=dict(in_channels=[352, 704, 1408, 2816]),
    auxiliary_head=dict(in_channels=1408))
