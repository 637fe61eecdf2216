"""Optimizer construction: ConvNeXt layer-wise / stage-wise LR decay."""
from .lr_decay import (ConvNeXtLRDecayConstructor, layer_wise_id,
                       stage_wise_id)

__all__ = ['ConvNeXtLRDecayConstructor', 'layer_wise_id', 'stage_wise_id']
