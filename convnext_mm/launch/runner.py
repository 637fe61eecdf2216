"""Launching: the arguments train and test share, and the runner built
after every pre-flight check has passed."""
import argparse
import os
import os.path as osp
import sys
import tempfile
from typing import Callable, List

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from ..checkpoints.saving import NO_SPACE
from ..errors import NoSpaceError, user_errors
from ..registry import RUNNERS
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


def preflight(cfg: Config, splits: List[str], training: bool,
              data: str = 'quick', allow_partial: bool = False,
              partial_option: str = '--allow-partial',
              ignore_lock: bool = False) -> bool:
    """The checks before a run of ``cfg`` (its work dir and launcher set):
    the data of ``splits`` (``data``: quick, full or off), the model, the
    checkpoint it resumes from or loads (a test, not ``training``, refuses
    one that leaves parts of the model without weights unless
    ``allow_partial``, naming ``partial_option``), the work dir; a training
    run's rank 0 then holds the work dir's lock (:mod:`.lock`): True if
    this process took it. ``cfg`` gets the resume choice."""
    check_data(cfg, splits, data)
    model = check_model(cfg, training)
    if cfg.get('resume'):
        check_resume(cfg, model)
    elif cfg.get('load_from'):
        # fine-tuning may start from another task's model; a test may
        # not run on random heads unless told so
        check_checkpoint(model, cfg.load_from, training or allow_partial,
                         partial_option)
    del model
    check_work_dir(cfg.work_dir)
    locks = training and lock.global_rank(cfg.get('launcher', 'none')) == 0
    if locks:
        lock.acquire(cfg.work_dir, ignore_lock)
    return locks


# how our base configs name PreflightRunner
PREFLIGHT_RUNNER = 'convnext_mm.PreflightRunner'
# the libraries' own tools (``mim train``/``mim test`` run them) by file
# name, and the stage each runs
TOOL_STAGES = {'train.py': 'train', 'test.py': 'test'}
STAGE_SPLITS = {'train': lambda cfg: ['train'] + (
    ['val'] if cfg.get('val_cfg') else []), 'val': lambda cfg: ['val'],
                'test': lambda cfg: ['test']}


@RUNNERS.register_module()
class PreflightRunner(Runner):
    """mmengine's ``Runner``, preceded by our pre-flight (:func:`preflight`)
    when the libraries' own tools build it: mmdet's, mmseg's and
    mmpretrain's ``tools/train.py`` and ``tools/test.py``, and ``mim
    train``/``mim test`` through them, build the ``runner_type`` a config
    names, and our base configs name this one.

    Run as one of those tools (the stage known from its file name), the
    checks come before the runner is built and bad input is one ``error:``
    line (exit code 2) before any log; built by other code, they come at
    the start of :meth:`train`, :meth:`val` or :meth:`test`. A test refuses
    a checkpoint that leaves parts of the model without weights unless the
    config says ``allow_partial=True``. A training run holds the work dir's
    lock to its end (``ignore_lock=True`` in the config: as
    ``--ignore-lock``). Our own tools check first and build a plain
    ``Runner`` (:func:`build_runner`)."""

    @classmethod
    def from_cfg(cls, cfg) -> 'PreflightRunner':
        stage = TOOL_STAGES.get(osp.basename(sys.argv[0]))
        locked = stage is not None and _checked(cfg, stage)
        try:
            runner = super().from_cfg(cfg)
        except BaseException:
            if locked:
                lock.release(cfg.work_dir)
            raise
        runner._checked = stage
        return runner

    def _check(self, stage: str) -> None:
        if getattr(self, '_checked', None) == stage:
            return
        _checked(self.cfg, stage)
        self._checked = stage
        self._load_from = self.cfg.get('load_from')
        self._resume = bool(self.cfg.get('resume'))

    def train(self):
        self._check('train')
        # released only by the process that holds it (rank 0)
        with lock.holding(self.cfg.work_dir):
            return super().train()

    def val(self):
        self._check('val')
        return super().val()

    def test(self):
        self._check('test')
        return super().test()


def _checked(cfg: Config, stage: str) -> bool:
    """:func:`preflight` for ``stage`` with one ``error:`` line on bad
    input; whether this process took the work dir's lock."""
    with user_errors():
        if stage == 'train':
            use_safe_checkpoints(cfg)
        locked = preflight(
            cfg, STAGE_SPLITS[stage](cfg), stage == 'train',
            allow_partial=bool(cfg.get('allow_partial')),
            partial_option='--cfg-options allow_partial=True',
            ignore_lock=bool(cfg.get('ignore_lock')))
    adapt_to_device(cfg)
    return locked


def build_runner(cfg: Config):
    """A runner from the config, as the libraries' own tools build it, after
    our pre-flight has passed: :class:`PreflightRunner` is built as the
    plain ``Runner``."""
    runner_type = cfg.get('runner_type')
    if runner_type in (None, PREFLIGHT_RUNNER, PreflightRunner):
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


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
    and exit code 2 before the runner starts. A training run holds the work
    dir's lock (:mod:`.lock`) from here; the tool releases it at its end
    with ``lock.holding``.
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
        locks = preflight(cfg, splits(cfg), training, args.check_data,
                          getattr(args, 'allow_partial', False),
                          ignore_lock=getattr(args, 'ignore_lock', False))
    try:
        adapt_to_device(cfg)
        return build_runner(cfg)
    except BaseException:
        if locks:
            lock.release(cfg.work_dir)
        raise
