"""Checkpoints as they are shipped today: safetensors (recognised by content),
Hugging Face transformers models, backbones and UperNet segmentors, ConvNeXt
V2 in every layout; each checked on outputs against the model that saved it,
and the paper's fine-tuning start of our configs."""
import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from convnext_mm import ConvNeXt
from convnext_mm.checkpoints import UnsafeCheckpointError
from convnext_mm.checkpoints import read_file
from helpers import captured_log, randomise_, rel_err, sparse_fcmae
from tool_utils import ROOT, run_tool

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
ATTO = dict(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320])


def fresh_norms(stage_outputs):
    """Stage outputs through identity-affine LayerNorms: the authors' dense
    backbone right after loading a classification checkpoint."""
    return [F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2]).permute(
        0, 3, 1, 2) for x in stage_outputs]


def load(path, v2=False, **init):
    net = ConvNeXt('atto', use_grn=v2, layer_scale_init_value=0. if v2 else
                   1e-6, init_cfg=dict(type='Pretrained',
                                       checkpoint=str(path), **init))
    with captured_log() as lines:
        net.init_weights()
    return net.eval(), lines[0]


def assert_outputs(net, expected, tol=2e-4):
    with torch.no_grad():
        outs = net(X)
    assert len(outs) == len(expected)
    for o, e in zip(outs, expected):
        assert o.shape == e.shape
        assert rel_err(o, e) < tol


def timm_model(name):
    import timm
    return randomise_(timm.create_model(name, pretrained=False)).eval()


def timm_stages(model):
    with torch.no_grad():
        return model.forward_intermediates(X, indices=[1, 2, 3, 4],
                                           intermediates_only=True)


@pytest.mark.parametrize('name,v2', [('convnext_atto', False),
                                     ('convnextv2_atto', True)])
def test_timm_safetensors_recognised_by_content(name, v2, tmp_path):
    model = timm_model(name)
    save_file(model.state_dict(), tmp_path / 'model.safetensors')
    # the same bytes under a torch-like name load the same way
    (tmp_path / 'weights.pth').write_bytes(
        (tmp_path / 'model.safetensors').read_bytes())
    stages = timm_stages(model)
    for path in (tmp_path / 'model.safetensors', tmp_path / 'weights.pth'):
        net, log = load(path, v2)
        assert log.splitlines()[0].endswith('layout timm')
        assert_outputs(net, fresh_norms(stages))


def authors_v2_state(model):
    """timm's ConvNeXt V2 under the authors' V2 release names, GRN params
    shaped (1, 1, 1, C) as they ship."""
    out = {}
    for key, value in model.state_dict().items():
        key = re.sub(r'^stem\.', 'downsample_layers.0.', key)
        key = re.sub(r'^stages\.(\d)\.downsample\.', r'downsample_layers.\1.',
                     key)
        key = re.sub(r'\.blocks\.', '.', key).replace('.conv_dw.', '.dwconv.')
        key = re.sub(r'\.mlp\.fc([12])\.', r'.pwconv\1.', key)
        if '.mlp.grn.' in key:
            key = key.replace('.mlp.grn.weight', '.grn.gamma').replace(
                '.mlp.grn.bias', '.grn.beta')
            value = value.reshape(1, 1, 1, -1)
        key = re.sub(r'^head\.norm\.', 'norm.', key)
        key = re.sub(r'^head\.fc\.', 'head.', key)
        out[key] = value
    return out


def test_authors_v2_release(tmp_path):
    model = timm_model('convnextv2_atto')
    torch.save({'model': authors_v2_state(model)}, tmp_path / 'v2.pt')
    net, log = load(tmp_path / 'v2.pt', v2=True)
    assert "classification release" in log
    assert_outputs(net, fresh_norms(timm_stages(model)))


@pytest.mark.parametrize('form', ['timm', 'authors', 'mmpretrain'])
def test_dense_fcmae_encoders_are_backbone_starts(form, tmp_path):
    """timm's convnextv2_*.fcmae, the authors' pt_only files and
    mmpretrain's *_3rdparty-fcmae_in1k: the encoder without head or final
    norm, which the report calls expected."""
    model = timm_model('convnextv2_atto')
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith('head.')}
    if form == 'authors':
        state = {k: v for k, v in authors_v2_state(model).items()
                 if not k.startswith(('head.', 'norm.'))}
    elif form == 'mmpretrain':
        state = {}
        for k, v in authors_v2_state(model).items():
            if k.startswith(('head.', 'norm.')):
                continue
            k = k.replace('.dwconv.', '.depthwise_conv.')
            k = re.sub(r'\.pwconv([12])\.', r'.pointwise_conv\1.', k)
            state['backbone.' + k] = v.reshape(-1) if '.grn.' in k else v
    torch.save({'state_dict': state}, tmp_path / 'fcmae.pth')
    net, log = load(tmp_path / 'fcmae.pth', v2=True)
    assert 'fresh (not in the checkpoint): norm0 (2), norm1 (2), norm2 (2), ' \
        'norm3 (2) (expected: the checkpoint has no final norm' in log
    assert 'left out' not in log
    assert_outputs(net, fresh_norms(timm_stages(model)))


