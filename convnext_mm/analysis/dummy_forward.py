"""The forward passes the paper's FLOPs were counted on, for mmdet 3.x,
mmseg 1.x and mmpretrain 1.x models."""
from typing import Callable, Tuple

import torch


def _shapes_only_roi_extractors(roi_head) -> None:
    """On the meta device (shapes only, no data): RoI extractors give
    empty features of their output shape (mmcv's RoIAlign has no meta
    kernel; its work is not counted)."""
    for name in ('bbox_roi_extractor', 'mask_roi_extractor'):
        extractors = getattr(roi_head, name, None)
        if extractors is None:
            continue
        for extractor in (extractors if isinstance(
                extractors, torch.nn.ModuleList) else [extractors]):
            size = extractor.roi_layers[0].output_size

            def forward(feats, rois, roi_scale_factor=None,
                        channels=extractor.out_channels, size=size):
                return feats[0].new_empty(rois.shape[0], channels, *size)

            extractor.forward = forward


def detector_forward(model, shape: Tuple[int, int]) -> Callable[[], None]:
    """mmdet 2.x's ``forward_dummy``: backbone, neck, RPN head, the box
    head(s) on 1000 proposals and the mask head(s) on the first 100.

    (mmdet 3.x's tensor mode runs the masks on all 1000: 2171.5G instead of
    741G for Cascade Mask R-CNN T.)
    """
    from mmdet.models.roi_heads import CascadeRoIHead
    from mmdet.structures.bbox import bbox2roi
    h, w = shape
    image = torch.randn(1, 3, h, w)
    gen = torch.Generator(device='cpu').manual_seed(0)
    # mmdet 2.x drew the boxes from randn; mmcv's CPU RoIAlign refuses
    # negative sizes, and box coordinates do not change the count
    scale = torch.tensor([w, h], device='cpu') / 2
    corner = torch.rand(1000, 2, generator=gen, device='cpu') * scale
    size = 1 + torch.rand(1000, 2, generator=gen, device='cpu') * scale
    rois = bbox2roi([torch.cat([corner, corner + size], 1)])

    if image.is_meta:
        rois = rois.to('meta')
        _shapes_only_roi_extractors(model.roi_head)

    def forward():
        feats = model.extract_feat(image)
        model.rpn_head(feats)
        head = model.roi_head
        if isinstance(head, CascadeRoIHead):
            for stage in range(head.num_stages):
                head._bbox_forward(stage, feats, rois)
            for stage in range(head.num_stages):
                head._mask_forward(stage, feats, rois[:100])
        else:
            head._bbox_forward(feats, rois)
            if head.with_mask:
                head._mask_forward(feats, rois[:100])

    return forward


def segmentor_forward(model, shape: Tuple[int, int]) -> Callable[[], None]:
    """mmseg 0.x's ``forward_dummy``: backbone and decode head (the
    auxiliary head is training-only)."""
    image = torch.randn(1, 3, *shape)
    return lambda: model._forward(image)


def classifier_forward(model, shape: Tuple[int, int]) -> Callable[[], None]:
    """Backbone, neck and classification head."""
    image = torch.randn(1, 3, *shape)
    return lambda: model(image, mode='tensor')


FORWARDS = {
    'mmdet': detector_forward,
    'mmseg': segmentor_forward,
    'mmpretrain': classifier_forward,
}
