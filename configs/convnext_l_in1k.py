_base_ = './_base_/convnext_imagenet.py'
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.5),
    head=dict(in_channels=1536))
