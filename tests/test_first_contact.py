"""What a user sees first: each tool's --help with examples, and no
warning at start (setuptools' pkg_resources notice printed twenty lines
at every start)."""
import os
import subprocess
import sys

import pytest

from tool_utils import ROOT

TOOLS = ['train', 'test', 'deploy', 'convert_checkpoint', 'get_flops',
         'demo', 'reproduce_tables']
WITH_EXAMPLES = {'train', 'test', 'deploy', 'convert_checkpoint'}


def start(tool, *args, folder='tools'):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    res = subprocess.run([sys.executable, ROOT / folder / f'{tool}.py',
                          *args], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    return res.returncode, res.stdout + res.stderr


def description(help_text):
    """What --help says the command does: its first sentence, whole."""
    text = ' '.join(help_text.split('\n\n')[1].split())
    assert text.endswith('.'), help_text[:1000]
    return text


@pytest.mark.parametrize('tool', TOOLS)
def test_help_is_clean_and_shows_examples(tool):
    code, out = start(tool, '--help')
    assert code == 0 and out.startswith('usage: '), out[:2000]
    assert 'Warning' not in out and 'pkg_resources' not in out, out[:2000]
    description(out)
    if tool in WITH_EXAMPLES:
        examples = out.split('examples:\n')[1].splitlines()
        assert all(line.strip().startswith(('python tools/', 'bash tools/'))
                   for line in examples if line.strip()), examples


def test_a_benchmarks_help_says_its_first_sentence_whole():
    code, out = start('deploy', '--help', folder='benchmarks')
    assert code == 0, out[:2000]
    assert description(out) == (
        "docs/deployment.md's table: Mask R-CNN T, Cascade Mask R-CNN T and "
        'UperNet T exported by tools/deploy.py and verified at their test '
        'resolution.')


def test_a_real_start_prints_only_its_one_line(tmp_path):
    """Past --help: the package, mmengine and the libraries imported, the
    config read, then one error line and nothing else."""
    code, out = start('train', ROOT / 'configs' /
                      'mask_rcnn_convnext_t_coco.py', '--work-dir', tmp_path)
    assert code == 2
    assert out.strip().splitlines() == [out.strip()], out[:3000]
    assert out.startswith('error: train_dataloader.dataset.data_root: ')
