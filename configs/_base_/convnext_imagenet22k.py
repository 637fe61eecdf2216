# ImageNet-22K pre-training: the ImageNet-1K recipe over 21841 classes for 90
# epochs with 5 warm-up epochs, no EMA and no validation.
_base_ = './convnext_imagenet.py'
model = dict(head=dict(num_classes=21841))
data_preprocessor = dict(num_classes=21841)
train_dataloader = dict(
    batch_size=32,
    dataset=dict(
        type='ImageNet21k', data_root='data/imagenet21k', split='train'))
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-6,
        by_epoch=True,
        begin=5,
        end=90,
        convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=90, val_interval=10**6)
custom_hooks = []
