"""The ConvNeXt backbone for dense prediction (Liu et al., CVPR 2022).

Parameter names follow the authors' detection/segmentation release
(``downsample_layers``, ``stages.S.B.dwconv/norm/pwconv1/pwconv2/gamma``,
``norm0``..``norm3``), so their checkpoints load as they are; the adapters in
:mod:`convnext_mm.checkpoints` map every other common layout onto these names.

Where the speed over mmpretrain's implementation comes from:

- activations run in channels-last memory, so a block's NCHW -> NHWC permute
  is a free view instead of a copy;
- the layer scale is folded into ``pwconv2``'s weight and bias (exact under
  autograd, one pass over the activations less, one saved tensor less);
- in CPU inference the two pointwise Linears run as oneDNN's fused kernels
  (:mod:`.cpu_fused` says when).

Outputs are returned as ordinary contiguous NCHW tensors because some
compiled ops downstream (RoIAlign) assume that layout.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, trunc_normal_init
from mmengine.registry import MODELS as MMENGINE_MODELS

from ..arch import ARCH_SETTINGS
from ..checkpoints.report import load_pretrained
from ..registry import MODELS, register_everywhere
from . import cpu_fused


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
            self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization of ConvNeXt V2, on NHWC tensors."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch."""
    if rate == 0. or not training:
        return x
    keep = 1 - rate
    mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LN -> Linear(C, 4C) -> GELU [-> GRN] -> Linear(4C, C)
    -> layer scale -> drop path -> + input."""

    def __init__(self,
                 channels: int,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False,
                 with_cp: bool = False):
        super().__init__()
        self.dwconv = nn.Conv2d(
            channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.grn = GRN(4 * channels) if use_grn else None
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(
            torch.full((channels, ), float(layer_scale_init_value))
        ) if layer_scale_init_value > 0 else None
        self.drop_path_rate = drop_path_rate
        self.with_cp = with_cp

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        weight2, bias2 = self.pwconv2.weight, self.pwconv2.bias
        if self.gamma is not None:
            # gamma * (W x + b) == (gamma W) x + gamma b
            weight2 = weight2 * self.gamma[:, None]
            bias2 = bias2 * self.gamma
        dtype = cpu_fused.fused_dtype(x)
        if dtype is not None:
            x = cpu_fused.mlp(x, self.pwconv1.weight, self.pwconv1.bias,
                              self.grn, weight2, bias2, dtype)
        else:
            x = self.act(self.pwconv1(x))
            if self.grn is not None:
                x = self.grn(x)
            x = F.linear(x, weight2, bias2)
        if self.gamma is not None:
            # unfolded, ``gamma * x`` promotes a low-precision branch to
            # gamma's dtype under autocast, and with it the residual stream
            x = x.to(torch.promote_types(x.dtype, self.gamma.dtype))
        return x.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and self.training and torch.is_grad_enabled():
            branch = cp.checkpoint(self._residual, x, use_reentrant=False)
        else:
            branch = self._residual(x)
        return x + drop_path(branch, self.drop_path_rate, self.training)


@register_everywhere(MODELS, MMENGINE_MODELS, 'ConvNeXt')
class ConvNeXt(BaseModule):
    """ConvNeXt backbone emitting multi-scale NCHW features.

    In mmdet and mmsegmentation configs ``type='ConvNeXt'`` resolves to this
    class once ``custom_imports=dict(imports=['convnext_mm'])`` is set. In
    mmpretrain configs plain ``'ConvNeXt'`` keeps meaning mmpretrain's own;
    name ours ``type='convnext_mm.ConvNeXt'`` there (this form works in any
    config, with or without ``custom_imports``).

    Args:
        arch (str | dict): One of :data:`ARCH_SETTINGS` ('atto' .. 'huge'), or
            ``dict(depths=[...], channels=[...])`` of equal lengths.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (int | Sequence[int]): Stages whose outputs are returned,
            negative indices counting from the last. Each returned stage gets
            its own channels-first LayerNorm ``norm{i}``. Outputs come in stage
            order, at strides 4, 8, 16, 32. Defaults to all four.
        drop_path_rate (float): Stochastic depth rate, increased linearly
            block by block from 0 to this value. Defaults to 0.
        layer_scale_init_value (float): Initial layer scale ``gamma``; 0
            disables layer scale. Defaults to 1e-6 (the released detection and
            segmentation configs use 1.0).
        frozen_stages (int): Number of leading stages to freeze, each with
            its downsampling layer (the stem for stage 0) and its output norm;
            they stay in eval mode with ``requires_grad=False`` across
            ``train()``. 0 or -1 freezes nothing. Defaults to 0.
        with_cp (bool): Gradient checkpointing of every block: less training
            memory for a second forward of each block. Defaults to False.
        use_grn (bool): ConvNeXt V2 blocks with Global Response Normalization
            (V2 also sets ``layer_scale_init_value=0``). Defaults to False.
        gap_before_final_norm (bool): For classification: average-pool each
            emitted stage before its norm and return ``(N, C)`` vectors, as
            the authors' classifier (and mmpretrain) do. Defaults to False.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)``
            loads any common ConvNeXt checkpoint layout, as a torch or
            safetensors file or a Hugging Face folder (see
            :mod:`convnext_mm.checkpoints`). A classification checkpoint
            leaves ``norm0``..``norm3`` fresh, as the paper's fine-tuning
            started; add ``final_norm='copy'`` to copy the classifier's final
            norm into ``norm3`` as mmdet 3.x does. None gives the paper's
            init.
        pretrained (str, optional): Legacy spelling of a ``Pretrained``
            init_cfg, which mmseg's ``EncoderDecoder`` passes to backbones.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 frozen_stages: int = 0,
                 with_cp: bool = False,
                 use_grn: bool = False,
                 gap_before_final_norm: bool = False,
                 init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError(
                    'ConvNeXt got both pretrained and init_cfg; set only '
                    "init_cfg=dict(type='Pretrained', checkpoint=...)")
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        final_norm = _parse_final_norm(init_cfg)
        super().__init__(init_cfg=init_cfg)
        self.final_norm = final_norm
        self.arch = arch
        self.depths, self.channels = _parse_arch(arch)
        self.num_stages = len(self.depths)
        self.out_indices = _parse_out_indices(out_indices, self.num_stages)
        if not isinstance(frozen_stages, int) or \
                not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(
                f'frozen_stages={frozen_stages!r} is out of range: use an int '
                f'from 0 (freeze nothing; -1 also accepted) to '
                f'{self.num_stages} (freeze every stage)')
        if not 0. <= drop_path_rate < 1.:
            raise ValueError(
                f'drop_path_rate={drop_path_rate!r} must be in [0, 1)')
        self.frozen_stages = max(frozen_stages, 0)
        self.use_grn = use_grn
        self.gap_before_final_norm = gap_before_final_norm

        rates = torch.linspace(
            0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        self.downsample_layers = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i, (depth, channels) in enumerate(zip(self.depths,
                                                  self.channels)):
            if i == 0:
                down = nn.Sequential(
                    nn.Conv2d(in_channels, channels, kernel_size=4, stride=4),
                    LayerNorm2d(channels))
            else:
                down = nn.Sequential(
                    LayerNorm2d(self.channels[i - 1]),
                    nn.Conv2d(
                        self.channels[i - 1], channels, kernel_size=2,
                        stride=2))
            self.downsample_layers.append(down)
            first = sum(self.depths[:i])
            self.stages.append(
                nn.Sequential(*[
                    ConvNeXtBlock(
                        channels,
                        drop_path_rate=rates[first + j],
                        layer_scale_init_value=layer_scale_init_value,
                        use_grn=use_grn,
                        with_cp=with_cp) for j in range(depth)
                ]))
            if i in self.out_indices:
                self.add_module(f'norm{i}', LayerNorm2d(channels))
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> tuple:
        """Return the normalised feature maps of ``out_indices`` (or their
        pooled vectors with ``gap_before_final_norm``)."""
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i in range(self.num_stages):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                norm = getattr(self, f'norm{i}')
                if self.gap_before_final_norm:
                    outs.append(norm(x.mean((2, 3), keepdim=True)).flatten(1))
                else:
                    outs.append(norm(x).contiguous())
        return tuple(outs)

    def _frozen_modules(self):
        for i in range(self.frozen_stages):
            yield self.downsample_layers[i]
            yield self.stages[i]
            if hasattr(self, f'norm{i}'):
                yield getattr(self, f'norm{i}')

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        """Switch mode, keeping the frozen stages in eval mode."""
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self):
        """The paper's init, then the pretrained weights when configured."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, nn.LayerNorm):
                constant_init(module, 1., bias=0.)
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_pretrained(
                self,
                cfg['checkpoint'],
                prefix=cfg.get('prefix'),
                map_location=cfg.get('map_location', 'cpu'))
        elif cfg is not None:
            super().init_weights()
        self._is_init = True


def _parse_final_norm(init_cfg) -> str:
    """Where a ``Pretrained`` classification checkpoint's final norm goes
    (read by :mod:`convnext_mm.checkpoints.report`)."""
    value = init_cfg.get('final_norm') if isinstance(init_cfg, dict) and \
        init_cfg.get('type') == 'Pretrained' else None
    if value not in (None, 'fresh', 'copy'):
        raise ValueError(
            f"init_cfg final_norm={value!r}: use 'fresh' (the paper's start: "
            "norm0..norm3 begin as ones/zeros) or 'copy' (the classifier's "
            'final norm goes into the last stage norm, as mmdet 3.x does)')
    return value or 'fresh'


def _parse_arch(arch):
    if isinstance(arch, str):
        if arch not in ARCH_SETTINGS:
            raise ValueError(
                f'Unknown ConvNeXt arch {arch!r}; valid: '
                f'{", ".join(ARCH_SETTINGS)}, or a dict with "depths" and '
                '"channels" lists of equal length')
        arch = ARCH_SETTINGS[arch]
    if not isinstance(arch, dict) or set(arch) != {'depths', 'channels'}:
        raise ValueError(
            f'A ConvNeXt arch dict needs exactly the keys "depths" and '
            f'"channels", got {arch!r}')
    depths, channels = tuple(arch['depths']), tuple(arch['channels'])
    if len(depths) != len(channels) or not depths:
        raise ValueError(
            f'A ConvNeXt arch dict needs one depth per stage channel count: '
            f'depths {list(depths)} has {len(depths)} entries, channels '
            f'{list(channels)} has {len(channels)}')
    if not all(isinstance(v, int) and v > 0 for v in depths + channels):
        raise ValueError('ConvNeXt depths and channels must be positive ints,'
                         f' got depths {list(depths)}, channels '
                         f'{list(channels)}')
    return depths, channels


def _parse_out_indices(out_indices, num_stages):
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    valid = f'{-num_stages}..{num_stages - 1}'
    parsed = []
    for index in out_indices:
        if not isinstance(index, int) or not \
                -num_stages <= index < num_stages:
            raise ValueError(
                f'out_indices {list(out_indices)} has {index!r}, out of range'
                f' for {num_stages} stages: valid indices are {valid}')
        parsed.append(index % num_stages)
    if not parsed or len(set(parsed)) != len(parsed):
        raise ValueError(
            f'out_indices {list(out_indices)} must name at least one stage, '
            f'each once (valid indices: {valid})')
    return tuple(sorted(parsed))
