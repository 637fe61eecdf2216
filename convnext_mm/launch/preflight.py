"""Pre-flight checks: everything a run needs is checked before the runner
starts, and bad input is one ``error:`` line (see :mod:`convnext_mm.errors`).

- data: dataset paths exist; label maps fit their images;
- model: the backbone's arguments, a shapes-only build, the LR-decay
  ``paramwise_cfg``;
- checkpoints: a pretrained backbone checkpoint or a whole model's
  checkpoint is read once and examined (:mod:`convnext_mm.checkpoints.report`);
  what was read is kept for the run's own load.
"""
import difflib
import inspect
import os
import os.path as osp
from typing import List, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.registry import DATASETS, MODELS, init_default_scope
from PIL import Image

from ..checkpoints import TruncatedError, prepare, prepare_whole
from ..checkpoints.torch_file import is_complete
from ..errors import ConfigError
from ..optim.lr_decay import check_paramwise_cfg


def _datasets(cfg_dataset):
    """The leaf dataset configs of a possibly wrapped dataset config."""
    if cfg_dataset is None:
        return []
    if 'datasets' in cfg_dataset:
        return [d for sub in cfg_dataset['datasets'] for d in _datasets(sub)]
    if 'dataset' in cfg_dataset:
        return _datasets(cfg_dataset['dataset'])
    return [cfg_dataset]


def check_data(cfg: Config, splits: List[str]) -> None:
    """Fail early, naming the key to set, when a dataset path is missing."""
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader:
            continue
        for dataset in _datasets(loader.get('dataset')):
            root = dataset.get('data_root') or ''
            paths = []
            if root:
                paths.append(('data_root', root))
            ann = dataset.get('ann_file')
            if ann:
                paths.append(('ann_file', osp.join(root, ann)))
            prefix = dataset.get('data_prefix') or {}
            if isinstance(prefix, str):
                prefix = dict(img_path=prefix)
            for key, sub in prefix.items():
                if sub:
                    paths.append((f'data_prefix.{key}', osp.join(root, sub)))
            for key, path in paths:
                if not osp.exists(path):
                    raise FileNotFoundError(
                        f'{split}_dataloader.dataset.{key}: {path} does not '
                        'exist. Point the config at your data, e.g. '
                        f'--cfg-options {split}_dataloader.dataset.'
                        'data_root=/path/to/dataset/')
                if key != 'data_root' and _is_empty_dir(path):
                    raise FileNotFoundError(
                        f'{split}_dataloader.dataset.{key}: {path} is empty')
            if prefix.get('seg_map_path'):
                check_label_maps(dataset, split, cfg.get('default_scope'))


def _suffixes(dataset, scope: Optional[str]) -> Tuple[str, str]:
    """Image and label-map suffixes: the config's, else the class's."""
    defaults = {}
    name = dataset.get('type', '')
    cls = DATASETS.get(f'{scope}.{name}' if scope and '.' not in name else
                       name)
    if cls is not None:
        defaults = {
            k: p.default
            for k, p in inspect.signature(cls.__init__).parameters.items()
        }
    return (dataset.get('img_suffix', defaults.get('img_suffix', '.jpg')),
            dataset.get('seg_map_suffix',
                        defaults.get('seg_map_suffix', '.png')))


def check_label_maps(dataset, split: str,
                     scope: Optional[str] = None) -> None:
    """Every image has a label map of its size, stored as single-channel
    8-bit class indices. Only file headers are read."""
    root = dataset.get('data_root') or ''
    prefix = dataset['data_prefix']
    img_dir = osp.join(root, prefix.get('img_path', ''))
    seg_dir = osp.join(root, prefix['seg_map_path'])
    img_suffix, seg_suffix = _suffixes(dataset, scope)
    where = f'{split}_dataloader.dataset'
    for name in sorted(os.listdir(img_dir)):
        if not name.endswith(img_suffix):
            continue
        stem = name[:-len(img_suffix)]
        label_path = osp.join(seg_dir, stem + seg_suffix)
        if not osp.isfile(label_path):
            raise FileNotFoundError(
                f'{where}: image {name} has no label map {label_path}')
        with Image.open(osp.join(img_dir, name)) as img, \
                Image.open(label_path) as label:
            if label.mode not in ('L', 'P'):
                raise ValueError(
                    f'{where}: label map {label_path} has PIL mode '
                    f'{label.mode!r}; label maps must be single-channel '
                    '8-bit PNGs (mode L or P) of class indices, 0 = "other"'
                    ' (ignored with reduce_zero_label)')
            if label.size != img.size:
                raise ValueError(
                    f'{where}: label map {label_path} is {label.size[0]}x'
                    f'{label.size[1]} but its image {name} is '
                    f'{img.size[0]}x{img.size[1]}; a label map must have '
                    "its image's size")


