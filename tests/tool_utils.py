"""Run the project's tools like a user does, and read what they wrote."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# mmdeploy 1.3.1 has wheels for x86-64 Linux and Windows only
needs_mmdeploy = pytest.mark.skipif(
    importlib.util.find_spec('mmdeploy') is None,
    reason='mmdeploy is not installed (no wheels for this machine)')


def dumped(builder, leaf, data, work_dir, **kwargs):
    """A small config from ``convnext_mm.synthetic.small_configs``, written
    to disk for the tools; returns its path."""
    from convnext_mm.synthetic.small_configs import dump_config
    return dump_config(builder(leaf, data, work_dir, **kwargs), work_dir, leaf)


def trained(tmp_path_factory, name, builder, leaf, data, **kwargs):
    """Train a small config (``builder`` from
    ``convnext_mm.synthetic.small_configs``) with tools/train.py in a new
    work dir ``runs*/name``; returns (config path, work dir, output)."""
    work = tmp_path_factory.mktemp('runs') / name
    cfg = dumped(builder, leaf, data, work, **kwargs)
    _, out = run_tool('train.py', cfg)
    return cfg, work, out


def run_tool(tool, *args, check=True, timeout=600):
    """Run ``tools/<tool>.py`` like a user does; return the output text."""
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2')
    res = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / tool)] + [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout)
    out = res.stdout + res.stderr
    if check:
        assert res.returncode == 0, out[-4000:]
    return res.returncode, out


def train_losses(work_dir):
    """Per-iteration total losses from mmengine's scalars.json."""
    files = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    assert files, f'no scalars.json under {work_dir}'
    losses = []
    for line in files[-1].read_text().splitlines():
        record = json.loads(line)
        if 'loss' in record:
            losses.append((record['iter'], record['loss']))
    return losses


def metric(output, name):
    """A metric value from a test run's log, e.g. 'coco/segm_mAP'."""
    found = re.findall(rf'{re.escape(name)}: (-?[0-9.]+)', output)
    assert found, f'{name} not in output:\n{output[-3000:]}'
    return float(found[-1])
