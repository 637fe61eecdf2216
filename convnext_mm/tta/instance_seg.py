"""Multi-scale + flip test for instance segmentation (boxes and masks)."""
import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from ..registry import MODELS

_MASK_FLIP_DIMS = {'horizontal': (-1, ), 'vertical': (-2, ),
                   'diagonal': (-2, -1)}


@MODELS.register_module()
class InstanceSegTTAModel(DetTTAModel):
    """Merge instance predictions over augmented views of one image.

    Each view's boxes and masks, already rescaled to the original image by
    the detector, are flipped back where the view was flipped; the union of
    all views then goes through class-aware NMS (``tta_cfg.nms``) and the
    ``tta_cfg.max_per_img`` best are kept, each with its own mask. mmdet 3.3's
    ``DetTTAModel`` does the same for boxes but refuses masks.

    With a single unflipped view and the detector's own NMS threshold the
    result is the plain test's.
    """

    def _merge_single_sample(self, data_samples):
        if data_samples[0].pred_instances.get('masks') is None:
            return super()._merge_single_sample(data_samples)
        preds = [sample.pred_instances for sample in data_samples]
        # un-flips each view's boxes as mmdet's box-only TTA does
        bboxes = self.merge_aug_bboxes([p.bboxes for p in preds], None,
                                       [s.metainfo for s in data_samples])
        masks = torch.cat([
            p.masks.flip(_MASK_FLIP_DIMS[s.flip_direction])
            if s.metainfo.get('flip') else p.masks
            for p, s in zip(preds, data_samples)
        ])
        scores = torch.cat([p.scores for p in preds])
        labels = torch.cat([p.labels for p in preds])
        merged = DetDataSample(metainfo=data_samples[0].metainfo)
        if bboxes.numel() == 0:
            merged.pred_instances = data_samples[0].pred_instances
            return merged
        dets, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        keep = keep[:self.tta_cfg.max_per_img]
        merged.pred_instances = InstanceData(
            bboxes=dets[:len(keep), :4],
            scores=dets[:len(keep), 4],
            labels=labels[keep],
            masks=masks[keep])
        return merged
