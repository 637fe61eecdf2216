"""Launching: the arguments train and test share, and the runner built
after every pre-flight check has passed."""
import argparse
import os
import os.path as osp
from typing import Callable, List

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..errors import user_errors
from .config import adapt_to_device, load_config
from .preflight import (check_checkpoint, check_data, check_model,
                        check_resume)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The arguments ``tools/train.py`` and ``tools/test.py`` share."""
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir',
                        help='where logs (and checkpoints) go (default: '
                        'work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, KEY=VALUE')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def build_runner(cfg: Config):
    """A runner from the config, as the libraries' own tools build it."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def prepare_runner(args: argparse.Namespace, splits: Callable[[Config],
                                                              List[str]],
                   adjust: Callable[[Config], None] = lambda cfg: None,
                   training: bool = False):
    """Load, check and adapt the config of ``args``, then build its runner.

    ``adjust`` applies the tool's own options to the config; ``splits``
    names the dataloaders whose data must exist. Bad input (the config, its
    model, data, checkpoints) ends the process with one ``error: ...`` line
    and exit code 2 before the runner starts.
    """
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    with user_errors():
        cfg = load_config(args.config, args.cfg_options)
        adjust(cfg)
        cfg.launcher = args.launcher
        cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
            'work_dirs', osp.splitext(osp.basename(args.config))[0])
        check_data(cfg, splits(cfg))
        model = check_model(cfg, training)
        if cfg.get('resume'):
            check_resume(cfg, model)
        elif cfg.get('load_from'):
            check_checkpoint(model, cfg.load_from)
        del model
    adapt_to_device(cfg)
    return build_runner(cfg)
