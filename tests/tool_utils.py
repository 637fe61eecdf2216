"""Run the project's tools like a user does, and read what they wrote."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shrink_sizes(node, factor):
    """Scale every resize scale and crop size in a pipeline config."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ('scale', 'crop_size') and isinstance(
                    value, (tuple, list)):
                value = tuple(int(v * factor) for v in value)
            elif key in ('scale', 'crop_size') and isinstance(value, int):
                value = int(value * factor)
            elif key == 'scales':
                value = [tuple(int(v * factor) for v in s) for s in value]
            out[key] = shrink_sizes(value, factor)
        return out
    if isinstance(node, list):
        return [shrink_sizes(v, factor) for v in node]
    return node


def short_schedule(cfg, work_dir, max_iters, ckpt_interval, lr):
    """A few iterations with checkpoints, a short warm-up and per-iteration
    logs, in place of a config's full schedule."""
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                         val_interval=10**6)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
             end=3)
    ]
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                        interval=ckpt_interval,
                                        by_epoch=False)
    cfg.default_hooks.logger.interval = 1
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)
    cfg.work_dir = str(work_dir)


def run_tool(tool, *args, check=True, timeout=600):
    """Run ``tools/<tool>.py`` like a user does; return the output text."""
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2')
    res = subprocess.run([sys.executable, str(ROOT / 'tools' / tool)] +
                         [str(a) for a in args], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=timeout)
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
