_base_ = './_base_/convnext_imagenet22k.py'
model = dict(
    backbone=dict(
        arch='xlarge',
        drop_path_rate=0.2),
    head=dict(in_channels=2048))
