"""Which checkpoint ``--resume`` (with no file named) starts from.

mmengine resumes from whatever ``last_checkpoint`` names: a deleted file is
a FileNotFoundError traceback, a truncated one a pickle error, and a work
dir without the marker silently starts from iteration 0. Here the newest
complete checkpoint is chosen instead - by step number among the files the
checkpoint hook names (``iter_{}.pth`` / ``epoch_{}.pth`` or the config's
``filename_tmpl``; best checkpoints carry no optimizer state and are not
candidates) - and every choice other than the marker's is said in one
line.
"""
import os
import os.path as osp
import re
from typing import Callable, List, Optional, Tuple

from ..checkpoints.torch_file import is_complete

MARKER = 'last_checkpoint'


def _marker(work_dir: str) -> Optional[str]:
    try:
        with open(osp.join(work_dir, MARKER)) as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def step_pattern(filename_tmpl: str) -> 're.Pattern':
    """A regex matching the checkpoint hook's file names, the step as its
    group 1."""
    return re.compile('^' + re.escape(filename_tmpl).replace(
        r'\{\}', '([0-9]+)') + '$')


def _by_step(folder: str, filename_tmpl: str) -> List[Tuple[int, str]]:
    pattern = step_pattern(filename_tmpl)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        match = pattern.match(name)
        if match and osp.isfile(osp.join(folder, name)):
            found.append((int(match.group(1)), osp.join(folder, name)))
    return sorted(found, reverse=True)


def newest_complete(folder: str, filename_tmpl: str,
                    besides: str = '') -> Optional[str]:
    """The complete checkpoint of the highest step in ``folder`` other than
    ``besides``, or None (what ``--resume`` names when a named checkpoint
    cannot be read)."""
    for _, path in _by_step(folder, filename_tmpl):
        if besides and osp.exists(besides) and osp.samefile(path, besides):
            continue
        if is_complete(path):
            return path
    return None


def checkpoint_template(cfg) -> str:
    """The file name pattern of the config's periodic checkpoints."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
    if hook.get('filename_tmpl'):
        return hook['filename_tmpl']
    return 'epoch_{}.pth' if hook.get('by_epoch', True) else 'iter_{}.pth'


def choose_resume(work_dir: str, filename_tmpl: str,
                  fits: Callable[[str], bool]) -> Tuple[Optional[str], str]:
    """The newest complete checkpoint to resume from (None: start from
    iteration 0) and a one-line note when it is not simply the file
    ``last_checkpoint`` names. ``fits(path)`` reads a candidate that looks
    whole and says whether it is (it may raise for a checkpoint that cannot
    load for another reason)."""
    named = _marker(work_dir)
    folder = osp.dirname(named) if named else work_dir
    ordered = _by_step(folder, filename_tmpl)
    paths = [p for _, p in ordered]
    if named and named not in paths:  # a file of another name
        paths.insert(0, named)
    skipped = []
    for path in paths:
        if osp.isfile(path) and is_complete(path) and fits(path):
            break
        skipped.append(path)
    else:
        path = None
    return path, _note(work_dir, named, path, skipped)


def _note(work_dir: str, named: Optional[str], chosen: Optional[str],
          skipped: List[str]) -> str:
    where = osp.dirname(named) if named else work_dir
    if chosen is None:
        broken = [osp.basename(p) for p in skipped if osp.isfile(p)]
        found = f' ({", ".join(broken)} not complete)' if broken else ''
        return f'--resume: no complete checkpoint in {where}{found}; ' \
            'starting from iteration 0'
    if chosen == named:
        return ''
    if named is None:
        return f'--resume: {osp.join(work_dir, MARKER)} is missing or ' \
            f'empty; resuming from {chosen}, the newest complete checkpoint'
    if named in skipped:
        why = 'is not complete (its save was cut off)' if osp.isfile(
            named) else 'does not exist'
        return f'--resume: {named} (named by {MARKER}) {why}; resuming ' \
            f'from {chosen}, the newest complete checkpoint'
    return f'--resume: {chosen} is newer than {named} that {MARKER} names ' \
        '(the run stopped between the save and the marker); resuming from ' \
        f'{chosen}'
