"""Run the project's tools as a user does, and read what they wrote.

``run_tool`` calls a tool's ``main(argv)`` in this process (no interpreter
start, no second import of torch and the OpenMMLab libraries), with what it
prints captured and what a run changes in the process put back afterwards.
``run_process`` starts it as a separate process, for the tests where the
process is the point (first contact, kills, distributed runs)."""
import contextlib
import gc
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.utils import ManagerMixin

from convnext_mm.synthetic.small_configs import dump_config

ROOT = Path(__file__).resolve().parent.parent
# mmdeploy 1.3.1 has wheels for x86-64 Linux and Windows only
needs_mmdeploy = pytest.mark.skipif(
    importlib.util.find_spec('mmdeploy') is None,
    reason='mmdeploy is not installed (no wheels for this machine)')
_MODULES = {}


def tool_module(tool):
    """``tools/<tool>.py`` as a module, loaded once."""
    name = tool[:-3] if tool.endswith('.py') else tool
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(
            f'convnext_mm_tools_{name}', ROOT / 'tools' / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


def tool_main(tool):
    """``main`` of ``tools/<tool>.py``."""
    return tool_module(tool).main


def _managers(cls=ManagerMixin):
    """Every class with an mmengine instance registry (loggers, message
    hubs, default scopes, visualizers)."""
    for sub in cls.__subclasses__():
        yield sub
        yield from _managers(sub)


@contextlib.contextmanager
def as_a_new_process(out):
    """Send what the code inside prints to ``out``; afterwards put back
    what an mmengine run changes in its process: the working folder, the
    environment, torch's deterministic mode and threads, warning filters,
    and the named loggers, message hubs, scopes and visualizers it made
    (the next run's logs must not go to this one's files); default scopes
    made before it are hidden while it runs."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    threads = torch.get_num_threads()
    before = {cls: set(cls._instance_dict) for cls in _managers()}
    # a new process has no default scope: one an earlier test left would
    # make the run warn that it replaces it
    scopes = dict(DefaultScope._instance_dict)
    DefaultScope._instance_dict.clear()
    os.chdir(ROOT)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            warnings.simplefilter('ignore')
            # the process's first logger: what is printed before the
            # runner makes its own goes to ``out`` too
            MMLogger.get_instance(f'tool_{id(out)}', logger_name='mmengine')
            yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.use_deterministic_algorithms(deterministic[0],
                                           warn_only=deterministic[1])
        torch.set_num_threads(threads)
        # a class first imported by the run (mmdet's visualizer) has only
        # the run's instances
        for cls in _managers():
            for name in set(cls._instance_dict) - before.get(cls, set()):
                instance = cls._instance_dict.pop(name)
                for handler in getattr(instance, 'handlers', [])[:]:
                    handler.close()
                    instance.removeHandler(handler)
        DefaultScope._instance_dict.clear()
        DefaultScope._instance_dict.update(scopes)
        gc.collect()


def run_tool(tool, *args, check=True):
    """Run ``tools/<tool>`` with ``args`` in this process, as its command
    line would; return (exit status, everything it printed)."""
    out = io.StringIO()
    with as_a_new_process(out):
        try:
            tool_main(tool)([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
            if code is None:
                code = 0
            elif not isinstance(code, int):  # sys.exit('message')
                print(code, file=sys.stderr)
                code = 1
        except Exception:  # noqa: BLE001  as the interpreter would print it
            traceback.print_exc()
            code = 1
    text = out.getvalue()
    if check:
        assert code == 0, text[-4000:]
    return code, text


def run_process(tool, *args, check=True, timeout=600, env=None):
    """Run ``tools/<tool>`` as a separate process; return (exit status,
    its output). ``timeout`` only guards against a hang."""
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2',
               **(env or {}))
    res = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / tool)] + [str(a) for a in args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    out = res.stdout + res.stderr
    if check:
        assert res.returncode == 0, out[-4000:]
    return res.returncode, out


def dumped(builder, leaf, data, work_dir, **kwargs):
    """A small config from ``convnext_mm.synthetic.small_configs``, written
    to disk for the tools; returns its path."""
    return dump_config(builder(leaf, data, work_dir, **kwargs), work_dir, leaf)


def without_validation(cfg):
    """A training config whose runs are tested by tools/test.py: no
    validation pass at the end of training."""
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def trained(tmp_path_factory, name, builder, leaf, data, pretrained=None,
            **kwargs):
    """Train a small config (``builder`` from
    ``convnext_mm.synthetic.small_configs``; its backbone started from the
    file ``pretrained``, if given) with tools/train.py in a new work dir
    ``runs*/name``; returns (config path, work dir, output)."""
    work = tmp_path_factory.mktemp('runs') / name
    cfg = without_validation(builder(leaf, data, work, **kwargs))
    if pretrained:
        cfg.model.backbone.init_cfg = dict(type='Pretrained',
                                           checkpoint=str(pretrained))
    path = dump_config(cfg, work, leaf)
    _, out = run_tool('train.py', path)
    return path, work, out


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
