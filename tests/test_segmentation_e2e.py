"""ADE20K configs end to end on generated data: training, single-scale and
multi-scale + flip mIoU through tools/ and through mim, and bad input."""
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from convnext_mm.checkpoints import safe_torch_load
from convnext_mm.synthetic.small_configs import small_seg_config
from tool_utils import dumped, metric, run_tool, train_losses

LEAF = 'upernet_convnext_t_ade20k'


def test_upernet_trains_with_the_released_recipe(trained_upernet):
    _, work, out = trained_upernet
    assert 'ConvNeXtLRDecayConstructor: stage_wise, decay_rate 0.9, ' \
        'num_layers 6' in out
    losses = [loss for _, loss in train_losses(work)]
    assert len(losses) == 20
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses
    assert safe_torch_load(work / 'iter_20.pth')['meta']['iter'] == 20


def test_single_and_multi_scale_miou(trained_upernet, tmp_path):
    cfg, work, _ = trained_upernet
    ss_dir, ms_dir = tmp_path / 'ss', tmp_path / 'ms'
    _, single = run_tool('test.py', cfg, work / 'iter_20.pth',
                         '--work-dir', ss_dir)
    _, multi = run_tool('test.py', cfg, work / 'iter_20.pth', '--tta',
                        '--work-dir', ms_dir)
    ss, ms = metric(single, 'mIoU'), metric(multi, 'mIoU')
    assert 0. <= ss <= 100. and 0. <= ms <= 100.
    # six scales x two flips went through the model for every image
    assert ss != ms
    # the tables file each run by what it ran: both dumped configs define
    # tta_model, only the --tta run used it
    _, out = run_tool('reproduce_tables.py', '--tables', '4', '--configs',
                      LEAF, '--logs', f'{LEAF}={ss_dir}', f'{LEAF}={ms_dir}')
    row = next(line for line in out.splitlines()
               if line.startswith(f'| {LEAF} |'))
    assert row.endswith(f'| 46.0 / {ss:.1f} | 46.7 / {ms:.1f} |'), row


def test_safetensors_checkpoint_tests_the_same(trained_upernet, tmp_path):
    """tools/test.py reads a safetensors file (by content, whatever its
    name) and scores what the .pth scores."""
    from convnext_mm.checkpoints.saving import write_safetensors
    cfg, work, _ = trained_upernet
    state = safe_torch_load(work / 'iter_20.pth')['state_dict']
    with open(tmp_path / 'iter_20.bin', 'wb') as out:
        write_safetensors(state, out)
    _, pth = run_tool('test.py', cfg, work / 'iter_20.pth')
    _, st = run_tool('test.py', cfg, tmp_path / 'iter_20.bin')
    assert metric(st, 'mIoU') == metric(pth, 'mIoU')
    assert metric(st, 'aAcc') == metric(pth, 'aAcc')


def test_mim_train_and_test(ade, tmp_path):
    """mim runs mmseg's own train and test scripts; our base configs give
    them our runner, so our pre-flight: one line before any log for bad
    data, mixed precision off without CUDA, the work dir's lock held to the
    end of training."""
    import subprocess
    mim = str(Path(sys.executable).parent / 'mim')
    work = tmp_path / 'mim'
    cfg = dumped(small_seg_config, LEAF, ade, work, max_iters=4,
                 ckpt_interval=4)

    def run(*args):
        res = subprocess.run([*map(str, args)], capture_output=True,
                             text=True, cwd=tmp_path, timeout=600)
        return res.returncode, res.stdout + res.stderr

    # mmseg's script itself (mim adds a traceback of its own to any failed
    # run: its CalledProcessError)
    import mmseg
    script = Path(mmseg.__file__).parent / '.mim' / 'tools' / 'train.py'
    code, out = run(sys.executable, script, cfg, '--work-dir', work,
                    '--cfg-options',
                    f'train_dataloader.dataset.data_root={tmp_path}/none/')
    errors = [line for line in out.splitlines() if line.startswith('error:')]
    assert code == 2 and len(errors) == 1, out[-3000:]
    assert f'{tmp_path}/none/' in errors[0] and 'Traceback' not in out
    assert 'System environment' not in out, out[-3000:]
    code, out = run(mim, 'train', 'mmseg', cfg, '--work-dir', work)
    assert code == 0, out[-3000:]
    assert 'no CUDA: mixed precision off' in out
    assert (work / 'iter_4.pth').is_file()
    assert not (work / 'convnext_mm.lock').exists()
    code, out = run(mim, 'test', 'mmseg', cfg, '--checkpoint',
                    work / 'iter_4.pth')
    assert code == 0, out[-3000:]
    assert 0. <= metric(out, 'mIoU') <= 100.


def _copy_data(ade, tmp_path):
    root = tmp_path / 'ade_copy'
    shutil.copytree(ade['data_root'], root)
    return dict(ade, data_root=str(root) + '/'), root


def _label(root, split='validation'):
    return sorted((root / 'annotations' / split).glob('*.png'))[0]


def test_missing_data_root(ade, tmp_path):
    cfg = dumped(small_seg_config, LEAF, ade, tmp_path / 'w')
    code, out = run_tool('train.py',
                         cfg,
                         '--cfg-options',
                         'train_dataloader.dataset.data_root=/no/ade/',
                         check=False)
    assert code != 0 and '/no/ade/ does not exist' in out
    assert 'Traceback' not in out


def test_label_map_of_wrong_size(ade, tmp_path):
    data, root = _copy_data(ade, tmp_path)
    label = _label(root, 'training')
    cv2.imwrite(str(label), np.ones((100, 90), np.uint8))
    cfg = dumped(small_seg_config, LEAF, data, tmp_path / 'w')
    code, out = run_tool('train.py', cfg, check=False)
    assert code != 0
    assert f'label map {label} is 90x100 but its image' in out
    assert 'is 128x128' in out


def test_label_map_of_wrong_dtype(ade, tmp_path):
    data, root = _copy_data(ade, tmp_path)
    label = _label(root)
    cv2.imwrite(str(label), np.ones((128, 128), np.uint16) * 300)
    cfg = dumped(small_seg_config, LEAF, data, tmp_path / 'w')
    code, out = run_tool('test.py', cfg, tmp_path / 'unused.pth', check=False)
    assert code != 0
    assert "has PIL mode 'I;16'" in out and 'single-channel 8-bit' in out


def test_checkpoint_of_another_arch(trained_upernet):
    cfg, work, _ = trained_upernet
    code, out = run_tool('test.py',
                         cfg,
                         work / 'iter_20.pth',
                         '--cfg-options',
                         'model.backbone.arch=femto',
                         'model.decode_head.in_channels=[48,96,192,384]',
                         'model.auxiliary_head.in_channels=192',
                         check=False)
    assert code != 0 and "set arch='atto'" in out
