"""A checkpoint of another task (a UperNet's through a Mask R-CNN config and
the reverse) is refused in one line by tools/test.py, tools/deploy.py and
the Inferencer helper, naming the parts it leaves without weights, unless
``--allow-partial``/``allow_partial=True`` says it is intended."""
import numpy as np
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from convnext_mm.inference import inferencer
from convnext_mm.synthetic.small_configs import (dump_config,
                                                 small_det_config,
                                                 small_seg_config)
from tool_utils import metric, needs_mmdeploy, run_tool


@pytest.fixture(scope='module')
def models(coco, ade, tmp_path_factory):
    """A Mask R-CNN's and a UperNet's config and checkpoint: the models as
    built (the refusals read which parts a file has weights for, not what
    the weights are)."""
    root = tmp_path_factory.mktemp('wrong_task')
    found = {}
    for task, scope, builder, leaf, data in (
            ('det', 'mmdet', small_det_config, 'mask_rcnn_convnext_t_coco',
             coco),
            ('seg', 'mmseg', small_seg_config, 'upernet_convnext_t_ade20k',
             ade)):
        cfg = builder(leaf, data, root / task)
        init_default_scope(scope)
        model = MODELS.build(cfg.model)
        path = root / f'{task}.pth'
        torch.save({'state_dict': model.state_dict()}, path)
        found[task] = (dump_config(cfg, root / task, leaf), path)
    return found


def refusal(tool, cfg, ckpt, *more):
    code, out = run_tool(tool, cfg, ckpt, *more, check=False)
    lines = out.strip().splitlines()
    assert code == 2 and lines[-1].startswith('error: '), out[-3000:]
    assert 'passed' not in out and 'Traceback' not in out
    return lines[-1]


def test_test_tool_refuses_another_tasks_checkpoint(models):
    det_cfg, det_ckpt = models['det']
    seg_cfg, seg_ckpt = models['seg']
    line = refusal('test.py', det_cfg, seg_ckpt)
    assert line.startswith(
        f'error: {seg_ckpt} has no weights for neck (')
    assert 'rpn_head (' in line and 'roi_head (' in line
    assert '(it has decode_head (' in line and 'auxiliary_head (' in line
    assert line.endswith('or pass --allow-partial to run with those parts '
                         'at their initial weights')
    line = refusal('test.py', seg_cfg, det_ckpt)
    assert 'has no weights for decode_head (' in line and \
        '(it has neck (' in line
    # intended: the user says so, and gets the (meaningless) numbers
    _, out = run_tool('test.py', seg_cfg, det_ckpt, '--allow-partial')
    assert 0. <= metric(out, 'mIoU') <= 100.


def test_resume_refuses_another_model_or_bare_weights(models, tmp_path):
    """--resume CKPT: another model's checkpoint, or its own model's weights
    without the training state, in one line before the runner starts (not
    mmengine's "different number of parameter groups" or KeyError 'meta')."""
    det_cfg, det_ckpt = models['det']
    seg_cfg, seg_ckpt = models['seg']
    work = tmp_path / 'work'
    line = refusal('train.py', seg_cfg, '--resume', det_ckpt, '--work-dir',
                   work)
    assert line.startswith(f'error: {det_ckpt} has no weights for '
                           'decode_head (')
    assert line.endswith('Give the checkpoint trained with this config')
    line = refusal('train.py', seg_cfg, '--resume', seg_ckpt, '--work-dir',
                   work)
    assert line == (
        f'error: --resume: {seg_ckpt} holds state_dict, not the training '
        'state a run resumes from (no meta or message_hub); resume from a '
        'checkpoint tools/train.py saved, or start from these weights with '
        f'--cfg-options load_from={seg_ckpt} and no --resume')
    assert not work.exists()


@needs_mmdeploy
def test_deploy_refuses_another_tasks_checkpoint(models, tmp_path):
    det_cfg, _ = models['det']
    _, seg_ckpt = models['seg']
    line = refusal('deploy.py', det_cfg, seg_ckpt, '--out', tmp_path / 'x')
    assert 'has no weights for neck (' in line and '--allow-partial' in line
    assert not (tmp_path / 'x').exists()


def test_inferencer_helper(models, coco):
    det_cfg, det_ckpt = models['det']
    seg_cfg, seg_ckpt = models['seg']
    with pytest.raises(ValueError, match='has no weights for neck') as err:
        inferencer(str(det_cfg), str(seg_ckpt), device='cpu')
    assert str(err.value).endswith('or pass allow_partial=True to run with '
                                   'those parts at their initial weights')
    missing = f'cuda:{torch.cuda.device_count()}'  # never there
    with pytest.raises(ValueError, match=f"device='{missing}': this machine "
                       "has .*; use device='cpu'"):
        inferencer(str(det_cfg), str(det_ckpt), device=missing)
    with pytest.raises(ValueError, match='is not a torch device'):
        inferencer(str(det_cfg), str(det_ckpt), device='abcd')
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3),
                                              dtype=np.uint8)
    det = inferencer(str(det_cfg), str(det_ckpt), device='cpu',
                     show_progress=False)
    pred = det(image)['predictions'][0]
    assert set(pred) >= {'labels', 'scores', 'bboxes', 'masks'}
    seg = inferencer(str(seg_cfg), str(seg_ckpt), device='cpu')
    labels = seg(image)['predictions']
    assert labels.shape == (96, 128)
    partial = inferencer(str(seg_cfg), str(det_ckpt), device='cpu',
                         allow_partial=True)
    assert partial(image)['predictions'].shape == (96, 128)
