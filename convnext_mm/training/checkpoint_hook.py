"""mmengine's ``CheckpointHook`` made safe to kill at any instant.

mmengine 0.10's hook, with ``max_keep_ckpts``, deletes the oldest kept
checkpoint *before* writing the next one, writes checkpoints and the
``last_checkpoint`` marker in place, and deletes the previous best
checkpoint before writing the new best: a SIGKILL or a full disk at the
wrong moment leaves no complete checkpoint, a marker naming a deleted file,
or a truncated file under a final name. :class:`SafeCheckpointHook` takes
the same arguments and keeps the same files, in this order:

1. the checkpoint is written whole (:mod:`.atomic_backend`: temporary name,
   fsync, rename) - best checkpoints too;
2. ``last_checkpoint`` is replaced the same way, naming a complete file;
3. only then is the checkpoint it succeeds (the oldest kept, the previous
   best) removed.

A killed run may thus leave one checkpoint too many (removed when the run
resumes, see :meth:`SafeCheckpointHook.before_train`: of best checkpoints
the newest complete one per metric stays) and a ``*.partial`` temporary
file (removed then too), never too few. Removals and the marker
happen on the main process only, as in mmengine, so distributed runs behave
the same. A remote ``out_dir`` (``s3://`` ...) or user ``backend_args`` keep
mmengine's behaviour, said in the log.

Why a hook: it is the object that orders saves and removals, and a config
names it in ``default_hooks.checkpoint``. Our base configs name this one;
our tools put it in place of ``CheckpointHook`` in any other config
(:func:`use_safe_checkpoints`), so mmdet's and mmseg's configs get it too.
"""
import os
import os.path as osp
from contextlib import contextmanager
from typing import List

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from ..checkpoints import safe_torch_load
from ..checkpoints.saving import partial_of
from ..checkpoints.torch_file import is_complete
from ..registry import HOOKS
from . import atomic_backend
from .resume import step_pattern

HOOK_TYPES = ('CheckpointHook', 'mmengine.CheckpointHook')


