_base_ = './_base_/convnext_imagenet_finetune_384.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth')),
    head=dict(in_channels=1024))
