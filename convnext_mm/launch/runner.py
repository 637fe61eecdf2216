"""Launching: the arguments train and test share, and the runner built
after every pre-flight check has passed."""
import argparse
import os
import os.path as osp
import tempfile
from typing import Callable, List

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoints.saving import NO_SPACE, NoSpaceError
from ..errors import user_errors
from ..training import use_safe_checkpoints
from .config import adapt_to_device, load_config
from . import lock
from .data import MODES, check_data
from .preflight import check_checkpoint, check_model, check_resume


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The arguments ``tools/train.py`` and ``tools/test.py`` share."""
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir',
                        help='where logs (and checkpoints) go (default: '
                        'work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, KEY=VALUE')
    parser.add_argument(
        '--check-data', choices=MODES, default='quick',
        help='before the run, check the datasets: quick (every listed file '
        'exists, annotations and class names agree; seconds for COCO), '
        'full (also decode every image), off')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def add_lock_arg(parser: argparse.ArgumentParser) -> None:
    """``--ignore-lock``, for tools that lock the work dir (training)."""
    parser.add_argument('--ignore-lock', action='store_true',
                        help='start even if the work dir\'s lock names '
                        'another run (one of another host that has ended); '
                        'two live runs would interleave their checkpoints')


def check_work_dir(work_dir: str) -> None:
    """The run can write its work dir (made if new): a read-only folder or
    a full disk is one line here, not a traceback from the runner's first
    write (the config dump) among "Logging error" blocks."""
    made = not osp.isdir(work_dir)
    try:
        os.makedirs(work_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=work_dir, prefix='.write-check-')
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        if made and osp.isdir(work_dir) and not os.listdir(work_dir):
            os.rmdir(work_dir)  # a refused run leaves nothing
        if err.errno in NO_SPACE:
            raise NoSpaceError(
                f'work dir {work_dir}: no space to write ({err.strerror}); '
                'free space or give --work-dir on another disk') from None
        raise PermissionError(
            f'work dir {work_dir} cannot be written ({err.strerror}); give '
            '--work-dir a folder you can write to') from None


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
    names the dataloaders whose data must exist. A test (``training``
    False) refuses a checkpoint that leaves parts of the model without
    weights unless ``args.allow_partial``. Bad input (the config, its
    model, data, checkpoints) ends the process with one ``error: ...`` line
    and exit code 2 before the runner starts.
    """
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    with user_errors():
        cfg = load_config(args.config, args.cfg_options)
        adjust(cfg)
        cfg.launcher = args.launcher
        if training:
            use_safe_checkpoints(cfg)
        cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
            'work_dirs', osp.splitext(osp.basename(args.config))[0])
        check_data(cfg, splits(cfg), args.check_data)
        model = check_model(cfg, training)
        if cfg.get('resume'):
            check_resume(cfg, model)
        elif cfg.get('load_from'):
            # fine-tuning may start from another task's model; a test may
            # not run on random heads unless --allow-partial says so
            check_checkpoint(model, cfg.load_from,
                             training or args.allow_partial)
        del model
        check_work_dir(cfg.work_dir)
        locks = training and lock.global_rank(args.launcher) == 0
        if locks:
            lock.acquire(cfg.work_dir, getattr(args, 'ignore_lock', False))
    try:
        adapt_to_device(cfg)
        return build_runner(cfg)
    except BaseException:
        if locks:
            lock.release(cfg.work_dir)
        raise
