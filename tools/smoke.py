#!/usr/bin/env python
"""Smoke run: ConvNeXt inside a Cascade Mask R-CNN and an UperNet, one CPU
forward pass each on a random image, printing the output shapes.

    python tools/smoke.py [--arch tiny] [--size 512]
"""
import time
import warnings

import _tool  # noqa: E402  (first: checkout on sys.path, warnings)

import torch  # noqa: E402
from mmengine.hub import get_config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.registry import init_default_scope

import convnext_mm  # noqa: F401,E402  (registers ConvNeXt)
from convnext_mm.models import ARCH_SETTINGS  # noqa: E402


def backbone_cfg(arch):
    return dict(
        type='ConvNeXt',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0)


def run_detector(arch, size):
    from mmdet.structures import DetDataSample
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    cfg = get_config('mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py')
    cfg.model.backbone = backbone_cfg(arch)
    cfg.model.neck.in_channels = list(ARCH_SETTINGS[arch]['channels'])
    model = MODELS.build(cfg.model).eval()
    model.init_weights()
    h, w = size, size * 4 // 3
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1., 1.))
    data = dict(inputs=[image], data_samples=[DetDataSample(metainfo=meta)])
    with torch.no_grad():
        batch = model.data_preprocessor(data, False)
        feats = model.backbone(batch['inputs'])
        pyramid = model.neck(feats)
        result = model.test_step(data)[0].pred_instances
    print(f'Cascade Mask R-CNN + ConvNeXt-{arch}, input {tuple(image.shape)}')
    for i, f in enumerate(feats):
        print(f'  backbone stage {i}  {tuple(f.shape)}')
    for i, f in enumerate(pyramid):
        print(f'  FPN P{i + 2}            {tuple(f.shape)}')
    print(f'  boxes {tuple(result.bboxes.shape)}, scores '
          f'{tuple(result.scores.shape)}, masks {tuple(result.masks.shape)}')


def run_segmentor(arch, size):
    from mmseg.structures import SegDataSample
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    cfg = get_config('mmseg::_base_/models/upernet_r50.py')
    cfg.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.pretrained = None
    cfg.model.backbone = backbone_cfg(arch)
    channels = list(ARCH_SETTINGS[arch]['channels'])
    cfg.model.decode_head.in_channels = channels
    cfg.model.decode_head.num_classes = 150
    cfg.model.decode_head.norm_cfg = cfg.norm_cfg
    cfg.model.auxiliary_head.in_channels = channels[2]
    cfg.model.auxiliary_head.num_classes = 150
    cfg.model.auxiliary_head.norm_cfg = cfg.norm_cfg
    cfg.model.data_preprocessor.size = (size, size)
    model = MODELS.build(cfg.model).eval()
    model.init_weights()
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    meta = dict(img_shape=(size, size), ori_shape=(size, size),
                pad_shape=(size, size))
    data = dict(inputs=[image], data_samples=[SegDataSample(metainfo=meta)])
    with torch.no_grad():
        batch = model.data_preprocessor(data, False)
        feats = model.extract_feat(batch['inputs'])
        result = model.test_step(data)[0]
    print(f'UperNet + ConvNeXt-{arch}, input {tuple(image.shape)}')
    for i, f in enumerate(feats):
        print(f'  backbone stage {i}  {tuple(f.shape)}')
    print(f'  seg_logits {tuple(result.seg_logits.data.shape)}, pred_sem_seg '
          f'{tuple(result.pred_sem_seg.data.shape)}')


def main():
    parser = _tool.parser(__doc__)
    parser.add_argument('--arch', default='tiny', choices=list(ARCH_SETTINGS))
    parser.add_argument('--size', type=int, default=512,
                        help='image height (the detector gets 4:3 images)')
    args = parser.parse_args()
    # mmengine logs every parameter's init at INFO level
    MMLogger.get_instance('smoke', log_level='WARNING')
    warnings.filterwarnings('ignore', category=UserWarning)
    torch.manual_seed(0)
    for job in (run_detector, run_segmentor):
        start = time.time()
        job(args.arch, args.size)
        print(f'  ({time.time() - start:.1f} s on {torch.get_num_threads()} '
              'CPU threads)')


if __name__ == '__main__':
    main()