def hf_config(v2=False, **kwargs):
    from transformers import ConvNextConfig, ConvNextV2Config
    return (ConvNextV2Config if v2 else ConvNextConfig)(**ATTO, **kwargs)


def hf_stage_outputs(model):
    with torch.no_grad():
        return model(X, output_hidden_states=True).hidden_states[1:]


def authors_grn(self, x):
    """The authors' GRN: the L2 norm over all pixels of a channel.
    transformers < 5 calls ``torch.linalg.norm(x, ord=2, dim=(1, 2))``, the
    largest singular value instead; 5.x computes the authors' vector norm."""
    gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    return self.weight * (x * nx) + self.bias + x


@pytest.mark.parametrize('v2', [False, True])
def test_transformers_classifier_save_pretrained(v2, tmp_path, monkeypatch):
    from transformers import (ConvNextForImageClassification,
                              ConvNextV2ForImageClassification)
    from transformers.models.convnextv2 import modeling_convnextv2
    monkeypatch.setattr(modeling_convnextv2.ConvNextV2GRN, 'forward',
                        authors_grn)
    cls = ConvNextV2ForImageClassification if v2 else \
        ConvNextForImageClassification
    model = randomise_(cls(hf_config(v2, num_labels=7))).eval()
    model.save_pretrained(tmp_path / 'hf')
    assert (tmp_path / 'hf' / 'model.safetensors').is_file()
    net, log = load(tmp_path / 'hf', v2)
    lines = log.splitlines()
    assert lines[0].endswith('layout Hugging Face transformers '
                             '(ConvNext / ConvNextV2)')
    assert len(lines) == 4 and "the paper's start" in lines[2]
    assert lines[3] == ('  left out (not part of this backbone): '
                        'classifier (2), norm (2)')
    base = model.convnextv2 if v2 else model.convnext
    assert_outputs(net, fresh_norms(hf_stage_outputs(base)))


def test_transformers_model_state_dict(tmp_path):
    from transformers import ConvNextModel
    model = randomise_(ConvNextModel(hf_config())).eval()
    torch.save(model.state_dict(), tmp_path / 'pytorch_model.bin')
    net, _ = load(tmp_path / 'pytorch_model.bin')
    assert_outputs(net, fresh_norms(hf_stage_outputs(model)))


def test_transformers_backbone_norms_are_dense_norms(tmp_path):
    from transformers import ConvNextBackbone
    model = randomise_(ConvNextBackbone(hf_config(
        out_features=['stage1', 'stage2', 'stage3', 'stage4']))).eval()
    save_file(model.state_dict(), tmp_path / 'backbone.safetensors')
    net, log = load(tmp_path / 'backbone.safetensors')
    assert log.splitlines()[1] == "  loaded: 132 of the backbone's 132 tensors"
    with torch.no_grad():
        expected = model(X).feature_maps
    assert_outputs(net, expected, tol=1e-5)


def tiny_upernet_cfg(num_classes=5):
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / 'configs' /
                              'upernet_convnext_t_ade20k.py'))
    cfg.model.backbone.update(arch='atto', init_cfg=None)
    cfg.model.decode_head.update(in_channels=[40, 80, 160, 320], channels=64,
                                 num_classes=num_classes)
    cfg.model.auxiliary_head.update(in_channels=160, channels=32,
                                    num_classes=num_classes)
    return cfg


def test_transformers_upernet_loads_whole_through_load_from(tmp_path):
    from mmengine.registry import init_default_scope
    from mmengine.runner.checkpoint import load_checkpoint
    from mmseg.registry import MODELS
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    from convnext_mm.launch import check_checkpoint as check_checkpoint_fits
    hf = UperNetForSemanticSegmentation(UperNetConfig(
        backbone_config=hf_config(
            out_features=['stage1', 'stage2', 'stage3', 'stage4']),
        hidden_size=64, auxiliary_channels=32, auxiliary_in_channels=160,
        num_labels=5))
    randomise_(hf).eval()
    with torch.no_grad():  # BN statistics that are not the identity
        for m in hf.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
    hf.save_pretrained(tmp_path / 'hf_upernet')

    init_default_scope('mmseg')
    cfg = tiny_upernet_cfg()
    model = MODELS.build(cfg.model).eval()
    check_checkpoint_fits(model, str(tmp_path / 'hf_upernet'))
    checkpoint = load_checkpoint(model, str(tmp_path / 'hf_upernet'),
                                 strict=True, logger='silent')
    # every tensor of the file has a place, every model tensor a value
    assert set(checkpoint['state_dict']) == set(model.state_dict())
    with torch.no_grad():
        ours = model.encode_decode(
            X, [dict(img_shape=X.shape[2:], pad_shape=X.shape[2:])])
        theirs = hf(pixel_values=X).logits
        features = hf.backbone(X).feature_maps
        aux_theirs = hf.auxiliary_head(features)
        aux_ours = model.auxiliary_head(model.extract_feat(X))
    assert rel_err(ours, theirs) < 1e-4
    assert rel_err(aux_ours, aux_theirs) < 1e-4


