# ADE20K at 512x512 crops (test scale 2048x512) for the ConvNeXt UperNets.
_base_ = ['mmseg::_base_/datasets/ade20k.py', './upernet_convnext_160k.py']
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
train_dataloader = dict(batch_size=2)
tta_pipeline = {{_base_.tta_pipelines.crop512}}
