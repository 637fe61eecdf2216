"""What mmdeploy 1.3.1 lacks for our models, added through its rewriter
registry for the ONNX Runtime backend (records with a backend take
precedence over mmdeploy's default ones).

- Detectors: the graph takes the image unpadded and pads it itself, so
  that boxes are clipped to the image as in mmdet (mmdeploy's graph takes
  the padded tensor and clips to it).
- RoIAlign: mmdeploy's symbolic imports a helper torch 2.12 lacks;
  this one emits ONNX ``RoiAlign`` (opset >= 16, ``half_pixel`` for mmcv's
  ``aligned=True``) with standard ops only.
- RPN: mmdeploy runs one NMS over the proposals of all FPN levels; mmdet
  runs it per level (``batched_nms`` with the level as the class) and drops
  empty boxes first. Here each level is a class of one ONNX
  ``NonMaxSuppression``, as in mmdet.
- R-CNN box heads: mmdeploy gives every class of a RoI the box regressed
  for its top-scoring class; mmdet regresses each class's own box (the
  released heads are class-specific) before a per-class NMS. Here as mmdet.
- Cascade R-CNN: mmdeploy asserts class-agnostic regression between stages
  (mmdeploy issue #1896); the released heads are class-specific, so each
  proposal is refined by the offsets of its top-scoring class, as mmdet's
  ``regress_by_class`` does.
- Cascade masks: mmdeploy merges the stages' masks as the sigmoid of their
  mean logit; mmdet averages their probabilities. Here as mmdet.
- NMS: the forward of mmdeploy's NMS Function is kept out of the trace
  (torch 2.12's peephole pass fails on it).
- LayerNorm: mmdeploy decomposes it at every opset; at 17 torch's own
  symbolic gives ONNX ``LayerNormalization``.
- Adaptive average pooling (UperNet's pyramid pooling): mmdeploy swaps in
  ``avg_pool2d`` with kernel ``size // out``, which averages other windows
  than PyTorch whenever ``out`` does not divide the size; here it is exact.
- Segmentors: mmdeploy always exports whole-image inference; here the
  config's ``test_cfg.mode`` decides (``slide`` runs mmseg's own
  ``slide_inference``, unrolled for the fixed input size).
"""
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from mmdeploy.core import FUNCTION_REWRITER, SYMBOLIC_REWRITER
from mmdeploy.mmcv.ops.nms import ONNXNMSop
from mmdeploy.utils import get_ir_config, is_dynamic_shape

BACKEND = 'onnxruntime'
ONNX_INT64 = 7


@SYMBOLIC_REWRITER.register_symbolic('mmcv.ops.roi_align.__self__',
                                     backend=BACKEND)
def roi_align(g, input, rois, output_size, spatial_scale, sampling_ratio,
              pool_mode, aligned):
    """mmcv's RoIAlign as ONNX ``RoiAlign`` (opset 16+)."""
    ctx = SYMBOLIC_REWRITER.get_context()
    opset = get_ir_config(ctx.cfg).get('opset_version', 11)
    if opset < 16:
        raise ValueError(f'RoiAlign with aligned boxes needs opset >= 16, '
                         f'the deploy config asks for {opset}')

    def columns(index):
        return g.op('Gather', rois,
                    g.op('Constant', value_t=torch.tensor(index)), axis_i=1)

    batch_indices = g.op('Cast', columns(0), to_i=ONNX_INT64)
    return g.op(
        'RoiAlign', input, columns([1, 2, 3, 4]), batch_indices,
        output_height_i=output_size[0], output_width_i=output_size[1],
        spatial_scale_f=spatial_scale, sampling_ratio_i=sampling_ratio,
        mode_s=pool_mode,
        coordinate_transformation_mode_s='half_pixel'
        if aligned else 'output_half_pixel')


def _pad_to_divisor(image, preprocessor):
    """Pad at the bottom and right to the data pre-processor's size divisor
    with its pad value, as mmdet's ``DetDataPreprocessor`` does."""
    divisor = getattr(preprocessor, 'pad_size_divisor', 1)
    if divisor <= 1:
        return image
    h, w = image.shape[-2:]
    return F.pad(image, (0, (divisor - w % divisor) % divisor, 0,
                         (divisor - h % divisor) % divisor),
                 value=float(getattr(preprocessor, 'pad_value', 0)))


