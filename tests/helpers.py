"""Shared test helpers: reference models with randomised weights."""
import logging
import re
from contextlib import contextmanager

import torch


def randomise_(module, seed=0):
    """Fill every parameter with random values so no term is negligible.

    Layer scales become O(1) instead of 1e-6, norms get non-trivial affine
    parameters: a wrong residual branch or a misplaced norm then shows.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith(('gamma', 'layer_scale')):
                param.copy_(0.5 + 0.5 * noise.abs())
            elif param.ndim == 1 and 'norm' in name and \
                    name.endswith('weight'):
                param.copy_(1 + 0.2 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            else:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in**0.5)
    return module


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def mmpretrain_convnext(arch, **kwargs):
    from mmpretrain.models import ConvNeXt
    kwargs.setdefault('out_indices', (0, 1, 2, 3))
    return ConvNeXt(arch=arch, gap_before_final_norm=False, **kwargs)


def reset_norms_(module, names=('norm0', 'norm1', 'norm2')):
    """Give output norms the fresh init (weight 1, bias 0)."""
    with torch.no_grad():
        for name in names:
            norm = getattr(module, name)
            norm.weight.fill_(1.)
            norm.bias.zero_()
    return module


@contextmanager
def captured_log():
    """Collect what mmengine's current logger prints, as one string."""
    from mmengine.logging import MMLogger
    lines = []

    class Collect(logging.Handler):

        def emit(self, record):
            lines.append(record.getMessage())

    logger = MMLogger.get_current_instance()
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def sparse_fcmae(dense):
    """Our atto V2 state in the V2 authors' FCMAE pre-training form: the
    encoder as MinkowskiEngine stores it (kernels (k*k, in, out) or
    (k*k, C) with x fastest, ``ln``/``linear`` wrappers, (1, C) biases and
    GRN), beside the decoder, mask token, projection and prediction."""
    state = {}
    for key, value in dense.items():
        if key.startswith('norm'):
            continue  # the encoder has no stage or final norms
        sparse_conv = re.fullmatch(r'downsample_layers\.[123]\.1\.weight', key)
        if sparse_conv:
            out_c, in_c, k, _ = value.shape
            value = value.transpose(3, 2).reshape(out_c, in_c, k * k)
            key, value = key[:-6] + 'kernel', value.permute(2, 1, 0)
        elif key.endswith('dwconv.weight'):
            c, _, k, _ = value.shape
            value = value.transpose(3, 2).reshape(c, k * k).permute(1, 0)
            key = key[:-6] + 'kernel'
        elif re.fullmatch(r'downsample_layers\.[123]\.0\.(weight|bias)', key) \
                or '.norm.' in key:
            key = key.replace('.0.', '.0.ln.') if key.startswith(
                'downsample') else key.replace('.norm.', '.norm.ln.')
        elif '.pwconv' in key:
            key = re.sub(r'\.(pwconv[12])\.', r'.\1.linear.', key)
        if key.endswith('dwconv.bias') or re.fullmatch(
                r'downsample_layers\.[123]\.1\.bias', key):
            value = value.reshape(1, -1)  # MinkowskiEngine conv biases
        if '.grn.' in key:
            value = value.reshape(1, -1)
        state['encoder.' + key] = value.clone()
    state.update({'mask_token': torch.zeros(1, 512, 1, 1),
                  'proj.weight': torch.zeros(512, 320, 1, 1),
                  'decoder.0.dwconv.weight': torch.zeros(512, 1, 7, 7),
                  'pred.weight': torch.zeros(3072, 512, 1, 1)})
    return state
