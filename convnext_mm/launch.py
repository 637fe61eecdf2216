"""What ``tools/train.py`` and ``tools/test.py`` share: reading a config of any
of the three libraries, checking it before long work starts, and adapting
GPU-only settings when running on a CPU."""
import argparse
import difflib
import os
import os.path as osp
from typing import Callable, List, Optional, Tuple

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log

# the library each config names through its default_scope
TASKS = {
    'mmdet': 'detection',
    'mmseg': 'segmentation',
    'mmpretrain': 'classification',
}


class ConfigError(ValueError):
    """A config that cannot work, found before any long work starts."""


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
    import inspect

    from mmengine.registry import DATASETS
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
    from PIL import Image
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


def build_runner(cfg: Config):
    """A runner from the config, as the libraries' own tools build it."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


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


def check_checkpoint_fits(model, checkpoint: str) -> None:
    """Refuse a checkpoint whose tensors do not fit ``model``.

    mmengine only warns about shape mismatches and goes on with the layers
    left at their init; here a ConvNeXt backbone of another arch is named,
    and any other mismatch listed, before a run starts.
    """
    from .checkpoints import check_weights, read_checkpoint
    from .checkpoints.layouts import to_convnext_mm, unwrap
    from .checkpoints.pretrained import check_compatible, shape_mismatches
    from .models import ConvNeXt
    while hasattr(model, 'module'):  # DDP and TTA wrappers
        model = model.module
    state = unwrap(read_checkpoint(checkpoint))
    backbone = getattr(model, 'backbone', None)
    backbone_state = {k: v for k, v in state.items()
                      if k.startswith('backbone.')}
    if isinstance(backbone, ConvNeXt) and backbone_state:
        converted, _, _ = to_convnext_mm(backbone_state)
        check_compatible(backbone, converted, checkpoint)
    own = model.state_dict()
    check_weights(state, checkpoint, model_state=own)
    wrong = shape_mismatches(own, state)
    if wrong:
        raise ValueError(f'{checkpoint} does not fit the model of this '
                         f'config ({len(wrong)} shape mismatches): ' +
                         '; '.join(wrong[:5]))
    if not any(k in own for k in state):
        raise ValueError(
            f'{checkpoint} shares no parameter name with the model of this '
            f'config; its first keys: {", ".join(list(state)[:5])}')


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


def _meta_build(cfg_model):
    """Build the model without allocating its weights (shapes only)."""
    from mmengine.registry import MODELS
    try:
        with torch.device('meta'):
            return MODELS.build(cfg_model)
    except (RuntimeError, NotImplementedError):
        # a constructor that computes on its tensors: build it for real
        return MODELS.build(cfg_model)


def check_backbone_args(cfg: Config) -> None:
    """Name an unknown backbone argument and its nearest valid ones."""
    import inspect

    from mmengine.registry import MODELS
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
    from mmengine.registry import init_default_scope
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
        from .optim.lr_decay import check_paramwise_cfg
        check_paramwise_cfg(wrapper.get('paramwise_cfg') or {}, model)
    backbone = getattr(model, 'backbone', None)
    init = getattr(backbone, 'init_cfg', None)
    if training and not cfg.get('load_from') and not cfg.get('resume') and \
            isinstance(init, dict) and init.get('type') == 'Pretrained':
        from .checkpoints import check_pretrained
        check_pretrained(backbone, init['checkpoint'], init.get('prefix'))
    return model


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
    from .errors import user_errors
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    with user_errors():
        cfg = load_config(args.config, args.cfg_options)
        adjust(cfg)
        cfg.launcher = args.launcher
        cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
            'work_dirs', osp.splitext(osp.basename(args.config))[0])
        check_data(cfg, splits(cfg))
        model = check_model(cfg, training)
        if cfg.get('load_from'):
            check_checkpoint_fits(model, cfg.load_from)
        del model
    adapt_to_device(cfg)
    return build_runner(cfg)