@FUNCTION_REWRITER.register_rewriter(
    'mmdet.models.detectors.two_stage.TwoStageDetector.forward',
    backend=BACKEND)
def two_stage_detector__forward(self, batch_inputs, data_samples=None,
                                mode='tensor', **kwargs):
    """The graph takes the resized, normalised image without padding, so
    that it knows the image's size: boxes are clipped to it (mmdeploy's
    rewrite clips to the padded input), and it pads as mmdet does."""
    ctx = FUNCTION_REWRITER.get_context()
    img_shape = torch._shape_as_tensor(batch_inputs)[2:]
    if not is_dynamic_shape(ctx.cfg):
        img_shape = [int(v) for v in img_shape]
    for sample in data_samples:
        # not set_metainfo: its deepcopy breaks the trace
        sample.set_field(name='img_shape', value=img_shape,
                         field_type='metainfo')
    x = self.extract_feat(_pad_to_divisor(batch_inputs,
                                          self.data_preprocessor))
    proposals = self.rpn_head.predict(x, data_samples, rescale=False)
    return self.roi_head.predict(x, proposals, data_samples, rescale=False)


@FUNCTION_REWRITER.register_rewriter(
    'mmdeploy.mmcv.ops.nms.ONNXNMSop.forward', backend=BACKEND)
def onnx_nms__forward(ctx, *args):
    """mmdeploy's NMS Function with its eager forward kept out of the
    trace: torch's peephole pass fails on the ops it would record
    (``IndexError: Argument passed to at() was not in the map``); the graph
    gets the Function's symbolic, ``NonMaxSuppression``, either way."""
    rewrite = FUNCTION_REWRITER.get_context()
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        return rewrite.origin_func(ctx, *args)
    finally:
        torch._C._set_tracing_state(state)


@SYMBOLIC_REWRITER.register_symbolic('layer_norm', is_pytorch=True,
                                     backend=BACKEND)
def layer_norm(g, *args):
    """torch's own opset-17 export, ``LayerNormalization`` (mmdeploy's
    replaces it with ReduceMean/Sub/Pow/Sqrt/Div at every opset)."""
    from torch.onnx import symbolic_opset17
    return symbolic_opset17.layer_norm(g, *args)


def _best(keep, boxes, scores, limit):
    """The boxes NMS kept (indices ``keep``), best score first, at most
    ``limit``: ``dets [1, K, 5]`` and their indices, as mmdet orders and
    cuts them after ``batched_nms``."""
    kept_scores, order = scores[keep].sort(descending=True)
    keep = keep[order][:limit]
    return torch.cat([boxes[keep], kept_scores[:limit, None]], 1)[None], keep


@FUNCTION_REWRITER.register_rewriter(
    'mmdet.models.dense_heads.rpn_head.RPNHead.predict_by_feat',
    backend=BACKEND)
def rpn_head__predict_by_feat(self, cls_scores, bbox_preds,
                              score_factors=None, batch_img_metas=None,
                              cfg=None, rescale=False, with_nms=True,
                              **kwargs):
    """Proposals of one image as mmdet makes them: the top ``nms_pre`` of
    each level, decoded and clipped, boxes no wider or taller than
    ``min_bbox_size`` dropped, NMS per level, the best ``max_per_img``.
    Returns ``(dets [1, K, 5], labels [1, K])`` as mmdeploy's heads do."""
    cfg = self.test_cfg if cfg is None else cfg
    assert cls_scores[0].shape[0] == 1, 'the exported graph takes one image'
    sizes = [s.shape[-2:] for s in cls_scores]
    priors = self.prior_generator.grid_priors(sizes,
                                              device=cls_scores[0].device)
    nms_pre = cfg.get('nms_pre', -1)
    boxes, scores, levels = [], [], []
    for level, (score, delta, prior) in enumerate(
            zip(cls_scores, bbox_preds, priors)):
        score = score[0].permute(1, 2, 0).reshape(-1, self.cls_out_channels)
        score = score.sigmoid() if self.use_sigmoid_cls else \
            score.softmax(-1)[:, :-1]
        score = score.reshape(-1)
        delta = delta[0].permute(1, 2, 0).reshape(-1,
                                                  self.bbox_coder.encode_size)
        if nms_pre > 0:
            # mmdeploy's rewrite of topk caps k at the level's size
            score, order = score.topk(nms_pre)
            delta, prior = delta[order], prior[order]
        # mmdeploy's rewrite of the decoder takes batched boxes
        boxes.append(self.bbox_coder.decode(
            prior[None], delta[None],
            max_shape=batch_img_metas[0]['img_shape'])[0])
        scores.append(score)
        levels.append(torch.full_like(score, level, dtype=torch.long))
    boxes, scores, levels = (torch.cat(boxes), torch.cat(scores),
                             torch.cat(levels))
    valid = torch.ones_like(scores, dtype=torch.bool)
    if cfg.get('min_bbox_size', -1) >= 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > cfg.min_bbox_size).all(dim=1)
    # one NMS class per level; scores lifted by 1 so that the threshold of
    # 0.5 keeps every valid box and drops the rest (and other levels')
    classes = torch.arange(len(cls_scores), device=levels.device)
    per_level = torch.where(
        (levels[:, None] == classes[None, :]) & valid[:, None],
        scores[:, None] + 1, torch.zeros_like(scores)[:, None])
    keep = ONNXNMSop.apply(boxes[None], per_level.t()[None],
                           cfg.max_per_img, cfg.nms.iou_threshold, 0.5)[:, 2]
    dets, keep = _best(keep, boxes, scores, cfg.max_per_img)
    return dets, torch.zeros_like(keep)[None]


