# UperNet with a ConvNeXt V2 backbone on ADE20K at 512 (the V2 paper's
# appendix A.4): V1's recipe (160k iterations, 16 images, AdamW wd 0.05, lr
# 1e-4) with GRN, layer-wise lr decay 0.9 over 12 groups (the paper's
# "group-wise" for B/L; 0.9 is in its sweep and V1's rate) and its
# multi-scale test, 0.75-1.25 of 2048x512.
_base_ = './upernet_convnext_160k_ade20k.py'
model = dict(backbone=dict(use_grn=True, layer_scale_init_value=0.))
optim_wrapper = dict(
    paramwise_cfg=dict(decay_type='layer_wise', num_layers=12))
tta_pipeline = {{_base_.tta_pipelines.v2_crop512}}
