"""Layer-wise / stage-wise learning-rate decay for ConvNeXt (as released).

Use it in any mmdet, mmseg or mmpretrain config::

    optim_wrapper = dict(
        constructor='ConvNeXtLRDecayConstructor',
        optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise',
                           num_layers=6))

The name differs from mmdet's and mmseg's
``LearningRateDecayOptimizerConstructor`` so that both can live in one
process. A parameter group's learning rate is
``lr * decay_rate ** (num_layers + 2 - layer_id - 1)``; frozen parameters
are skipped; 1-d parameters, biases and ConvNeXt V2's GRN gamma/beta get no
weight decay.

Three rules give the layer ids (:data:`RULES`): ``layer_wise`` (the V1
detection/segmentation release and mmdet's ConvNeXt V2 config: a depth-27
third stage in groups of three blocks, 12 layers - the V2 paper's
"group-wise"), ``stage_wise`` (the V1 segmentation release) and
``block_wise`` (the V2 authors' default "single": every block its own
layer, ``num_layers = sum(depths)``).

GRN gamma/beta: the V2 authors' fine-tuning exempts them from weight decay
(their ``.gamma``/``.beta`` rule; their issue #15 advises it), and mmdet's
constructor does too on mmpretrain's (C,)-shaped GRN (it exempts 1-d
parameters). ``grn_weight_decay=True`` decays them instead, as mmdet's
constructor does on the authors' (1, 1, 1, C) shape.
"""
import re
from functools import partial
from typing import List

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS, register_everywhere

DECAY_TYPES = ('layer_wise', 'stage_wise', 'block_wise')


