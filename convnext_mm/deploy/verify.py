"""PyTorch against ONNX Runtime on the same pre-processed image: matched
detections (class, box IoU, score, mask IoU and mask probabilities) or
agreeing pixel labels, and the CPU latency of each."""
import statistics
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

SCORE_THR = 0.05
MIN_BOX_IOU = 0.99
MAX_SCORE_DIFF = 1e-3
MIN_MASK_IOU = 0.98
# mmdet gives mask probabilities before the threshold as uint8, the
# probability x 255 truncated: up to 1/255 below the probability
MAX_MASK_PROB_DIFF = 0.01
MIN_PIXEL_AGREEMENT = 0.999
# equal scores: NMS keeps either of two overlapping boxes (torch's sort and
# ONNX Runtime's order ties differently; two proposals that sample the same
# feature cells get the same score and offsets). Accepted only where the
# box ONNX kept is one PyTorch's NMS chose between, with that score.
TIE = 1e-6


class Row(NamedTuple):
    check: str
    value: str
    limit: str
    ok: bool


def timed(run: Callable[[], object],
          repeats: int) -> Tuple[object, float]:
    """The result of a first (warm-up) run, and the median seconds of
    ``repeats`` runs after it."""
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 1.)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.


def _detections(instances) -> dict:
    keep = (instances.scores > SCORE_THR).cpu().numpy()
    out = dict(boxes=instances.bboxes.cpu().numpy()[keep],
               scores=instances.scores.cpu().numpy()[keep],
               labels=instances.labels.cpu().numpy()[keep])
    if 'masks' in instances:
        masks = instances.masks.cpu().numpy()[keep]
        out['masks'] = masks / 255. if masks.dtype == np.uint8 else masks
    return out


def _match(ref: dict,
           other: dict) -> List[Tuple[int, Optional[int], float]]:
    """Pair each detection of ``ref`` (best score first) with the unpaired
    detection of ``other`` of its class with the highest box IoU:
    ``(i, j or None, their IoU)``."""
    iou = _box_iou(ref['boxes'], other['boxes'])
    free = np.ones(len(other['boxes']), dtype=bool)
    pairs = []
    for i in np.argsort(-ref['scores'], kind='stable'):
        same = free & (other['labels'] == ref['labels'][i])
        if not same.any():
            pairs.append((int(i), None, 0.))
            continue
        j = int(np.argmax(np.where(same, iou[i], -1.)))
        free[j] = False
        pairs.append((int(i), j, float(iou[i, j])))
    return pairs


def _borderline(score: float) -> bool:
    """A detection that one side may drop at the score threshold: within
    the score tolerance of it."""
    return score < SCORE_THR + MAX_SCORE_DIFF


def _is_candidate(box, score, label, candidates) -> bool:
    same = (candidates['labels'] == label) & (
        np.abs(candidates['scores'] - score) <= TIE)
    return bool(same.any()) and float(
        _box_iou(box[None], candidates['boxes'][same]).max()) >= MIN_BOX_IOU


