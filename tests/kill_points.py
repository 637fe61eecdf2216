"""Stop a run at an exact instant of its N-th checkpoint save.

    python tests/kill_points.py POINT N tools/train.py ARGS...

kills the tool for real (SIGKILL from itself, no chance to clean up);
``armed(point, nth, kill)`` calls ``kill`` at that instant in this process
(the in-process fault matrix takes a copy of the work dir there, as the disk
is at that instant, and stops the run). The instant is chosen by watching the
file operations every whole-file write goes through:

- ``before_write``: the N-th ``*.pth`` temporary file was just created;
- ``mid_write``: the N-th ``*.pth`` was written but only half of it reached
  the disk (the temporary file is cut to half, as a kill during a write
  leaves it);
- ``before_rename``: the N-th ``*.pth`` is complete under its temporary name;
- ``after_rename``: it has its final name; ``last_checkpoint`` still names
  the previous one;
- ``after_marker``: ``last_checkpoint`` names it; the checkpoint it makes
  obsolete (``max_keep_ckpts``) is not removed yet.
"""
import contextlib
import os
import runpy
import signal
import sys
import tempfile

POINTS = ('before_write', 'mid_write', 'before_rename', 'after_rename',
          'after_marker')


@contextlib.contextmanager
def armed(point, nth, kill):
    """Call ``kill()`` at ``point`` of the ``nth`` checkpoint save made
    inside the block (``kill`` is expected not to return)."""
    assert point in POINTS, point
    seen = {'pth': 0}
    temp_fds = {}
    real_mkstemp, real_fsync, real_replace = tempfile.mkstemp, os.fsync, \
        os.replace

    def mkstemp(*a, **kw):
        fd, path = real_mkstemp(*a, **kw)
        if '.pth.' in os.path.basename(path):
            seen['pth'] += 1
            temp_fds[fd] = seen['pth']
            if point == 'before_write' and seen['pth'] == nth:
                kill()
        return fd, path

    def fsync(fd):
        if point == 'mid_write' and temp_fds.get(fd) == nth:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            kill()
        return real_fsync(fd)

    def replace(src, dst, *a, **kw):
        dst_name = os.path.basename(os.fspath(dst))
        is_pth = dst_name.endswith('.pth')
        if is_pth and point == 'before_rename' and seen['pth'] == nth:
            kill()
        real_replace(src, dst, *a, **kw)
        if is_pth and point == 'after_rename' and seen['pth'] == nth:
            kill()
        if dst_name == 'last_checkpoint' and point == 'after_marker' and \
                seen['pth'] == nth:
            kill()

    tempfile.mkstemp, os.fsync, os.replace = mkstemp, fsync, replace
    try:
        yield
    finally:
        tempfile.mkstemp, os.fsync, os.replace = real_mkstemp, real_fsync, \
            real_replace


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    point, nth, tool, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], \
        sys.argv[4:]
    sys.argv = [tool] + args
    sys.path.insert(0, os.path.dirname(os.path.abspath(tool)))
    with armed(point, nth, die):
        runpy.run_path(tool, run_name='__main__')


if __name__ == '__main__':
    main()