@FUNCTION_REWRITER.register_rewriter(
    'mmdet.models.roi_heads.bbox_heads.bbox_head.BBoxHead.predict_by_feat',
    backend=BACKEND)
def bbox_head__predict_by_feat(self, rois, cls_scores, bbox_preds,
                               batch_img_metas, rcnn_test_cfg=None,
                               rescale=False):
    """Detections of one image as mmdet's ``multiclass_nms`` makes them:
    each class with its own regressed box (mmdeploy gives every class the
    box of the RoI's top class), NMS per class by mmcv's offset trick,
    the best ``max_per_img``. ``(dets [1, K, 5], labels [1, K])``."""
    cfg = rcnn_test_cfg
    assert rois.shape[0] == 1, 'the exported graph takes one image'
    scores = self.loss_cls.get_activation(cls_scores) \
        if self.custom_cls_channels else F.softmax(cls_scores, dim=-1)
    scores = scores[0, :, :self.num_classes]
    boxes = self.bbox_coder.decode(rois[..., 1:], bbox_preds,
                                   max_shape=batch_img_metas[0]['img_shape'])
    boxes = boxes[0].reshape(scores.shape[0], -1, 4).expand(
        -1, self.num_classes, -1).reshape(-1, 4)
    scores = scores.reshape(-1)
    labels = torch.arange(self.num_classes,
                          device=scores.device).repeat(rois.shape[1])
    # mmcv's batched_nms: classes apart by the largest candidate coordinate
    valid = scores > cfg.score_thr
    largest = torch.where(valid[:, None], boxes,
                          torch.zeros_like(boxes)).max()
    shifted = boxes + (labels.to(boxes) * (largest + 1))[:, None]
    keep = ONNXNMSop.apply(shifted[None], scores[None, None], 2**31 - 1,
                           cfg.nms.iou_threshold, cfg.score_thr)[:, 2]
    dets, keep = _best(keep, boxes, scores, cfg.max_per_img)
    return dets, labels[keep][None]


@FUNCTION_REWRITER.register_rewriter(
    'mmdet.models.roi_heads.cascade_roi_head.CascadeRoIHead.predict_bbox',
    backend=BACKEND)
