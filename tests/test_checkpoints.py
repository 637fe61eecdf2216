"""Every common ConvNeXt checkpoint layout loads through init_cfg, checked on
outputs against the model that produced it."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F

from convnext_mm import ConvNeXt
from convnext_mm.checkpoints import detect_layout, safe_torch_load
from helpers import (captured_log, mmpretrain_convnext, randomise_, rel_err,
                     reset_norms_)
from tool_utils import run_tool

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def load_via_init_cfg(path, arch='atto', final_norm=None, **kwargs):
    init = dict(type='Pretrained', checkpoint=str(path))
    if final_norm:
        init['final_norm'] = final_norm
    net = ConvNeXt(arch, init_cfg=init, **kwargs)
    net.init_weights()
    return net.eval()


def assert_same_outputs(net, expected, tol=1e-5):
    with torch.no_grad():
        outs = net(X)
    for o, e in zip(outs, expected):
        assert o.shape == e.shape
        assert rel_err(o, e) < tol


def fresh_norm_outputs(stage_outputs):
    """The authors' dense backbone after a classification checkpoint: every
    stage output through a LayerNorm with identity affine."""
    return [F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2]).permute(
        0, 3, 1, 2) for x in stage_outputs]


@pytest.fixture(scope='module')
def reference():
    """mmpretrain ConvNeXt-atto with random weights; its outputs, those with
    the authors' fresh norms, and those with only norm3 kept (mmdet 3.x)."""
    ref = randomise_(mmpretrain_convnext('atto', layer_scale_init_value=1.))
    ref.eval()
    with torch.no_grad():
        outs = ref(X)
    fresh_ref = reset_norms_(copy.deepcopy(ref),
                             ('norm0', 'norm1', 'norm2', 'norm3'))
    copy_ref = reset_norms_(copy.deepcopy(ref))
    with torch.no_grad():
        fresh_outs, copy_outs = fresh_ref(X), copy_ref(X)
    return ref, outs, fresh_outs, copy_outs


def authors_names(state):
    """mmpretrain names -> the authors' (as in their own release code)."""
    out = {}
    for k, v in state.items():
        k = k.replace('.depthwise_conv.', '.dwconv.')
        k = re.sub(r'\.pointwise_conv([12])\.', r'.pwconv\1.', k)
        out[k] = v
    return out


