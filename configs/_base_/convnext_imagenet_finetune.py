# ImageNet-1K fine-tuning at 224 (from ImageNet-22K, or at a new resolution):
# 30 epochs, lr 5e-5 at 512 images per step, wd 1e-8, no warm-up, layer-wise
# lr decay over 12 layers, no Mixup/CutMix, a fresh head scaled by 0.001.
_base_ = './convnext_imagenet.py'
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained')),
    head=dict(
        # trunc-normal std 0.02 x head_init_scale 0.001
        init_cfg=dict(
            _delete_=True, type='TruncNormal', layer='Linear', std=2e-5,
            bias=0.)),
    train_cfg=dict(_delete_=True))
train_dataloader = dict(batch_size=32)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='ConvNeXtLRDecayConstructor',
    paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise',
                       num_layers=12),
    optimizer=dict(
        type='AdamW', lr=5e-5, weight_decay=1e-8, eps=1e-8,
        betas=(0.9, 0.999)))
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-6,
        by_epoch=True,
        begin=0,
        end=30,
        convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=30)
custom_hooks = []
auto_scale_lr = dict(enable=True, base_batch_size=512)
