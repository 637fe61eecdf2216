"""The Inferencer of a config's library (mmdet's ``DetInferencer``,
mmseg's ``MMSegInferencer``, mmpretrain's ``ImageClassificationInferencer``)
built only after the config, its model and the checkpoint have passed the
tools' pre-flight checks.

The Inferencers themselves load any checkpoint that shares a key with the
model: a UperNet checkpoint in a Mask R-CNN config runs with its neck and
heads random and a warning in the log. Here such a checkpoint is refused
(:meth:`~convnext_mm.checkpoints.Report.check_whole`) unless
``allow_partial=True``; the file is read once, and the Inferencer's own load
takes what the check read.
"""
import importlib
from typing import Optional

import torch

from .. import launch

_INFERENCERS = {
    'mmdet': ('mmdet.apis', 'DetInferencer', 'weights'),
    'mmseg': ('mmseg.apis', 'MMSegInferencer', 'weights'),
    'mmpretrain': ('mmpretrain.apis', 'ImageClassificationInferencer',
                   'pretrained'),
}


def check_device(device: Optional[str]) -> None:
    """Refuse, in one ValueError, a device this machine does not have (the
    Inferencer would fail deep inside torch, after building the model)."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f'device={device!r} is not a torch device ({err}); '
                         "give 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() \
            else 0
        if count == 0 or (parsed.index or 0) >= count:
            have = f'{count} CUDA device(s)' if count else \
                f'no CUDA device (torch {torch.__version__})'
            raise ValueError(f'device={device!r}: this machine has {have}; '
                             "use device='cpu'" + (
                                 f" or 'cuda:0'..'cuda:{count - 1}'"
                                 if count else ''))


def inferencer(config: str, checkpoint: str, device: Optional[str] = None,
               allow_partial: bool = False, cfg_options: Optional[dict] = None,
               **kwargs):
    """The library Inferencer for ``config`` with ``checkpoint`` loaded.

    Example::

        from convnext_mm.inference import inferencer
        det = inferencer('configs/mask_rcnn_convnext_t_coco.py',
                         'work_dirs/mask_rcnn_convnext_t_coco/epoch_36.pth',
                         device='cpu')
        result = det('demo.jpg', out_dir='outputs/')

    ``kwargs`` go to the Inferencer (``palette``, ``show_progress``, ...).
    Raises one ValueError/FileNotFoundError naming the problem for a device
    this machine lacks, or a config or checkpoint that the tools would
    refuse.
    """
    check_device(device)
    cfg = launch.load_config(config, cfg_options)
    scope = launch.task_of(cfg)
    model = launch.check_model(cfg, training=False)
    launch.check_checkpoint(model, checkpoint, allow_partial,
                            option='allow_partial=True')
    del model
    module, name, weights = _INFERENCERS[scope]
    cls = getattr(importlib.import_module(module), name)
    kwargs[weights] = checkpoint
    return cls(cfg, device=device, **kwargs)
