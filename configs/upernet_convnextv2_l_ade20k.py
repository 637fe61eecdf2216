# Table 7, V2-L FCMAE (53.7 mIoU): from the FCMAE weights fine-tuned on
# ImageNet-1K, which the paper found better than the raw FCMAE ones.
# Drop path 0.4 as V1's UperNet L.
_base_ = './_base_/upernet_convnextv2_160k_ade20k.py'
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_large_1k_224_ema.pt')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