def layer_wise_id(name: str, num_layers: int) -> int:
    """Layer id of a parameter under the released ``layer_wise`` rule.

    The stem is 0, stage 0 is 1, stage 1 and its downsampling 2, stage 2 is
    split in groups of three blocks from 3 on, and stage 3 (with its
    downsampling) is ``num_layers``; everything outside the backbone's
    downsampling layers and stages is ``num_layers + 1`` (lr scale 1).
    """
    parts = name.split('.')
    if parts[0] != 'backbone' or len(parts) < 4:
        return num_layers + 1
    if parts[1] == 'downsample_layers':
        return {0: 0, 1: 2, 2: 3}.get(int(parts[2]), num_layers)
    if parts[1] == 'stages':
        stage, block = int(parts[2]), int(parts[3])
        return {0: 1, 1: 2, 2: 3 + block // 3}.get(stage, num_layers)
    return num_layers + 1


def stage_wise_id(name: str, num_layers: int) -> int:
    """Stage id under the released ``stage_wise`` rule: every downsampling
    layer 0, stage ``s`` is ``s + 1``, everything else ``num_layers + 1``."""
    parts = name.split('.')
    if parts[0] == 'backbone' and len(parts) >= 4:
        if parts[1] == 'downsample_layers':
            return 0
        if parts[1] == 'stages':
            return int(parts[2]) + 1
    return num_layers + 1


def block_wise_id(name: str, num_layers: int, depths) -> int:
    """Layer id under the V2 authors' ``single`` rule: downsampling layer
    ``i`` is ``sum(depths[:i]) + 1``, block ``j`` of stage ``i`` is
    ``sum(depths[:i]) + j + 1``, everything else ``num_layers + 1``."""
    parts = name.split('.')
    if parts[0] == 'backbone' and len(parts) >= 4:
        stage = int(parts[2]) if parts[2].isdigit() else None
        if parts[1] == 'downsample_layers' and stage is not None:
            return sum(depths[:stage]) + 1
        if parts[1] == 'stages' and stage is not None and parts[3].isdigit():
            return sum(depths[:stage]) + int(parts[3]) + 1
    return num_layers + 1


def is_grn(name: str) -> bool:
    """A ConvNeXt V2 GRN gamma/beta (ours, mmpretrain's, the authors')."""
    return bool(re.search(r'\.grn\.(gamma|beta|weight|bias)$', name))


def convnext_backbone(model: nn.Module) -> nn.Module:
    """The model's ConvNeXt backbone (ours or mmpretrain's), or a ValueError
    naming the constructor to use instead."""
    backbone = getattr(model, 'backbone', None)
    depths = getattr(backbone, 'depths', None)
    if backbone is None or depths is None or len(depths) != 4 or not all(
            hasattr(backbone, a) for a in ('downsample_layers', 'stages')):
        found = type(backbone).__name__ if backbone is not None else \
            f'no backbone ({type(model).__name__})'
        raise ValueError(
            'ConvNeXtLRDecayConstructor sets learning rates by ConvNeXt '
            f'stage and block, but the model has {found}. For other '
            "backbones use mmpretrain's "
            "'LearningRateDecayOptimWrapperConstructor' (ViT, Swin, ...) or "
            "mmengine's 'DefaultOptimWrapperConstructor'")
    return backbone


def min_num_layers(depths, decay_type: str) -> int:
    """The smallest ``num_layers`` that keeps every backbone group's lr
    below the head's: the deepest layer id is 3 + (depths[2] - 1) // 3
    (layer_wise; 6 for ConvNeXt-T, 12 for depth 27) or 4 (stage_wise)."""
    if decay_type == 'stage_wise':
        return len(depths)
    if decay_type == 'block_wise':
        return sum(depths)
    return 3 + (depths[2] - 1) // 3 + 1


def default_num_layers(model: nn.Module) -> int:
    """6 for ConvNeXt-T-like depths, 12 for deeper third stages."""
    return 12 if convnext_backbone(model).depths[2] > 9 else 6


def check_paramwise_cfg(cfg: dict, model: nn.Module) -> tuple:
    """Validate ``paramwise_cfg`` against ``model``; return ``(decay_rate,
    decay_type, num_layers, grn_weight_decay)`` or raise a ValueError saying
    what fits."""
    example = ("e.g. paramwise_cfg=dict(decay_rate=0.7, "
               "decay_type='layer_wise', num_layers=6)")
    if 'decay_rate' not in cfg:
        raise ValueError('ConvNeXtLRDecayConstructor needs '
                         f'paramwise_cfg.decay_rate, {example}')
    decay_rate = cfg['decay_rate']
    if isinstance(decay_rate, bool) or not isinstance(
            decay_rate, (int, float)) or not 0 < decay_rate <= 1:
        raise ValueError(
            f'paramwise_cfg.decay_rate={decay_rate!r}: it must be a number '
            'in (0, 1] (the released configs use 0.7 to 0.9; 1 disables '
            'the decay)')
    decay_type = cfg.get('decay_type', 'layer_wise')
    if decay_type not in DECAY_TYPES:
        raise ValueError(f'paramwise_cfg.decay_type={decay_type!r}; '
                         f'valid: {", ".join(DECAY_TYPES)}')
    depths = convnext_backbone(model).depths
    least = min_num_layers(depths, decay_type)
    num_layers = cfg.get('num_layers')
    if num_layers is None:
        num_layers = max(default_num_layers(model), least)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or \
            num_layers < least:
        raise ValueError(
            f'paramwise_cfg.num_layers={num_layers!r} is too small for a '
            f'ConvNeXt of depths {list(depths)} with {decay_type} decay: '
            f'its deepest layer id needs num_layers >= {least} (the '
            'released configs use 6 for ConvNeXt-T, 12 for S/B/L/XL), or '
            'some backbone groups would get a larger lr than the head')
    grn_decay = cfg.get('grn_weight_decay', False)
    if not isinstance(grn_decay, bool):
        raise ValueError(f'paramwise_cfg.grn_weight_decay={grn_decay!r}: '
                         'True or False (default False: no weight decay on '
                         "GRN gamma/beta, the V2 authors' fine-tuning)")
    return float(decay_rate), decay_type, num_layers, grn_decay


@register_everywhere(OPTIM_WRAPPER_CONSTRUCTORS,
                     MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                     'ConvNeXtLRDecayConstructor')
class ConvNeXtLRDecayConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper constructor with ConvNeXt LR decay.

    ``paramwise_cfg`` keys: ``decay_rate`` (required), ``decay_type``
    ('layer_wise', 'stage_wise' or 'block_wise', default 'layer_wise'),
    ``num_layers`` (6 or 12 in the released configs, ``sum(depths)`` for
    block_wise; read off the backbone's depths when omitted) and
    ``grn_weight_decay`` (default False). Parameter names are expected
    under ``backbone.``, as in mmdet detectors, mmseg segmentors and
    mmpretrain classifiers.
    """

    def add_params(self, params: List[dict], module: nn.Module,
                   **kwargs) -> None:
        decay_rate, decay_type, num_layers, grn_decay = check_paramwise_cfg(
            self.paramwise_cfg, module)
        depths = convnext_backbone(module).depths
        id_of = dict(layer_wise=layer_wise_id, stage_wise=stage_wise_id,
                     block_wise=partial(block_wise_id,
                                        depths=depths))[decay_type]
        total = num_layers + 2

        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            decays = grn_decay if is_grn(name) else (
                param.ndim > 1 and not name.endswith('.bias'))
            layer_id = id_of(name, num_layers)
            kind = 'decay' if decays else 'no_decay'
            group_name = f'layer_{layer_id}_{kind}'
            if group_name not in groups:
                scale = decay_rate**(total - layer_id - 1)
                groups[group_name] = dict(
                    params=[],
                    param_names=[],
                    lr=scale * self.base_lr,
                    lr_scale=scale,
                    weight_decay=(self.base_wd or 0.) if decays else 0.,
                    group_name=group_name)
            groups[group_name]['params'].append(param)
            groups[group_name]['param_names'].append(name)

        ordered = sorted(
            groups.values(),
            key=lambda g: (int(g['group_name'].split('_')[1]),
                           g['group_name']))
        lines = [
            f'ConvNeXtLRDecayConstructor: {decay_type}, decay_rate '
            f'{decay_rate}, num_layers {num_layers}, base lr {self.base_lr}'
        ] + [
            f'  {g["group_name"]:<18} lr_scale {g["lr_scale"]:.6f}  lr '
            f'{g["lr"]:.3e}  weight_decay {g["weight_decay"]}  '
            f'{len(g["params"])} params' for g in ordered
        ]
        print_log('\n'.join(lines), logger='current')
        params.extend(ordered)
