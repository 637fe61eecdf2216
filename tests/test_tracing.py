"""The fused CPU kernels never block tracing, exporting or compiling, and
run bf16 only on CPUs with native bf16."""
import pytest
import torch

from convnext_mm.models import ConvNeXt
from convnext_mm.models import cpu_fused as impl
from helpers import randomise_, rel_err


@pytest.fixture(scope='module')
def model_and_input():
    torch.manual_seed(0)
    model = randomise_(ConvNeXt('atto', layer_scale_init_value=1.)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = model(x)
    return model, x, reference


def assert_same(outputs, reference, tol=1e-5):
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    assert len(outputs) == len(reference)
    for out, ref in zip(outputs, reference):
        assert rel_err(torch.as_tensor(out).detach(), ref) <= tol


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused oneDNN op."""
    calls = []
    if impl.LINEAR_POINTWISE is None:
        pytest.skip('this torch build has no oneDNN fused linear')
    real = impl.LINEAR_POINTWISE

    def counted(*args):
        calls.append(args[0].dtype)
        return real(*args)

    monkeypatch.setattr(impl, 'LINEAR_POINTWISE', counted)
    return calls


@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
def test_jit_trace(model_and_input, fused_calls, grad):
    model, x, reference = model_and_input
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(model, x, check_trace=False)
        assert_same(traced(x), reference)
    assert fused_calls == []


@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
def test_torch_export(model_and_input, fused_calls, grad):
    model, x, reference = model_and_input
    with torch.set_grad_enabled(grad):
        exported = torch.export.export(model, (x, ))
        assert_same(exported.module()(x), reference)
    assert fused_calls == []


@pytest.mark.parametrize('dynamo', [False, True],
                         ids=['torchscript', 'dynamo'])
@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
def test_onnx_export(model_and_input, fused_calls, tmp_path, dynamo, grad):
    pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    if dynamo:
        pytest.importorskip('onnxscript')
    model, x, reference = model_and_input
    path = tmp_path / 'backbone.onnx'
    with torch.set_grad_enabled(grad):
        torch.onnx.export(model, (x, ), str(path), dynamo=dynamo,
                          opset_version=17 if not dynamo else None,
                          input_names=['image'])
    session = ort.InferenceSession(str(path),
                                   providers=['CPUExecutionProvider'])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_same([torch.from_numpy(o) for o in outputs], reference)
    assert fused_calls == []


@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
def test_torch_compile(model_and_input, fused_calls, grad):
    model, x, reference = model_and_input
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.set_grad_enabled(grad):
        assert_same(compiled(x), reference)
    assert fused_calls == []


def test_eager_inference_takes_the_fused_path(model_and_input, fused_calls):
    model, x, reference = model_and_input
    with torch.no_grad():
        assert_same(model(x), reference, tol=0)
    assert fused_calls and set(fused_calls) == {torch.float32}


@pytest.mark.parametrize('native', [True, False])
def test_bf16_fused_only_on_native_bf16(model_and_input, fused_calls,
                                        monkeypatch, native):
    model, x, reference = model_and_input
    monkeypatch.setattr(impl, '_NATIVE_BF16', native)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outputs = model(x)
    expect = torch.ops.mkldnn._is_mkldnn_bf16_supported() and native
    assert bool(fused_calls) == expect
    assert all(d == torch.bfloat16 for d in fused_calls)
    for out, ref in zip(outputs, reference):
        assert out.dtype == torch.bfloat16 or out.dtype == torch.float32
        assert rel_err(out.float(), ref) < 0.05  # bf16 rounding
    # fp32 inference is fused whatever the CPU
    fused_calls.clear()
    with torch.no_grad():
        model(x)
    assert fused_calls


def test_native_bf16_is_asked_of_torch(monkeypatch):
    monkeypatch.setattr(impl, '_NATIVE_BF16', None)
    caps = dict(torch.cpu.get_capabilities())
    for flags, expect in (({'avx512_bf16': True}, True),
                          ({'amx_bf16': True}, True),
                          ({'avx512_bf16': False, 'amx_bf16': False,
                            'avx512_f': True}, False)):
        fake = {k: v for k, v in caps.items()
                if k not in ('avx512_bf16', 'amx_bf16', 'bf16', 'sve_bf16')}
        fake.update(flags)
        monkeypatch.setattr(torch.cpu, 'get_capabilities', lambda f=fake: f)
        monkeypatch.setattr(impl, '_NATIVE_BF16', None)
        assert impl.native_bf16() is expect
