"""Training never loses work: training runs (tools/train.py, a classifier
config at 64x64, 6 iterations, a checkpoint every 2) are stopped at every
instant of a save and resumed with ``--resume``; a full disk stops a run in
one line.

The fault matrix runs in this process: at the instant (``kill_points.armed``)
the work dir is copied as the disk holds it then, and the run is stopped;
the copy is resumed. Two runs are SIGKILLed for real (from themselves at one
instant, and from outside the moment a file appears); the whole matrix with
real kills, and a real full tmpfs, are in ``make test-all``."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from convnext_mm.checkpoints import safe_torch_load
from convnext_mm.checkpoints.torch_file import is_complete
from convnext_mm.launch import lock
from convnext_mm.synthetic.small_configs import dump_config, small_cls_config
from kill_points import POINTS, armed
from tool_utils import ROOT, run_tool

MAX_ITERS, INTERVAL = 6, 2
ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')


class Killed(BaseException):
    """The in-process stand-in for SIGKILL (no ``except Exception`` of the
    runner's catches it)."""


def config(folders, work, max_keep=None):
    cfg = small_cls_config('convnext_t_in1k', folders, work,
                           max_iters=MAX_ITERS, ckpt_interval=INTERVAL)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if max_keep:
        cfg.default_hooks.checkpoint.max_keep_ckpts = max_keep
    return dump_config(cfg, work, 'cls')


def complete(work):
    return sorted(p.name for p in work.glob('iter_*.pth') if is_complete(p))


def resumed(cfg, work, start):
    """Resume; check it started at ``start`` and ended whole at the end."""
    _, out = run_tool('train.py', cfg, '--resume')
    if start:
        assert f'resumed epoch: 0, iter: {start}' in out, out[-3000:]
    else:
        assert 'starting from iteration 0' in out, out[-3000:]
    final = work / f'iter_{MAX_ITERS}.pth'
    assert safe_torch_load(final)['meta']['iter'] == MAX_ITERS
    assert (work / 'last_checkpoint').read_text() == str(final)
    assert not [p.name for p in work.iterdir() if p.suffix == '.partial']
    return out


def killed_in_process(cfg, work, point, nth=2, *args):
    """Train (tools/train.py CFG ARGS) until ``point`` of the ``nth`` save;
    leave ``work`` as the disk was at that instant (what the run's own
    clean-up did after it, as a SIGKILL would not let it, is undone)."""
    image = work.parent / f'{work.name}.at_kill'

    def kill():
        shutil.copytree(work, image, symlinks=True)
        raise Killed

    with armed(point, nth, kill), pytest.raises(Killed):
        run_tool('train.py', cfg, *args)
    shutil.rmtree(work)
    image.rename(work)


def killed_for_real(cfg, point, nth=2):
    res = subprocess.run(
        [sys.executable, ROOT / 'tests' / 'kill_points.py', point, str(nth),
         ROOT / 'tools' / 'train.py', cfg], capture_output=True, text=True,
        cwd=ROOT, env=ENV, timeout=600)
    assert res.returncode == -signal.SIGKILL, (res.stdout + res.stderr)[-3000:]


# the kill comes at the 2nd save (iter_4); where a resumed run starts
STARTS = {'before_write': 2, 'mid_write': 2, 'before_rename': 2,
          'after_rename': 4, 'after_marker': 4}
CASES = [(1, p) for p in POINTS] + [(None, 'mid_write'),
                                    (None, 'after_rename')]
# the real-kill case make test keeps: the one mmengine's own hook loses
# everything in
REAL = (1, 'before_rename')


def check_kill_and_resume(cfg, work, max_keep, point):
    start = STARTS[point]
    # what the kill left: never fewer complete checkpoints than needed
    have = complete(work)
    assert f'iter_{start}.pth' in have, have
    if max_keep == 1 and point != 'after_marker':
        assert 'iter_2.pth' in have  # not removed before its successor
    marker = (work / 'last_checkpoint').read_text()
    assert is_complete(marker), marker  # the marker names a whole file
    if point in ('before_write', 'mid_write', 'before_rename'):
        # the half-written or unrenamed temporary file the kill left
        assert list(work.glob('iter_4.pth.*.partial'))
    out = resumed(cfg, work, start)
    if point == 'after_rename':
        assert 'is newer than' in out
    left = complete(work)
    assert left == ([f'iter_{MAX_ITERS}.pth'] if max_keep else
                    ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']), left
    assert not (work / lock.LOCK_FILE).exists()  # released at the end


@pytest.mark.parametrize('max_keep,point', CASES)
def test_stopped_at_a_save_resumes_from_a_complete_checkpoint(
        folders, tmp_path, max_keep, point):
    work = tmp_path / 'work'
    cfg = config(folders, work, max_keep)
    killed_in_process(cfg, work, point)
    check_kill_and_resume(cfg, work, max_keep, point)


@pytest.mark.parametrize('max_keep,point', [
    pytest.param(k, p, marks=() if (k, p) == REAL else pytest.mark.long)
    for k, p in CASES])
def test_killed_at_a_save_resumes_from_a_complete_checkpoint(
        folders, tmp_path, max_keep, point):
    work = tmp_path / 'work'
    cfg = config(folders, work, max_keep)
    killed_for_real(cfg, point)
    # the killed run's lock is left, stale: the resume is not refused
    owner = json.loads((work / lock.LOCK_FILE).read_text())
    assert lock.is_alive(owner) is False
    check_kill_and_resume(cfg, work, max_keep, point)


def test_killed_from_outside_the_moment_a_checkpoint_appears(
        folders, tmp_path):
    """The issue's case: SIGKILL when iter_4's file appears (with
    max_keep_ckpts=1, mmengine's hook has deleted iter_2 by then)."""
    work = tmp_path / 'work'
    cfg = config(folders, work, max_keep=1)
    proc = subprocess.Popen(
        [sys.executable, ROOT / 'tools' / 'train.py', cfg],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        env=ENV)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(p.name.startswith('iter_4.pth') for p in work.glob('*')):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    have = complete(work)
    assert have in (['iter_2.pth'], ['iter_2.pth', 'iter_4.pth'],
                    ['iter_4.pth']), have
    resumed(cfg, work, 4 if 'iter_4.pth' in have else 2)


def test_resume_falls_back_past_a_truncated_checkpoint(folders, tmp_path):
    """A truncated file under a final name (written by another hook, or
    cut by the file system): --resume names it and takes the one before."""
    work = tmp_path / 'work'
    cfg = config(folders, work)
    killed_in_process(cfg, work, 'after_marker')
    newest = work / 'iter_4.pth'
    with open(newest, 'r+b') as f:
        f.truncate(newest.stat().st_size // 2)
    out = resumed(cfg, work, 2)
    assert (f'--resume: {newest} (named by last_checkpoint) is not complete '
            f'(its save was cut off); resuming from {work / "iter_2.pth"}, '
            'the newest complete checkpoint') in out


def test_the_marker_never_names_a_removed_checkpoint(folders, tmp_path):
    """Killed after iter_4 got its name, before the marker moved: the
    resumed run removes iter_2 (max_keep_ckpts=1), which the marker still
    names; the marker names iter_4 before that (seen at the resumed run's
    first save)."""
    work = tmp_path / 'work'
    cfg = config(folders, work, max_keep=1)
    killed_in_process(cfg, work, 'after_rename')
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_2.pth')
    killed_in_process(cfg, work, 'before_write', 1, '--resume')
    assert not (work / 'iter_2.pth').exists()
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_4.pth')


def test_resume_without_a_checkpoint_says_it_starts_over(folders, tmp_path):
    work = tmp_path / 'work'
    cfg = config(folders, work)
    resumed(cfg, work, None)


def test_a_full_disk_stops_in_one_line_and_leaves_no_partial_file(
        folders, tmp_path):
    """The file system reports no space while iter_4 is written (in this
    process; a real full tmpfs is the ``long`` test below)."""
    work = tmp_path / 'work'
    cfg = config(folders, work)

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with armed('mid_write', 2, full):
        code, out = run_tool('train.py', cfg, check=False)
    assert code == 2, out[-3000:]
    assert out.strip().splitlines()[-1] == (
        f'error: writing {work}/iter_4.pth failed: No space left on device; '
        'its partial file was removed (free space and run again)')
    assert 'Traceback' not in out
    assert complete(work) == ['iter_2.pth']
    assert not list(work.glob('iter_4.pth*'))


@pytest.mark.long
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('unshare'),
                    reason='a small full disk needs a private tmpfs (root)')
def test_a_full_tmpfs_stops_in_one_line_and_leaves_no_partial_file(
        folders, tmp_path):
    """The work dir on an 80 MiB tmpfs: iter_2 (54 MB with the optimizer
    state) fits, iter_4 beside it does not."""
    work = tmp_path / 'work'
    work.mkdir()
    cfg = config(folders, work)
    # the tmpfs lives in a private mount namespace: look inside it there
    script = (f'mount -t tmpfs -o size=80m tmpfs {work} || exit 99; '
              f'{sys.executable} {ROOT / "tools" / "train.py"} {cfg}; '
              f'echo "rc=$?"; ls -a {work}')
    res = subprocess.run(['unshare', '-m', 'sh', '-c', script],
                         capture_output=True, text=True, cwd=ROOT, env=ENV,
                         timeout=600)
    if res.returncode == 99:
        pytest.skip(f'a tmpfs cannot be mounted here: {res.stderr}')
    out = res.stdout + res.stderr
    assert 'rc=2' in res.stdout, out[-3000:]
    errors = [line for line in res.stderr.splitlines()
              if line.startswith('error:')]
    assert errors == [
        f'error: writing {work}/iter_4.pth failed: No space left on device; '
        'its partial file was removed (free space and run again)'], out[-3000:]
    assert 'Traceback' not in out
    listing = res.stdout.split('rc=2')[1].split()
    assert 'iter_2.pth' in listing and 'iter_4.pth' not in listing
    assert not [n for n in listing if n.endswith('.partial')], listing


def test_best_checkpoints_are_replaced_only_when_the_new_one_is_whole(
        folders, tmp_path):
    """save_best with max_keep_ckpts: the best checkpoint is written by
    the same hook (removals of the previous best wait for the new one), and
    one whole best file, one whole periodic file and no temporary file are
    left."""
    work = tmp_path / 'work'
    cfg = small_cls_config('convnext_t_in1k', folders, work,
                           max_iters=MAX_ITERS, ckpt_interval=INTERVAL)
    cfg.train_cfg.val_interval = INTERVAL
    cfg.default_hooks.checkpoint.update(save_best='accuracy/top1',
                                        rule='greater', max_keep_ckpts=1)
    path = dump_config(cfg, work, 'cls')
    run_tool('train.py', path)
    best = sorted(p.name for p in work.glob('best_*.pth'))
    assert len(best) == 1 and is_complete(work / best[0]), best
    assert not list(work.glob('*.partial'))
    assert complete(work) == [f'iter_{MAX_ITERS}.pth']


def test_a_resumed_run_keeps_one_best_checkpoint_per_metric(
        folders, tmp_path, monkeypatch):
    """Killed after a new best is written (iter 4), before the checkpoint
    that records it is saved again: the resumed run believes in the
    previous best (iter 2). Its tidy keeps the newest best, with its score,
    so the run ends with one best file. The metric rises with every
    validation here (the tiny model's accuracy may not)."""
    from convnext_mm.training import SafeCheckpointHook
    validated = SafeCheckpointHook.after_val_epoch

    def rising(self, runner, metrics):
        validated(self, runner, {'accuracy/top1': float(runner.iter)})

    monkeypatch.setattr(SafeCheckpointHook, 'after_val_epoch', rising)
    work = tmp_path / 'work'
    cfg = small_cls_config('convnext_t_in1k', folders, work,
                           max_iters=MAX_ITERS, ckpt_interval=INTERVAL)
    cfg.train_cfg.val_interval = INTERVAL
    cfg.default_hooks.checkpoint.update(save_best='accuracy/top1',
                                        rule='greater')
    path = dump_config(cfg, work, 'cls')
    # saves: iter_2, best 2, iter_2 again, iter_4, best 4, iter_4 again
    killed_in_process(path, work, 'before_write', 6)
    assert sorted(p.name for p in work.glob('best_*.pth')) == [
        'best_accuracy_top1_iter_2.pth', 'best_accuracy_top1_iter_4.pth']
    out = resumed(path, work, 4)
    assert 'removed ' + str(work / 'best_accuracy_top1_iter_2.pth') in out
    assert sorted(p.name for p in work.glob('best_*.pth')) == [
        'best_accuracy_top1_iter_6.pth']