def compare_detections(torch_instances, onnx_instances,
                       torch_candidates: Optional[Callable[[], object]] = None
                       ) -> List[Row]:
    """The pass criteria of the issue: every detection above the score
    threshold has a match of the same class (box IoU, score, mask IoU)
    in the other, in both directions. ``torch_candidates`` gives PyTorch's
    detections before NMS, to tell an NMS tie (see ``TIE``) from a moved
    box; without it a tie counts as a moved box."""
    ref, other = _detections(torch_instances), _detections(onnx_instances)
    candidates = None
    unmatched, ties = 0, set()
    worst_iou, worst_mask, worst_score = 1., 1., 0.
    for a, b, pairs in ((ref, other, _match(ref, other)),
                        (other, ref, _match(other, ref))):
        for i, j, iou in pairs:
            if j is None:
                unmatched += not _borderline(a['scores'][i])
                continue
            diff = abs(float(a['scores'][i] - b['scores'][j]))
            if iou < MIN_BOX_IOU and diff <= TIE and torch_candidates:
                if candidates is None:
                    candidates = _detections(torch_candidates())
                k = j if a is ref else i  # the ONNX detection's index
                if _is_candidate(other['boxes'][k], other['scores'][k],
                                 other['labels'][k], candidates):
                    ties.add(round(float(a['scores'][i]), 6))
                    continue
            worst_iou = min(worst_iou, iou)
            worst_score = max(worst_score, diff)
            if 'masks' in a:
                worst_mask = min(worst_mask,
                                 _mask_iou(a['masks'][i], b['masks'][j]))
    rows = [
        Row('detections above 0.05 (PyTorch / ONNX)',
            f'{len(ref["scores"])} / {len(other["scores"])}', '', True),
        Row('without a match', str(unmatched), '0', unmatched == 0),
        Row('NMS ties (equal scores, the other box kept)', str(len(ties)),
            '', True),
        Row('lowest box IoU', f'{worst_iou:.4f}', f'>= {MIN_BOX_IOU}',
            worst_iou >= MIN_BOX_IOU),
        Row('largest score difference', f'{worst_score:.1e}',
            f'<= {MAX_SCORE_DIFF:.0e}', worst_score <= MAX_SCORE_DIFF),
    ]
    if 'masks' in ref:
        rows.append(Row('lowest mask IoU', f'{worst_mask:.4f}',
                        f'>= {MIN_MASK_IOU}', worst_mask >= MIN_MASK_IOU))
    return rows


def compare_mask_probabilities(torch_instances, onnx_instances) -> Row:
    """The largest difference between the mask probabilities (pasted in
    the image, before the threshold) of matched detections: PyTorch's as
    mmdet gives them with ``mask_thr_binary=-1``, ONNX Runtime's from
    :func:`.postprocess.detections` with ``probabilities``. A merge of
    masks other than mmdet's can keep the binary masks (and their IoU)
    and still differ here."""
    ref, other = _detections(torch_instances), _detections(onnx_instances)
    worst = 0.
    for i, j, iou in _match(ref, other):
        if j is not None and iou >= MIN_BOX_IOU:
            worst = max(worst, float(np.abs(ref['masks'][i] -
                                            other['masks'][j]).max()))
    return Row('largest mask probability difference', f'{worst:.4f}',
               f'<= {MAX_MASK_PROB_DIFF}', worst <= MAX_MASK_PROB_DIFF)


def compare_labels(torch_labels: torch.Tensor,
                   onnx_labels: torch.Tensor) -> List[Row]:
    """The share of pixels whose labels agree."""
    same = float((torch_labels == onnx_labels).float().mean())
    return [
        Row('pixels', str(torch_labels.numel()), '', True),
        Row('pixels with the same label', f'{100 * same:.3f}%',
            f'>= {100 * MIN_PIXEL_AGREEMENT:.1f}%',
            same >= MIN_PIXEL_AGREEMENT),
    ]


def table(rows: List[Row]) -> str:
    """The rows as a markdown table."""
    lines = ['| check | value | limit | |', '|---|---|---|---|']
    for row in rows:
        mark = ('ok' if row.ok else 'FAIL') if row.limit else ''
        lines.append(f'| {row.check} | {row.value} | {row.limit} | {mark} |')
    return '\n'.join(lines)


def latency_table(times_s: dict, repeats: int, threads: int) -> str:
    """The CPU latencies (median of ``repeats``, after pre-processing) as
    a markdown table: PyTorch's whole model beside ONNX Runtime's graph and
    the post-processing after it."""
    ms = {k: 1e3 * v for k, v in times_s.items()}
    return '\n'.join([
        f'CPU latency for this image (median of {repeats}, after '
        f'pre-processing; {threads} threads in PyTorch and in ONNX '
        "Runtime's operators):",
        '| runtime | graph | post-processing | total |', '|---|---|---|---|',
        f'| PyTorch | | | {ms["pytorch"]:.0f} ms |',
        f'| ONNX Runtime | {ms["onnxruntime_graph"]:.0f} ms | '
        f'{ms["postprocess"]:.0f} ms | {ms["onnxruntime"]:.0f} ms |'])
