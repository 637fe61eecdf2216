"""The ConvNeXt backbone: faithful to mmpretrain's, and its arguments."""
import pytest
import torch

from convnext_mm import ConvNeXt
from convnext_mm.checkpoints import load_pretrained, to_convnext_mm
from helpers import mmpretrain_convnext, randomise_, rel_err


def paired(arch, use_grn=False, **kwargs):
    """Our backbone and mmpretrain's, holding the same random weights."""
    ls = 0. if use_grn else 1.
    ref = randomise_(
        mmpretrain_convnext(
            arch, use_grn=use_grn, layer_scale_init_value=ls, **kwargs))
    ours = ConvNeXt(arch, use_grn=use_grn, layer_scale_init_value=ls,
                    **kwargs)
    state, _, layout = to_convnext_mm({'state_dict': ref.state_dict()})
    assert layout == 'mmpretrain'
    ours.load_state_dict(state, strict=True)
    return ours, ref


@pytest.mark.parametrize('arch,use_grn', [('tiny', False), ('atto', False),
                                          ('atto', True)])
@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_outputs_equal_mmpretrain(arch, use_grn, mode):
    ours, ref = paired(arch, use_grn=use_grn)
    getattr(ours, mode)()
    getattr(ref, mode)()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        outs, refs = ours(x), ref(x)
    assert len(outs) == 4
    for stride, o, r in zip((4, 8, 16, 32), outs, refs):
        assert o.shape == r.shape == (2, r.shape[1], 96 // stride,
                                      128 // stride)
        assert o.is_contiguous()
        assert rel_err(o, r) < 1e-5


@pytest.mark.parametrize('use_grn', [False, True])
@pytest.mark.parametrize('grad', [False, True])
def test_bf16_autocast_matches_mmpretrain(use_grn, grad):
    """Same output dtypes (the residual stream's precision) and values
    within bf16 rounding, on the fused inference path and the plain one."""
    ours, ref = paired('atto', use_grn=use_grn)
    ours.eval()
    ref.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.set_grad_enabled(grad), \
            torch.autocast('cpu', dtype=torch.bfloat16):
        outs, refs = ours(x), ref(x)
    with torch.no_grad():
        exact = ref(x)
    for o, r, e in zip(outs, refs, exact):
        assert o.dtype == r.dtype
        # bf16 keeps ~3 significant digits; both drift from fp32 alike
        assert rel_err(o.detach().float(), r.detach().float()) < 4e-2
        assert rel_err(o.detach().float(), e) < 4e-2


def test_pooled_classification_outputs_equal_mmpretrain():
    from helpers import randomise_
    from mmpretrain.models import ConvNeXt as Ref
    ref = randomise_(Ref('atto', out_indices=(3, ), layer_scale_init_value=1.,
                         gap_before_final_norm=True))
    ours = ConvNeXt('atto', out_indices=(3, ), layer_scale_init_value=1.,
                    gap_before_final_norm=True)
    # the classifier's final norm goes where it does the same job
    report = load_pretrained(ours, {'state_dict': ref.state_dict()})
    assert report['fresh'] == [] and report['left_out'] == []
    ref.eval()
    ours.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        (o, ), (r, ) = ours(x), ref(x)
    assert o.shape == r.shape == (2, 320)
    assert rel_err(o, r) < 1e-5


def test_gradients_equal_mmpretrain():
    # with autograd on, the plain PyTorch path runs (the oneDNN inference
    # kernels have no backward): its outputs must match as well
    ours, ref = paired('atto')
    x = torch.randn(1, 3, 64, 64)
    outs, refs = ours(x), ref(x)
    for o, r in zip(outs, refs):
        assert rel_err(o.detach(), r.detach()) < 1e-5
    sum(o.square().sum() for o in outs).backward()
    sum(r.square().sum() for r in refs).backward()
    g_ours = ours.stages[2][3].pwconv1.weight.grad
    g_ref = ref.stages[2][3].pointwise_conv1.weight.grad
    assert rel_err(g_ours, g_ref) < 1e-4


def test_out_indices_subset_and_negative():
    net = ConvNeXt('atto', out_indices=(-1, 1))
    assert net.out_indices == (1, 3)
    assert not hasattr(net, 'norm0') and hasattr(net, 'norm3')
    outs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 80, 8, 8), (1, 320, 2, 2)]
    assert ConvNeXt('atto', out_indices=2).out_indices == (2, )


