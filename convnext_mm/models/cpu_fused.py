"""The CPU fast path of a block's MLP: oneDNN's fused linear(+GELU) kernels.

In float32 CPU inference the two pointwise Linears run as oneDNN kernels, the
first with GELU fused in (the kernels PyTorch's own compiler emits); under
bf16 autocast too, but only on CPUs with native bf16 (elsewhere oneDNN
emulates bf16 and loses to PyTorch's own path), and never while the model is
traced, exported or compiled (the fused op has no symbolic form there). The
plain ops compute the same values; :func:`fused_dtype` says which path runs.
"""
from typing import Optional

import torch


def _onednn_linear():
    """oneDNN's fused linear(+pointwise) op, when this torch build has it."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


LINEAR_POINTWISE = _onednn_linear()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16, AMX, Arm
    BF16), as torch reports its instruction sets. Elsewhere oneDNN emulates
    bf16 and the fused kernels lose to PyTorch's own path."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        get = getattr(torch.cpu, 'get_capabilities', None)
        if get is not None:
            caps = get()
            _NATIVE_BF16 = any(
                caps.get(k) for k in ('avx512_bf16', 'amx_bf16', 'bf16',
                                      'sve_bf16'))
        else:
            _NATIVE_BF16 = bool(torch.cpu._is_avx512_bf16_supported()
                                or torch.cpu._is_amx_tile_supported())
    return _NATIVE_BF16


_NATIVE_BF16: Optional[bool] = None


def being_transformed(x: torch.Tensor) -> bool:
    """True while the model is traced, scripted, exported or compiled: the
    fused op has no symbolic or export form, so the plain ops must run."""
    if type(x) is not torch.Tensor:  # fake, functional or FX proxy tensors
        return True
    return bool(
        torch.jit.is_tracing() or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or getattr(torch.compiler, 'is_exporting', lambda: False)())


def fused_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype to run the fused inference kernels in, or None for the plain
    path. The op has no autograd formula and autocast does not see it, so
    under CPU bf16 autocast we cast its inputs as autocast would."""
    if (LINEAR_POINTWISE is None or x.device.type != 'cpu'
            or torch.is_grad_enabled() or not torch.backends.mkldnn.enabled
            or being_transformed(x)):
        return None
    if not torch.is_autocast_enabled('cpu'):
        return torch.float32 if x.dtype == torch.float32 else None
    if torch.get_autocast_dtype('cpu') == torch.bfloat16 and \
            x.dtype in (torch.float32, torch.bfloat16) and native_bf16() \
            and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def mlp(x: torch.Tensor, weight1, bias1, grn, weight2, bias2,
        dtype: torch.dtype) -> torch.Tensor:
    """Linear -> GELU [-> GRN] -> Linear on the fused kernels, in ``dtype``
    (from :func:`fused_dtype`)."""
    if dtype != torch.float32:
        x, weight1, bias1, weight2, bias2 = (
            t.to(dtype) for t in (x, weight1, bias1, weight2, bias2))
    x = LINEAR_POINTWISE(x, weight1, bias1, 'gelu', [], 'none')
    if grn is not None:
        # autocast may run GRN's reductions in float32
        x = grn(x).to(dtype)
    return LINEAR_POINTWISE(x, weight2, bias2, 'none', [], '')
