"""What the tools share, by job: :mod:`.config` (reading a config),
:mod:`.data` and :mod:`.preflight` (checks before long work starts) and
:mod:`.runner` (building the runner once they pass), :mod:`.lock` (one
training run per work dir)."""
from ..errors import ConfigError
from . import lock
from .config import (TASKS, adapt_to_device, check_options, load_config,
                     task_of, use_tta)
from .data import check_data, check_label_maps
from .preflight import (check_backbone_args, check_checkpoint, check_model,
                        check_resume)
from .runner import (STAGE_SPLITS, PreflightRunner, add_lock_arg,
                     add_run_args, build_runner, prepare_runner)

__all__ = [
    'ConfigError', 'PreflightRunner', 'STAGE_SPLITS', 'TASKS',
    'adapt_to_device', 'add_lock_arg', 'add_run_args',
    'build_runner', 'check_backbone_args', 'check_checkpoint', 'check_data',
    'check_label_maps', 'check_model', 'check_options', 'check_resume',
    'load_config', 'lock', 'prepare_runner', 'task_of',
    'use_tta'
]