def cascade_roi_head__predict_bbox(self, x, batch_img_metas,
                                   rpn_results_list, rcnn_test_cfg,
                                   rescale=False, **kwargs):
    """mmdet's cascade refinement for one image, class-specific or
    class-agnostic as each stage's head is; the last stage's head does the
    NMS (``bbox_head__predict_by_feat``)."""
    proposals = rpn_results_list[0][0, :, :4]
    rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals],
                     dim=1)
    img_shape = batch_img_metas[0]['img_shape']
    stage_scores = []
    for stage in range(self.num_stages):
        out = self._bbox_forward(stage, x, rois, **kwargs)
        cls_score, bbox_pred = out['cls_score'], out['bbox_pred']
        stage_scores.append(cls_score)
        if stage < self.num_stages - 1:
            head = self.bbox_head[stage]
            if head.custom_activation:
                cls_score = head.loss_cls.get_activation(cls_score)
            if not head.reg_class_agnostic:
                dim = head.bbox_coder.encode_size
                label = cls_score[:, :-1].argmax(dim=1)
                index = label[:, None] * dim + torch.arange(
                    dim, device=label.device)
                bbox_pred = bbox_pred.gather(1, index)
            boxes = head.bbox_coder.decode(rois[None, :, 1:], bbox_pred[None],
                                           max_shape=img_shape)[0]
            rois = torch.cat([rois[:, :1], boxes], dim=1)
    cls_scores = sum(stage_scores) / float(len(stage_scores))
    return self.bbox_head[-1].predict_by_feat(
        rois=rois[None], cls_scores=cls_scores[None],
        bbox_preds=bbox_pred[None], batch_img_metas=batch_img_metas,
        rcnn_test_cfg=rcnn_test_cfg, rescale=rescale)


@FUNCTION_REWRITER.register_rewriter(
    'mmdet.models.roi_heads.cascade_roi_head.CascadeRoIHead.predict_mask',
    backend=BACKEND)
def cascade_roi_head__predict_mask(self, x, batch_img_metas, results_list,
                                   rescale=False):
    """Each detection's mask probabilities in its box ([N, K, h, w], for
    its class) as mmdet merges the stages: the mean of their sigmoids
    (``merge_aug_masks``); the deployment pastes them."""
    dets, labels = results_list
    batch, num = dets.shape[:2]
    index = torch.arange(batch, device=dets.device).float().view(
        -1, 1, 1).expand(batch, num, 1)
    rois = torch.cat([index, dets[..., :4]], dim=-1).view(-1, 5)
    probs = sum(self._mask_forward(stage, x, rois)['mask_preds'].sigmoid()
                for stage in range(self.num_stages)) / self.num_stages
    if self.mask_head[-1].class_agnostic:
        probs = probs[:, 0]
    else:
        probs = probs[torch.arange(probs.shape[0], device=probs.device),
                      labels.view(-1)]
    return dets, labels, probs.reshape(batch, num, *probs.shape[-2:])


def _pooling_matrix(x, dim, out):
    """``[out, size]``: row ``i`` averages the window that adaptive average
    pooling gives output ``i`` (``floor(i * size / out)`` up to
    ``ceil((i + 1) * size / out)``), for a traced or a fixed size."""
    size = torch._shape_as_tensor(x)[dim] if torch.onnx.is_in_onnx_export() \
        else torch.tensor(x.shape[dim])
    pos = torch.arange(size, device=x.device).to(x.dtype)
    i = torch.arange(out, device=x.device).to(x.dtype)
    start = torch.floor(i * size / out)
    end = torch.ceil((i + 1) * size / out)
    window = (pos[None] >= start[:, None]) & (pos[None] < end[:, None])
    window = window.to(x.dtype)
    return window / window.sum(dim=1, keepdim=True)


@FUNCTION_REWRITER.register_rewriter(
    'torch.nn.functional.adaptive_avg_pool2d', backend=BACKEND)
def adaptive_avg_pool2d(input, output_size):
    """Adaptive average pooling as two matrix products (exact for any input
    size: mmdeploy's replacement by ``avg_pool2d`` with kernel
    ``size // out`` is not when ``out`` does not divide the size, as in
    UperNet's pyramid pooling of 1, 2, 3, 6)."""
    out_h, out_w = _pair(output_size)
    if out_h == out_w == 1:
        return input.mean(dim=(2, 3), keepdim=True)
    rows = _pooling_matrix(input, 2, out_h)
    cols = _pooling_matrix(input, 3, out_w)
    return rows @ input @ cols.t()


@FUNCTION_REWRITER.register_rewriter(
    'mmseg.models.segmentors.EncoderDecoder.predict', backend=BACKEND)
def encoder_decoder__predict(self, inputs, data_samples, **kwargs):
    """Segmentation logits at the input's size, by the config's test mode
    (mmseg's ``inference`` without its post-processing)."""
    metas = [sample.metainfo for sample in data_samples]
    if self.test_cfg.get('mode', 'whole') == 'slide':
        return self.slide_inference(inputs, metas)
    return self.encode_decode(inputs, metas)
