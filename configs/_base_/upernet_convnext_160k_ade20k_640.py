# ADE20K at 640x640 crops (test scale 2560x640) for the ImageNet-22K models.
_base_ = [
    'mmseg::_base_/datasets/ade20k_640x640.py', './upernet_convnext_160k.py'
]
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
train_dataloader = dict(batch_size=2)
tta_pipeline = {{_base_.tta_pipelines.crop640}}
