"""Reading a config of any of the three libraries: ``--cfg-options``
checked against the config's keys, the library named by ``default_scope``,
and the switches the tools apply (the TTA test, GPU-only settings on a
machine without CUDA)."""
import difflib
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from ..errors import ConfigError

# the library each config names through its default_scope
TASKS = {
    'mmdet': 'detection',
    'mmseg': 'segmentation',
    'mmpretrain': 'classification',
}


def check_options(cfg: Config, options: Optional[dict]) -> None:
    """Refuse ``--cfg-options`` keys that look like typos of existing ones.

    A key may add a new entry (a backbone argument the config leaves at its
    default, say), but not one that is a near miss of a key that is there.
    """
    for dotted in options or {}:
        node, parts = cfg, dotted.split('.')
        for depth, part in enumerate(parts):
            if isinstance(node, (list, tuple)) and part.isdigit():
                node = node[int(part)] if int(part) < len(node) else None
                continue
            mapping = isinstance(node, (dict, Config))
            if not mapping or part in node:
                node = node.get(part) if mapping else None
                continue
            siblings = [k for k in node.keys() if isinstance(k, str)]
            close = difflib.get_close_matches(part, siblings, n=3, cutoff=0.8)
            where = '.'.join(parts[:depth]) or 'the top level'
            if depth == 0 or close:
                hint = f'; did you mean {" or ".join(close)}?' if close else \
                    f'; top-level keys: {", ".join(sorted(siblings))}'
                raise ConfigError(
                    f'unknown config key {dotted!r}: {where} has no '
                    f'{part!r}{hint}')
            break


def load_config(path: str, options: Optional[dict] = None) -> Config:
    """Read a config, merge ``--cfg-options`` after checking them."""
    if osp.isdir(path):
        raise ConfigError(f'config {path} is a directory; give a config '
                          'file, e.g. configs/mask_rcnn_convnext_t_coco.py')
    if not osp.isfile(path):
        raise ConfigError(f'config file {path} does not exist')
    try:
        cfg = Config.fromfile(path)
    except Exception as err:  # noqa: BLE001  whatever the parser raised
        detail = ' '.join(str(err).split())[:300]
        if isinstance(err, SyntaxError):
            detail = f'line {err.lineno}: {err.msg}'
        raise ConfigError(
            f'config {path} cannot be read ({type(err).__name__}: {detail}); '
            'a config is a Python (or YAML/JSON) file of mmengine '
            'settings') from None
    check_options(cfg, options)
    if options:
        cfg.merge_from_dict(options)
    task_of(cfg)
    return cfg


def task_of(cfg: Config) -> str:
    """'mmdet', 'mmseg' or 'mmpretrain', from the config's default_scope."""
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        raise ConfigError(
            f'config has default_scope={scope!r}; convnext_mm tools run '
            f'configs of {", ".join(TASKS)} (inherit their base configs, '
            "e.g. _base_ = 'mmdet::_base_/default_runtime.py')")
    return scope


def use_tta(cfg: Config) -> None:
    """Switch a config to its multi-scale + flip test, as the libraries'
    own ``--tta`` does: the TTA pipeline for the test data, the TTA model
    wrapping the config's model."""
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if missing:
        raise ConfigError(
            f'--tta needs {" and ".join(missing)} in the config (the '
            'convnext_mm COCO, ADE20K and ImageNet configs define them)')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def _replace_type(node, old: str, new: str) -> int:
    count = 0
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
            count += 1
        for value in node.values():
            count += _replace_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_type(value, old, new)
    return count


def adapt_to_device(cfg: Config) -> None:
    """On a machine without CUDA, turn GPU-only settings into CPU ones.

    Mixed precision (``AmpOptimWrapper``) needs CUDA; SyncBN cannot sync CPU
    tensors across processes. Both are replaced, and each change is logged.
    """
    if torch.cuda.is_available():
        return
    notes = []
    wrapper = cfg.get('optim_wrapper')
    if wrapper is not None and wrapper.get('type') == 'AmpOptimWrapper':
        wrapper['type'] = 'OptimWrapper'
        wrapper.pop('loss_scale', None)
        wrapper.pop('dtype', None)
        notes.append('no CUDA: mixed precision off (OptimWrapper instead '
                     'of AmpOptimWrapper)')
    synced = _replace_type(cfg.get('model'), 'SyncBN', 'BN')
    if synced:
        notes.append(f'no CUDA: {synced} SyncBN norm configs use BN')
    if cfg.get('launcher', 'none') != 'none':
        # mmengine's launcher would call torch.cuda.set_device, and its DDP
        # wrapper passes device_ids, which DDP refuses for CPU modules
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
        cfg.env_cfg.dist_cfg['backend'] = 'gloo'
        wrapper_cfg = cfg.get('model_wrapper_cfg') or dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
        wrapper_cfg['device_ids'] = None
        cfg.model_wrapper_cfg = wrapper_cfg
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend='gloo')
        notes.append('no CUDA: distributed training over gloo on the CPU')
    for note in notes:
        print_log(note, logger='current', level=30)