def _is_empty_dir(path: str) -> bool:
    if not osp.isdir(path):
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _meta_build(cfg_model):
    """Build the model without allocating its weights (shapes only)."""
    try:
        with torch.device('meta'):
            return MODELS.build(cfg_model)
    except (RuntimeError, NotImplementedError):
        # a constructor that computes on its tensors: build it for real
        return MODELS.build(cfg_model)


def check_backbone_args(cfg: Config) -> None:
    """Name an unknown backbone argument and its nearest valid ones."""
    backbone = (cfg.get('model') or {}).get('backbone')
    if not isinstance(backbone, dict) or 'type' not in backbone:
        return
    cls = MODELS.get(backbone['type']) if isinstance(
        backbone['type'], str) else backbone['type']
    if cls is None:
        return
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k in params if k != 'self']
    for key in backbone:
        if key != 'type' and key not in valid:
            close = difflib.get_close_matches(key, valid, n=2, cutoff=0.5)
            hint = f'did you mean {" or ".join(close)}? ' if close else ''
            raise ConfigError(
                f'model.backbone: {cls.__name__} has no argument {key!r}; '
                f'{hint}valid: {", ".join(valid)}')


def check_model(cfg: Config, training: bool):
    """Build the config's model (shapes only) and check what depends on it,
    before the runner starts: backbone arguments, the LR-decay
    ``paramwise_cfg``, and the pretrained checkpoint a training run loads.
    Returns the model."""
    init_default_scope(cfg.get('default_scope'))
    check_backbone_args(cfg)
    try:
        model = _meta_build(cfg.model)
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        raise ConfigError(f'model: {err}') from None
    while hasattr(model, 'module'):  # TTA wrappers
        model = model.module
    wrapper = cfg.get('optim_wrapper') or {}
    if training and wrapper.get('constructor') == \
            'ConvNeXtLRDecayConstructor':
        check_paramwise_cfg(wrapper.get('paramwise_cfg') or {}, model)
    backbone = getattr(model, 'backbone', None)
    init = getattr(backbone, 'init_cfg', None)
    if training and not cfg.get('load_from') and not cfg.get('resume') and \
            isinstance(init, dict) and init.get('type') == 'Pretrained':
        prepare(backbone, init['checkpoint'], init.get('prefix'),
                init.get('final_norm'))
    return model


def check_checkpoint(model, checkpoint: str):
    """Refuse a whole model's checkpoint that does not fit ``model``, in one
    line; return its report.

    mmengine only warns about shape mismatches and goes on with the layers
    left at their init; here a ConvNeXt backbone of another arch is named,
    and any other mismatch listed, before a run starts.
    """
    while hasattr(model, 'module'):  # DDP and TTA wrappers
        model = model.module
    return prepare_whole(model, checkpoint)


def newest_complete(work_dir: str, besides: str = '') -> Optional[str]:
    """The newest complete ``*.pth`` in ``work_dir`` other than ``besides``
    (by modification time), or None."""
    try:
        names = [osp.join(work_dir, n) for n in os.listdir(work_dir)
                 if n.endswith('.pth')]
    except OSError:
        return None
    names = [n for n in names if osp.isfile(n) and not (
        besides and osp.exists(besides) and osp.samefile(n, besides))]
    for name in sorted(names, key=osp.getmtime, reverse=True):
        if is_complete(name):
            return name
    return None


def _resume_hint(work_dir: str, besides: str) -> str:
    other = newest_complete(work_dir, besides)
    return (f'; the newest complete checkpoint in {work_dir} is {other}: '
            f'resume from it with --resume {other}' if other else
            f'; {work_dir} holds no other complete checkpoint')


def check_resume(cfg: Config, model) -> None:
    """The checkpoint a resumed run starts from exists, is whole and fits;
    else one line naming it and the newest complete one beside it."""
    path = cfg.get('load_from')
    if not path:
        marker = osp.join(cfg.work_dir, 'last_checkpoint')
        if not osp.isfile(marker):
            return  # nothing to resume: mmengine starts from iteration 0
        with open(marker) as f:
            path = f.read().strip()
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'--resume: {marker} names {path}, which does not exist' +
                _resume_hint(cfg.work_dir, path))
    work_dir = osp.dirname(path) or '.'
    if not osp.exists(path):
        raise FileNotFoundError(f'--resume: checkpoint {path} does not '
                                'exist' + _resume_hint(work_dir, path))
    try:
        check_checkpoint(model, path)
    except TruncatedError as err:
        raise TruncatedError(str(err) + _resume_hint(work_dir, path)) \
            from None