def test_frozen_stages_stay_frozen_across_train():
    net = ConvNeXt('atto', frozen_stages=2, drop_path_rate=0.2)
    net.train()
    frozen = ['downsample_layers.0', 'downsample_layers.1', 'stages.0',
              'stages.1', 'norm0', 'norm1']
    for name, param in net.named_parameters():
        is_frozen = any(name.startswith(f + '.') for f in frozen)
        assert param.requires_grad != is_frozen, name
    assert not net.stages[1].training and not net.norm1.training
    assert net.stages[2].training and net.norm2.training
    # frozen stages run deterministically (no drop path) in train mode
    torch.manual_seed(0)
    x = torch.randn(8, 3, 64, 64)
    a, b = net(x), net(x)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[3], b[3])
    sum(o.sum() for o in net(x)).backward()
    assert net.stages[0][0].pwconv1.weight.grad is None
    assert net.stages[2][0].pwconv1.weight.grad is not None


def test_drop_path_rates_and_training_only():
    net = ConvNeXt('atto', drop_path_rate=0.3)
    rates = [blk.drop_path_rate for stage in net.stages for blk in stage]
    assert len(rates) == 12
    assert rates[0] == 0. and rates[-1] == pytest.approx(0.3)
    assert rates[5] == pytest.approx(0.3 * 5 / 11)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 64, 64)
    net.eval()
    assert torch.equal(net(x)[3], net(x)[3])
    net.train()
    assert not torch.equal(net(x)[3], net(x)[3])


def test_with_cp_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = randomise_(ConvNeXt('atto', layer_scale_init_value=1.))
    ckpt = ConvNeXt('atto', layer_scale_init_value=1., with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for net in (plain, ckpt):
        net.train()
        sum(o.square().mean() for o in net(x)).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_default_init_is_the_papers():
    torch.manual_seed(0)
    net = ConvNeXt('tiny')
    net.init_weights()
    w = net.stages[2][0].pwconv1.weight
    assert abs(w.std().item() - 0.02) < 0.001
    assert net.stages[2][0].pwconv1.bias.abs().max() == 0
    assert torch.all(net.norm1.weight == 1)
    assert torch.all(net.stages[0][0].gamma == 1e-6)


def test_builds_from_mmdet_and_mmseg_configs():
    import convnext_mm  # noqa: F401
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    for registry in (DET, SEG):
        net = registry.build(dict(type='ConvNeXt', arch='atto',
                                  out_indices=[0, 1]))
        assert isinstance(net, ConvNeXt) and net.out_indices == (0, 1)


@pytest.mark.parametrize('kwargs,message', [
    (dict(arch='tinyy'), "Unknown ConvNeXt arch 'tinyy'; valid: atto, "),
    (dict(arch=dict(depths=[3, 3], channels=[96, 192, 384])),
     'depths \\[3, 3\\] has 2 entries, channels \\[96, 192, 384\\] has 3'),
    (dict(arch=dict(depths=[3, 3])), 'exactly the keys "depths" and'),
    (dict(out_indices=(0, 4)), 'valid indices are -4..3'),
    (dict(out_indices=(-5, )), 'valid indices are -4..3'),
    (dict(out_indices=(1, -3)), 'each once'),
    (dict(frozen_stages=5), 'use an int from 0 .* to 4'),
    (dict(frozen_stages=-2), 'use an int from 0 .* to 4'),
    (dict(drop_path_rate=1.0), r'must be in \[0, 1\)'),
])
def test_bad_arguments_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvNeXt(**kwargs)
