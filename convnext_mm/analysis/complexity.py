"""Parameters and FLOPs counted the way the ConvNeXt paper counted them.

The paper's tables were made with the module-hook counter of mmcv 1.x, which
mmcv 2.x dropped (mmengine's analyzer traces ops and counts differently). Its
conventions, reproduced here:

- a hook per module whose *exact* type is known: convolutions (multiply-adds
  plus one per output element for the bias), transposed convolutions, Linear
  (input elements x output features, no bias), ReLU-family activations and
  pooling (one per element), BatchNorm/GroupNorm/InstanceNorm/LayerNorm (one
  per element, two when affine), nn.Upsample (one per output element);
- functional calls (``F.interpolate``, ``F.max_pool2d``), GELU, SyncBN and
  subclasses of the known types are not counted.

The authors' ConvNeXt implemented its LayerNorms as a class of its own, so
none of them counted; here the backbone's norms are skipped alike, and its
pointwise layers, which our blocks call functionally, are counted by a hook on
the block with the Linear rule.
"""
from typing import Callable, Dict, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..models.convnext import ConvNeXt, ConvNeXtBlock


def _conv(module, inputs, output):
    batch = inputs[0].shape[0]
    positions = batch * int(np.prod(output.shape[2:]))
    per_position = int(np.prod(module.kernel_size)) * module.in_channels * (
        module.out_channels // module.groups)
    bias = module.out_channels * positions if module.bias is not None else 0
    return per_position * positions + bias


def _deconv(module, inputs, output):
    x = inputs[0]
    batch, (h, w) = x.shape[0], x.shape[2:]
    kh, kw = module.kernel_size
    flops = kh * kw * module.in_channels * (
        module.out_channels // module.groups) * batch * h * w
    if module.bias is not None:
        # mmcv 1.x multiplied the output height by itself here; the paper's
        # numbers carry that, so it is kept
        out_h = output.shape[2]
        flops += module.out_channels * batch * out_h * out_h
    return flops


def _elements(module, inputs, output):
    return output.numel()


def _pool(module, inputs, output):
    return inputs[0].numel()


def _norm(module, inputs, output):
    affine = getattr(module, 'affine', False) or getattr(
        module, 'elementwise_affine', False)
    return inputs[0].numel() * (2 if affine else 1)


def _linear(module, inputs, output):
    return inputs[0].numel() * output.shape[-1]


def _block(module, inputs, output):
    # pwconv1 (C -> 4C) and pwconv2 (4C -> C) on every position
    n, c, h, w = output.shape
    hidden = module.pwconv1.out_features
    return n * h * w * c * hidden * 2


def _rules() -> Dict[type, Callable]:
    rules = {}
    for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        rules[t] = _conv
    for t in (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6):
        rules[t] = _elements
    for t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
              nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveMaxPool1d,
              nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
              nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
              nn.AdaptiveAvgPool3d):
        rules[t] = _pool
    for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
              nn.LayerNorm):
        rules[t] = _norm
    rules[nn.Linear] = _linear
    rules[nn.Upsample] = _elements
    rules[nn.ConvTranspose2d] = _deconv
    try:  # mmcv's empty-tensor wrappers, which mmcv 1.x listed too
        from mmcv.cnn.bricks import wrappers
        for name, rule in (('Conv2d', _conv), ('Conv3d', _conv),
                           ('ConvTranspose2d', _deconv),
                           ('MaxPool2d', _pool), ('MaxPool3d', _pool),
                           ('Linear', _linear)):
            rules[getattr(wrappers, name)] = rule
    except ImportError:
        pass
    rules[ConvNeXtBlock] = _block
    return rules


def count_complexity(model: nn.Module,
                     forward: Callable[[], object]) -> Tuple[int, int]:
    """Run ``forward()`` once under counting hooks.

    Returns:
        (flops, params): multiply-add style FLOPs as the paper counts them,
        and the number of trainable parameters of ``model``.
    """
    rules = _rules()
    skipped = set()
    for module in model.modules():
        if isinstance(module, ConvNeXt):
            skipped.update(
                id(m) for m in module.modules()
                if isinstance(m, nn.LayerNorm))
        if isinstance(module, ConvNeXtBlock):
            # counted by the block's rule, whichever path runs them (the
            # fused CPU kernels bypass the Linear modules, the plain path
            # on other devices calls pwconv1)
            skipped.update((id(module.pwconv1), id(module.pwconv2)))
    total = [0]
    handles = []

    def hook_for(rule):

        def hook(module, inputs, output):
            total[0] += int(rule(module, inputs, output))

        return hook

    for module in model.modules():
        rule = rules.get(type(module))
        if rule is not None and id(module) not in skipped:
            handles.append(module.register_forward_hook(hook_for(rule)))
    try:
        with torch.no_grad():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total[0], params
