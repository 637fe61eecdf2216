"""What a deployment does with the exported graph's outputs, in tensors.

A detector's graph gives ``dets`` (boxes in the pre-processed image, and
scores), ``labels`` and ``masks`` (each instance's 28x28 mask in its box).
mmdeploy's ``End2EndModel`` pastes each mask into the image with one
``grid_sample`` over the whole image *per box*, in a Python loop: on a tiny
model that is about 2 s against 0.6 s for the graph. The paste is
separable - its sampling grid's x depends only on the column and y only on
the row - so here all masks are pasted at once as two matrix products,
``Wy @ mask @ Wx^T``, with ``Wx``/``Wy`` the bilinear weights that
``grid_sample(align_corners=False)`` with zero padding gives each image
row/column (``max(0, 1 - |p - j|)`` for the sampled position ``p``); the
values are those of mmdeploy's paste up to float rounding.
"""
import numpy as np
import torch
from mmengine.structures import InstanceData

MASK_THR = 0.5  # mmdeploy's and mmdet's binarisation
CHUNK = 32  # masks pasted per product: bounds memory to CHUNK x H x W


def _weights(lo: torch.Tensor, hi: torch.Tensor, size: int,
             cells: int) -> torch.Tensor:
    """[N, size, cells]: the bilinear weight of each mask cell for each
    image pixel centre, for boxes spanning [lo, hi) along this axis."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    span = (hi - lo)[:, None]
    # grid_sample's normalised coordinate, mapped to the mask's pixels
    # (align_corners=False); a box of zero extent samples the centre, as
    # mmdeploy's (its inf coordinates are set to 0)
    grid = torch.where(span != 0, (centres[None] - lo[:, None]) /
                       span.where(span != 0, torch.ones_like(span)) * 2 - 1,
                       torch.zeros(()))
    pos = ((grid + 1) * cells - 1) / 2
    cell = torch.arange(cells, dtype=torch.float32)
    return (1 - (pos[..., None] - cell).abs()).clamp(min=0)


def paste_probabilities(masks: torch.Tensor, boxes: torch.Tensor,
                        height: int, width: int) -> torch.Tensor:
    """Float [N, height, width] mask probabilities in the image from
    [N, h, w] probabilities in their [N, 4] boxes (x0, y0, x1, y1)."""
    out = torch.zeros(len(masks), height, width)
    masks, boxes = masks.float(), boxes.float()
    for start in range(0, len(masks), CHUNK):
        part = slice(start, start + CHUNK)
        wy = _weights(boxes[part, 1], boxes[part, 3], height,
                      masks.shape[1])
        wx = _weights(boxes[part, 0], boxes[part, 2], width, masks.shape[2])
        out[part] = wy @ masks[part] @ wx.transpose(1, 2)
    return out


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int,
                width: int) -> torch.Tensor:
    """Boolean [N, height, width] masks from [N, h, w] mask probabilities
    and their [N, 4] boxes (x0, y0, x1, y1) in the image."""
    out = torch.zeros(len(masks), height, width, dtype=torch.bool)
    for start in range(0, len(masks), CHUNK):
        part = slice(start, start + CHUNK)
        out[part] = paste_probabilities(masks[part], boxes[part], height,
                                        width) >= MASK_THR
    return out


def detections(outputs, meta: dict,
               probabilities: bool = False) -> InstanceData:
    """The graph's ``dets``, ``labels`` (and ``masks``) for one image as
    mmdet's ``pred_instances`` in the original image: zero-score padding
    dropped, boxes scaled back, masks pasted (binary, or with
    ``probabilities`` their probabilities before the threshold)."""
    dets, labels = (torch.as_tensor(np.asarray(o))[0] for o in outputs[:2])
    keep = dets[:, 4] > 0
    boxes = dets[keep, :4] / torch.tensor(
        list(meta['scale_factor']) * 2, dtype=torch.float32)
    pred = InstanceData(bboxes=boxes, scores=dets[keep, 4],
                        labels=labels[keep].long())
    if len(outputs) > 2:
        height, width = meta['ori_shape'][:2]
        masks = torch.as_tensor(np.asarray(outputs[2]))[0][keep]
        paste = paste_probabilities if probabilities else paste_masks
        pred.masks = paste(masks, boxes, height, width)
    return pred