def test_mmpretrain_layout(reference, tmp_path):
    ref, outs, _, _ = reference
    state = {f'backbone.{k}': v for k, v in ref.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(10, 320)
    state['head.fc.bias'] = torch.zeros(10)
    torch.save({'meta': {'epoch': 3}, 'state_dict': state}, tmp_path / 'm.pth')
    assert_same_outputs(load_via_init_cfg(tmp_path / 'm.pth'), outs)


def test_authors_classification_layout(reference, tmp_path):
    ref, _, fresh_outs, copy_outs = reference
    state = authors_names(ref.state_dict())
    # the classifier carries only its final norm (applied after pooling)
    for i in range(3):
        del state[f'norm{i}.weight'], state[f'norm{i}.bias']
    state['norm.weight'] = state.pop('norm3.weight')
    state['norm.bias'] = state.pop('norm3.bias')
    state['head.weight'] = torch.zeros(1000, 320)
    state['head.bias'] = torch.zeros(1000)
    torch.save({'model': state, 'epoch': 299}, tmp_path / 'cls.pth')
    assert detect_layout(state) == 'authors_cls'
    with captured_log() as lines:
        net = load_via_init_cfg(tmp_path / 'cls.pth')
    # the authors' rule: norm3 stays ones/zeros, features are the stage
    # outputs through identity-affine LayerNorms
    assert torch.equal(net.norm3.weight, torch.ones(320))
    assert torch.equal(net.norm3.bias, torch.zeros(320))
    assert_same_outputs(net, fresh_outs)
    with torch.no_grad():
        stages = ConvNeXt('atto', out_indices=(0, 1, 2, 3))
        stages.load_state_dict(net.state_dict())
        for i in range(4):
            setattr(stages, f'norm{i}', torch.nn.Identity())
        assert_same_outputs(net, fresh_norm_outputs(stages.eval()(X)))
    log = lines[0]
    assert log.splitlines() == [
        f"ConvNeXt: {tmp_path / 'cls.pth'}: layout the ConvNeXt authors' "
        'classification release',
        "  loaded: 124 of the backbone's 132 tensors",
        '  fresh (not in the checkpoint): norm0 (2), norm1 (2), norm2 (2), '
        "norm3 (2) (the paper's start: the classifier's final norm is not "
        "copied into norm3; init_cfg final_norm='copy' does, as mmdet 3.x)",
        '  left out (not part of this backbone): head (2), norm (2)']
    # mmdet 3.x's start, behind the switch
    with captured_log() as lines:
        net = load_via_init_cfg(tmp_path / 'cls.pth', final_norm='copy')
    assert_same_outputs(net, copy_outs)
    assert "final_norm='copy': norm3 holds the classifier's final norm" in \
        lines[0]
    with pytest.raises(ValueError, match="final_norm='keep'.*'fresh'.*'copy'"):
        load_via_init_cfg(tmp_path / 'cls.pth', final_norm='keep')


def test_authors_dense_layout(reference, tmp_path):
    ref, outs, _, _ = reference
    state = {f'backbone.{k}': v
             for k, v in authors_names(ref.state_dict()).items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 40, 1, 1)
    state['rpn_head.rpn_conv.weight'] = torch.zeros(256, 256, 3, 3)
    torch.save({'meta': {'CLASSES': ('a', 'b')}, 'state_dict': state,
                'optimizer': {'state': {}, 'param_groups': []}},
               tmp_path / 'det.pth')
    with captured_log() as lines:
        net = load_via_init_cfg(tmp_path / 'det.pth')
    assert_same_outputs(net, outs)
    log = '\n'.join(lines)
    assert 'fresh' not in log
    assert 'left out (not part of this backbone): neck (1), rpn_head (1)' \
        in log


@pytest.mark.parametrize('name,arch', [('convnext_atto', 'atto'),
                                       ('convnext_tiny', 'tiny'),
                                       ('convnextv2_atto', 'atto')])
def test_timm_layout(name, arch, tmp_path):
    import timm
    model = randomise_(timm.create_model(name, pretrained=False)).eval()
    torch.save(model.state_dict(), tmp_path / 'timm.pth')
    with torch.no_grad():
        stages = model.forward_intermediates(X, indices=[1, 2, 3, 4],
                                             intermediates_only=True)
        expected = fresh_norm_outputs(stages)
    v2 = name.startswith('convnextv2')
    net = load_via_init_cfg(tmp_path / 'timm.pth', arch, use_grn=v2,
                            layer_scale_init_value=0. if v2 else 1e-6)
    assert_same_outputs(net, expected, tol=2e-4)
    with torch.no_grad():
        expected[3] = model.head.norm(stages[3])
    net = load_via_init_cfg(tmp_path / 'timm.pth', arch, final_norm='copy',
                            use_grn=v2,
                            layer_scale_init_value=0. if v2 else 1e-6)
    assert_same_outputs(net, expected, tol=2e-4)


def test_torchvision_layout(tmp_path):
    import torchvision
    model = randomise_(torchvision.models.convnext_tiny(weights=None)).eval()
    torch.save(model.state_dict(), tmp_path / 'tv.pth')
    with torch.no_grad():
        x = model.features[0](X)
        stages = []
        for i in range(4):
            x = model.features[2 * i + 1](x)
            stages.append(x)
            if i < 3:
                x = model.features[2 * i + 2](x)
        expected = fresh_norm_outputs(stages)
    net = load_via_init_cfg(tmp_path / 'tv.pth', 'tiny')
    # float ops in another order: ~6e-5 after 18 random blocks; a wrong
    # mapping gives O(1) errors
    assert_same_outputs(net, expected, tol=2e-4)
    with torch.no_grad():
        expected[3] = model.classifier[0](stages[3])
    net = load_via_init_cfg(tmp_path / 'tv.pth', 'tiny', final_norm='copy')
    assert_same_outputs(net, expected, tol=2e-4)


def test_checkpoint_of_another_size_names_the_arch(tmp_path):
    torch.save(ConvNeXt('tiny').state_dict(), tmp_path / 'tiny.pth')
    with pytest.raises(ValueError, match=r"holds a ConvNeXt of arch 'tiny' "
                       r".*the model is arch 'atto'.*set arch='tiny'"):
        load_via_init_cfg(tmp_path / 'tiny.pth', 'atto')


def test_v2_checkpoint_into_v1_model(tmp_path):
    torch.save(ConvNeXt('atto', use_grn=True).state_dict(),
               tmp_path / 'v2.pth')
    with pytest.raises(ValueError, match='V2 .*set use_grn=True'):
        load_via_init_cfg(tmp_path / 'v2.pth', 'atto')


def test_missing_unknown_and_non_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='checkpoint not found: .*'
                       'nope.pth'):
        load_via_init_cfg(tmp_path / 'nope.pth')
    (tmp_path / 'junk.pth').write_bytes(b'\x00\x01 not a checkpoint')
    with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
        load_via_init_cfg(tmp_path / 'junk.pth')
    torch.save({'conv1.weight': torch.zeros(1), 'fc.weight': torch.zeros(1)},
               tmp_path / 'resnet.pth')
    with pytest.raises(ValueError, match='not a ConvNeXt checkpoint layout'
                       '.*Recognised: .*torchvision'):
        load_via_init_cfg(tmp_path / 'resnet.pth')


def test_convert_checkpoint_tool(tmp_path):
    import torchvision
    model = randomise_(torchvision.models.convnext_tiny(weights=None))
    torch.save(model.state_dict(), tmp_path / 'tv.pth')
    out = tmp_path / 'ours.pth'
    _, text = run_tool('convert_checkpoint.py', tmp_path / 'tv.pth', out)
    assert 'torchvision, ConvNeXt arch tiny' in text
    converted = safe_torch_load(out)
    assert detect_layout(converted['state_dict']) == 'authors_dense'
    a = load_via_init_cfg(tmp_path / 'tv.pth', 'tiny')
    b = load_via_init_cfg(out, 'tiny')
    with torch.no_grad():
        for o, e in zip(a(X), b(X)):
            assert torch.equal(o, e)
    # never overwrite a user's file without --force
    before = out.read_bytes()
    code, text = run_tool('convert_checkpoint.py', tmp_path / 'tv.pth', out,
                          check=False)
    assert code != 0 and 'exists' in text
    assert out.read_bytes() == before