class _RemovalsAfter:
    """A file backend whose ``remove``/``rmtree`` are recorded, to run once
    the save they make room for is complete; anything else passes through."""

    def __init__(self, backend, removals: List[str]):
        self._backend, self._removals = backend, removals

    def remove(self, path):
        self._removals.append(path)

    rmtree = remove

    def __getattr__(self, name):
        return getattr(self._backend, name)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) that never leaves a run without
    a complete checkpoint; see the module docstring."""

    def __init__(self, *args, file_client_args=None, backend_args=None,
                 **kwargs):
        self.atomic = file_client_args is None and backend_args is None \
            and atomic_backend.is_local(kwargs.get('out_dir'))
        if self.atomic:
            backend_args = dict(backend=atomic_backend.register())
        super().__init__(*args, file_client_args=file_client_args,
                         backend_args=backend_args, **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not self.atomic:
            runner.logger.warning(
                'SafeCheckpointHook: checkpoints go through a remote or '
                "user-given file backend; they are written as mmengine's "
                'CheckpointHook writes them (not atomically)')
            return
        runner.logger.info(
            'Checkpoints are written whole (temporary name, fsync, rename); '
            'an old one is removed only after its successor is complete.')
        if is_main_process():
            self._tidy(runner)

    def _tidy(self, runner) -> None:
        """Remove what a killed run left: temporary files of checkpoints,
        and kept checkpoints older than those the resumed run keeps (a kill
        between a save and the removal it allowed); ``last_checkpoint``
        naming one of those is moved to the newest kept first."""
        if not osp.isdir(self.out_dir):
            return
        names = os.listdir(self.out_dir)
        stale = [n for n in names if partial_of(n).endswith('.pth') or
                 partial_of(n) == 'last_checkpoint']
        kept = list(getattr(self, 'keep_ckpt_ids', None) or [])
        if kept and self.max_keep_ckpts > 0:
            kept_files = [self.filename_tmpl.format(k) for k in kept]
            if all(n in names for n in kept_files):
                pattern = step_pattern(self.filename_tmpl)
                for name in names:
                    step = pattern.match(name)
                    if step and int(step.group(1)) < min(kept):
                        stale.append(name)
        marker = osp.join(runner.work_dir, 'last_checkpoint')
        if kept and osp.isfile(marker):
            with open(marker) as f:
                named = osp.basename(f.read().strip())
            if named in stale:
                # first the marker names a file that stays: it never names
                # a removed one (mmengine's own resume reads it)
                self.file_backend.put_text(
                    osp.join(self.out_dir,
                             self.filename_tmpl.format(max(kept))), marker)
        stale += self._tidy_best(runner, names)
        for name in stale:
            path = osp.join(self.out_dir, name)
            if osp.isfile(path):
                os.remove(path)
                runner.logger.info(f'removed {path}, left by a run that '
                                   'was stopped while saving')

    def _best_files(self, names: List[str]) -> dict:
        """The complete best checkpoints among ``names``, by the metric in
        their name (mmengine's ``best_{metric}_{checkpoint name}``):
        ``{metric: [(step, name), ...]}``, newest last."""
        pattern, found = step_pattern(self.filename_tmpl), {}
        for name in names:
            if not name.startswith('best_'):
                continue
            for cut in range(5, len(name)):
                step = name[cut] == '_' and pattern.match(name[cut + 1:])
                if step:
                    if is_complete(osp.join(self.out_dir, name)):
                        found.setdefault(name[5:cut], []).append(
                            (int(step.group(1)), name))
                    break
        return {key: sorted(files) for key, files in found.items()}

    def _tidy_best(self, runner, names: List[str]) -> List[str]:
        """One best checkpoint per metric, the newest complete: a run killed
        after writing a new best, before the checkpoint that records it,
        resumes believing in the previous one. The hook and the message hub
        are pointed at the newest (its path and its score, read from the
        file); the names of the others are returned, to be removed."""
        if self.save_best is None:
            return []
        stale = []
        for key, files in self._best_files(names).items():
            if len(files) < 2:
                continue
            newest = osp.join(self.out_dir, files[-1][1])
            if self._adopt_best(runner, key, newest):
                stale += [name for _, name in files[:-1]]
        return stale

    def _adopt_best(self, runner, key: str, path: str) -> bool:
        """Make ``path`` the hook's best checkpoint of metric ``key`` (as
        in file names: ``/`` is ``_``), with the score it was saved for;
        False if its score cannot be read (then nothing changes)."""
        indicators = [k for k in self.key_indicators
                      if k.replace('/', '_') == key]
        single = len(self.key_indicators) == 1
        suffix = '' if single else f'_{indicators[0]}' if indicators else None
        if suffix is None:
            return False
        try:
            info = safe_torch_load(path)['message_hub']['runtime_info']
            score = float(info[f'best_score{suffix}'])
        except Exception:  # noqa: BLE001  any unreadable file: keep all
            return False
        runner.message_hub.update_info(f'best_score{suffix}', score)
        runner.message_hub.update_info(f'best_ckpt{suffix}', path)
        if single:
            self.best_ckpt_path = path
        else:
            self.best_ckpt_path_dict[indicators[0]] = path
        return True

    @contextmanager
    def _removals_after_saves(self):
        """Within the block, the hook's removals wait until its saves are
        complete; an error (a full disk) cancels them."""
        backend, removals = self.file_backend, []
        self.file_backend = _RemovalsAfter(backend, removals)
        try:
            yield
        finally:
            self.file_backend = backend
        if is_main_process():
            for path in removals:
                if backend.isfile(path):
                    backend.remove(path)
                elif backend.isdir(path):
                    backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        """mmengine's, reordered: save, then the marker, then remove the
        checkpoint that fell out of ``max_keep_ckpts``."""
        if not self.atomic:
            return super()._save_checkpoint_with_step(runner, step, meta)
        dropped = None
        if self.max_keep_ckpts > 0 and not (
                self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                dropped = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        name = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, name)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        with self._removals_after_saves():
            runner.save_checkpoint(
                self.out_dir, name, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler, meta=meta,
                by_epoch=self.by_epoch, backend_args=self.backend_args,
                **self.args)
            if not is_main_process():
                return
            self.file_backend.put_text(
                self.last_ckpt, osp.join(runner.work_dir, 'last_checkpoint'))
            if dropped is not None and dropped != step:
                self.file_backend.remove(self.file_backend.join_path(
                    self.out_dir, self.filename_tmpl.format(dropped)))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not self.atomic:
            return super()._save_best_checkpoint(runner, metrics)
        with self._removals_after_saves():
            super()._save_best_checkpoint(runner, metrics)


def use_safe_checkpoints(cfg) -> bool:
    """Put :class:`SafeCheckpointHook` in place of a config's plain
    ``CheckpointHook`` (same arguments); True if it did."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(hook, dict) and (hook.get('type') in HOOK_TYPES
                                   or hook.get('type') is CheckpointHook):
        hook['type'] = 'convnext_mm.SafeCheckpointHook'
        return True
    return False
