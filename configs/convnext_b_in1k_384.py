_base_ = './_base_/convnext_imagenet_finetune_384.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.8,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224_ema.pth')),
    head=dict(in_channels=1024))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))
