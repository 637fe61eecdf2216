# The V2 UperNet recipe of upernet_convnextv2_160k_ade20k.py at 640x640
# crops (test scale 2560x640).
_base_ = './upernet_convnext_160k_ade20k_640.py'
model = dict(backbone=dict(use_grn=True, layer_scale_init_value=0.))
optim_wrapper = dict(
    paramwise_cfg=dict(decay_type='layer_wise', num_layers=12))
tta_pipeline = {{_base_.tta_pipelines.v2_crop640}}