def test_transformers_upernet_folder_tests_through_the_tool(ade, tmp_path,
                                                          monkeypatch):
    """tools/test.py on a whole save_pretrained UperNet folder, without
    --allow-partial: the pre-flight examines it under mmseg's names (once
    converted), and the model the tool runs gives transformers' logits on
    the image the tool pre-processed."""
    from mmengine.config import Config
    from mmseg.models.segmentors import EncoderDecoder
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    from convnext_mm.synthetic.small_configs import small_seg_config
    from tool_utils import dumped
    cfg_path = dumped(small_seg_config, 'upernet_convnext_t_ade20k', ade,
                      tmp_path / 'work')
    model_cfg = Config.fromfile(str(cfg_path)).model
    hf = UperNetForSemanticSegmentation(UperNetConfig(
        backbone_config=hf_config(
            out_features=['stage1', 'stage2', 'stage3', 'stage4']),
        hidden_size=model_cfg.decode_head.channels,
        auxiliary_channels=model_cfg.auxiliary_head.channels,
        auxiliary_in_channels=model_cfg.auxiliary_head.in_channels,
        num_labels=model_cfg.decode_head.num_classes))
    randomise_(hf).eval()
    hf.save_pretrained(tmp_path / 'hf_upernet')
    seen = []
    forward = EncoderDecoder.encode_decode

    def recorded(self, inputs, batch_img_metas):
        logits = forward(self, inputs, batch_img_metas)
        seen.append((inputs.clone(), logits.clone()))
        return logits

    monkeypatch.setattr(EncoderDecoder, 'encode_decode', recorded)
    _, out = run_tool('test.py', cfg_path, tmp_path / 'hf_upernet',
                      '--work-dir', tmp_path / 'test')
    assert 'mIoU' in out and seen
    with torch.no_grad():
        for inputs, logits in seen[:3]:
            theirs = hf(pixel_values=inputs).logits
            assert rel_err(logits, theirs) < 1e-4


def test_fcmae_pretraining_checkpoint_converts_to_the_dense_encoder(
        tmp_path):
    """The authors' sparse training-form FCMAE checkpoint is a backbone
    start: the encoder converted as their fine-tuning does, the decoder
    left out, the stage norms fresh as for every FCMAE encoder."""
    ref = randomise_(ConvNeXt('atto', use_grn=True,
                              layer_scale_init_value=0.)).eval()
    state = sparse_fcmae(ref.state_dict())
    assert state['encoder.downsample_layers.1.1.kernel'].shape == (4, 40, 80)
    assert state['encoder.stages.0.0.dwconv.kernel'].shape == (49, 40)
    assert state['encoder.stages.0.0.grn.gamma'].shape == (1, 160)
    torch.save({'model': state, 'epoch': 1599}, tmp_path / 'fcmae.pt')
    net, line = load(tmp_path / 'fcmae.pt', v2=True)
    assert "FCMAE pre-training checkpoint (sparse encoder" in line
    assert 'left out (not part of this backbone): mask_token (1), proj ' \
        '(1), decoder (1), pred (1)' in line
    assert 'fresh (not in the checkpoint): norm0 (2), norm1 (2), norm2 (2),' \
        ' norm3 (2) (expected: the checkpoint has no final norm' in line
    for i in range(4):  # both with fresh (identity) stage norms
        getattr(ref, f'norm{i}').reset_parameters()
    with torch.no_grad():
        expected = ref(X)
    assert_outputs(net, expected)
    # a kernel of no square tap count names itself
    state['encoder.stages.0.0.dwconv.kernel'] = torch.zeros(48, 40)
    torch.save({'model': state}, tmp_path / 'bad.pt')
    with pytest.raises(ValueError, match=r'stages.0.0.dwconv.weight: a '
                       r'sparse kernel of shape \(48, 40\)'):
        load(tmp_path / 'bad.pt', v2=True)


