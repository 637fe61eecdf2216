"""Pre-flight checks: everything a run needs is checked before the runner
starts, and bad input is one ``error:`` line (see :mod:`convnext_mm.errors`).

- data: :mod:`.data`;
- model: the backbone's arguments, a shapes-only build and forward
  (:mod:`.shapes`), the LR-decay ``paramwise_cfg``;
- checkpoints: a pretrained backbone checkpoint or a whole model's
  checkpoint is read once and examined (:mod:`convnext_mm.checkpoints.report`);
  what was read is kept for the run's own load.
"""
import difflib
import inspect
import logging
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import MODELS, init_default_scope

from ..checkpoints import prepare
from ..errors import ConfigError, TruncatedError
from ..optim.lr_decay import check_paramwise_cfg
from ..training import checkpoint_template, choose_resume, newest_complete
from .shapes import check_shapes


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
    check_shapes(model)
    wrapper = cfg.get('optim_wrapper') or {}
    if training and wrapper.get('constructor') == \
            'ConvNeXtLRDecayConstructor':
        check_paramwise_cfg(wrapper.get('paramwise_cfg') or {}, model)
    backbone = getattr(model, 'backbone', None)
    init = getattr(backbone, 'init_cfg', None)
    if training and not cfg.get('load_from') and not cfg.get('resume') and \
            isinstance(init, dict) and init.get('type') == 'Pretrained':
        prepare(backbone, init['checkpoint'], init.get('prefix'))
    return model


def check_checkpoint(model, checkpoint: str, allow_partial: bool = True,
                     option: str = '--allow-partial'):
    """Refuse a whole model's checkpoint that does not fit ``model``, in one
    line; return its report.

    mmengine only warns about shape mismatches and missing weights and goes
    on with those layers at their init; here a ConvNeXt backbone of another
    arch is named, and any other mismatch listed, before a run starts. With
    ``allow_partial=False`` (testing, deploying, inference: a model whose
    neck or heads stay random must not be evaluated as if trained) a
    checkpoint that leaves parts of the model without weights is refused
    too, naming ``option``, the way to accept it.
    """
    while hasattr(model, 'module'):  # DDP and TTA wrappers
        model = model.module
    report = prepare(model, checkpoint)
    return report if allow_partial else report.check_whole(option)


def _resume_hint(work_dir: str, besides: str, filename_tmpl: str) -> str:
    other = newest_complete(work_dir, filename_tmpl, besides)
    return (f'; the newest complete checkpoint in {work_dir} is {other}: '
            f'resume from it with --resume {other}' if other else
            f'; {work_dir} holds no other complete checkpoint')


def check_resume(cfg: Config, model) -> None:
    """Decide where a resumed run starts, before the runner exists.

    A named checkpoint must exist, be whole and fit (else one line naming
    it and the newest complete one beside it). With none named, the newest
    complete checkpoint of the work dir is taken (:mod:`convnext_mm.training.
    resume`), a fallback said in one line; with none, one line says the run
    starts from iteration 0."""
    path = cfg.get('load_from')
    if not path:
        def fits(candidate: str) -> bool:
            try:
                _check_resumable(check_checkpoint(model, candidate))
            except TruncatedError:
                return False
            return True

        chosen, note = choose_resume(cfg.work_dir, checkpoint_template(cfg),
                                     fits)
        if note:
            print_log(note, logger='current', level=logging.WARNING)
        cfg.load_from, cfg.resume = chosen, chosen is not None
        return
    work_dir = osp.dirname(path) or '.'
    template = checkpoint_template(cfg)
    if not osp.exists(path):
        raise FileNotFoundError(f'--resume: checkpoint {path} does not '
                                'exist' + _resume_hint(work_dir, path,
                                                       template))
    try:
        report = check_checkpoint(model, path)
    except TruncatedError as err:
        raise TruncatedError(str(err) + _resume_hint(work_dir, path,
                                                     template)) from None
    _check_resumable(report)


# what mmengine's resume reads besides the weights, unconditionally
TRAINING_STATE = ('meta', 'message_hub')


def _check_resumable(report) -> None:
    """A run resumes only from its own model's training checkpoint: one of
    another model, or weights alone, is one line here instead of
    mmengine's "different number of parameter groups" or KeyError 'meta'
    after the runner has started."""
    report.check_whole(option=None)
    missing = [k for k in TRAINING_STATE if k not in report.contents]
    if missing:
        holds = ', '.join(report.contents[:6]) or 'no named parts'
        raise ValueError(
            f'--resume: {report.source} holds {holds}, not the training '
            f'state a run resumes from (no {" or ".join(missing)}); resume '
            'from a checkpoint tools/train.py saved, or start from these '
            f'weights with --cfg-options load_from={report.source} and no '
            '--resume')