def test_bad_files(tmp_path):
    # a safetensors file of another model
    save_file({'bert.embeddings.word_embeddings.weight': torch.zeros(8, 4),
               'cls.predictions.bias': torch.zeros(8)},
              tmp_path / 'bert.safetensors')
    with pytest.raises(ValueError, match='bert.safetensors: not a ConvNeXt '
                       'checkpoint layout.*First keys: bert.embeddings'):
        load(tmp_path / 'bert.safetensors')
    # a half-written one
    save_file(timm_model('convnext_atto').state_dict(),
              tmp_path / 'full.safetensors')
    data = (tmp_path / 'full.safetensors').read_bytes()
    for cut in (len(data) // 2, 200):
        (tmp_path / 'half.safetensors').write_bytes(data[:cut])
        with pytest.raises(ValueError, match='half.safetensors is a truncated '
                           'safetensors file.*fetch or save it again'):
            load(tmp_path / 'half.safetensors')
    # a Hugging Face config of another stage count
    from transformers import ConvNextModel
    model = ConvNextModel(hf_config())
    model.save_pretrained(tmp_path / 'hf3')
    config = json.loads((tmp_path / 'hf3' / 'config.json').read_text())
    config.update(num_stages=3, depths=[2, 2, 6], hidden_sizes=[40, 80, 160])
    (tmp_path / 'hf3' / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match='num_stages=3 .*has 4 stages'):
        load(tmp_path / 'hf3')
    # a V2 checkpoint into a V1 model
    from transformers import ConvNextV2Model
    ConvNextV2Model(hf_config(v2=True)).save_pretrained(tmp_path / 'hfv2')
    with pytest.raises(ValueError, match='V2 \\(with GRN\\) checkpoint but '
                       'the model is built with use_grn=False: set '
                       'use_grn=True'):
        load(tmp_path / 'hfv2')
    # a folder without weights
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'config.json').write_text(
        (tmp_path / 'hfv2' / 'config.json').read_text())
    with pytest.raises(FileNotFoundError, match='empty has a config.json but '
                       'none of model.safetensors'):
        read_file(tmp_path / 'empty')


def test_convert_tool_writes_safetensors(tmp_path):
    model = timm_model('convnext_atto')
    torch.save(model.state_dict(), tmp_path / 'timm.pth')
    out = tmp_path / 'ours.safetensors'
    _, text = run_tool('convert_checkpoint.py', tmp_path / 'timm.pth', out)
    assert 'wrote 126 backbone tensors' in text  # with the final norm
    assert out.read_bytes()[8:9] == b'{'  # safetensors, not a pickle
    converted = read_file(out)
    assert 'backbone.norm.weight' in converted  # the classifier's final norm
    net, log = load(out)
    assert_outputs(net, fresh_norms(timm_stages(model)))
    net, _ = load(out, final_norm='copy')
    expected = fresh_norms(timm_stages(model))
    with torch.no_grad():
        expected[3] = model.head.norm(timm_stages(model)[3])
    assert_outputs(net, expected)


DENSE = sorted(p.stem for p in (ROOT / 'configs').glob('*.py')
               if p.stem.startswith(('mask_rcnn', 'cascade', 'upernet')))


@pytest.mark.parametrize('leaf', DENSE)
def test_configs_start_where_the_paper_started(leaf, tmp_path_factory):
    """Our COCO/ADE20K configs, given a classification checkpoint, leave
    norm0..norm3 at ones/zeros as the authors' release did."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / 'configs' / f'{leaf}.py'))
    timm_name = 'convnextv2_atto' if cfg.model.backbone.get('use_grn') \
        else 'convnext_atto'
    path = tmp_path_factory.getbasetemp() / f'cls_{timm_name}.pth'
    if not path.exists():
        torch.save(timm_model(timm_name).state_dict(), path)
    backbone = dict(cfg.model.backbone)
    assert backbone['init_cfg']['checkpoint'].startswith(
        'https://dl.fbaipublicfiles.com/convnext/')
    assert 'final_norm' not in backbone['init_cfg']
    backbone.update(arch='atto', init_cfg=dict(backbone['init_cfg'],
                                               checkpoint=str(path)))
    backbone.pop('type')
    net = ConvNeXt(**backbone)
    with captured_log():
        net.init_weights()
    for i in range(4):
        norm = getattr(net, f'norm{i}')
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_safe_loading_still_refuses_pickles_under_any_name(tmp_path):
    import pickle
    (tmp_path / 'evil.safetensors').write_bytes(
        pickle.dumps(print, protocol=2))
    with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
        read_file(tmp_path / 'evil.safetensors')
    torch.save({'model': torch.nn.Linear(2, 2)}, tmp_path / 'module.bin')
    with pytest.raises(UnsafeCheckpointError, match='refusing to load'):
        read_file(tmp_path / 'module.bin')
