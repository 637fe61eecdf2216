"""One training run per work dir, and who owns a folder a run left.

An owner is a process: its host, pid and start time (from ``/proc`` where
there is one, so that a pid the system gave to a later process is not taken
for the owner). A process of this host is alive or gone; one of another
host cannot be checked from here.

A training run holds ``WORK_DIR/convnext_mm.lock`` (its owner as JSON) from
the pre-flight to its end; a second run on the same work dir is refused in
one line naming the first, unless the lock is stale (its process is gone,
as after a kill: ``--resume`` then takes it over) or the user says so. The
ranks of a distributed run are one run: global rank 0 holds the lock.
"""
import contextlib
import json
import os
import os.path as osp
import socket
import time
from typing import Iterator, Optional

from ..errors import WorkDirInUse

LOCK_FILE = 'convnext_mm.lock'
# what a rank of each mmengine launcher finds its global rank in
RANK_VARIABLES = dict(pytorch='RANK', slurm='SLURM_PROCID',
                      mpi='OMPI_COMM_WORLD_RANK')


def _start_time(pid: int) -> Optional[str]:
    """The process's start (clock ticks after boot, ``/proc/PID/stat``
    field 22), or None where there is no ``/proc``."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict:
    """This process as an owner: host, pid, start."""
    pid = os.getpid()
    return dict(host=socket.gethostname(), pid=pid, started=_start_time(pid))


def is_alive(owner: dict) -> Optional[bool]:
    """Whether the owner process still runs: True or False on this host,
    None for another host's. An empty owner is gone."""
    if not owner:
        return False
    if owner.get('host') != socket.gethostname():
        return None
    pid = owner.get('pid')
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    recorded, now = owner.get('started'), _start_time(pid)
    return recorded is None or now is None or recorded == now


def _is_me(owner: dict) -> bool:
    me = this_process()
    return owner.get('host') == me['host'] and owner.get('pid') == me['pid']


def tag() -> str:
    """This process as a part of a file name: ``host@pid@start``."""
    me = this_process()
    return f'{me["host"]}@{me["pid"]}@{me["started"] or ""}'


def owner_of(name: str) -> dict:
    """The owner in a name holding :func:`tag` after its first ``@`` (an
    empty owner, never alive, when it holds none)."""
    parts = name.rsplit('@', 4)
    if len(parts) < 5 or not parts[2].isdigit():
        return {}
    return dict(host=parts[1], pid=int(parts[2]), started=parts[3] or None)


def global_rank(launcher: str) -> int:
    """This process's rank in its run (0 without a launcher)."""
    value = os.environ.get(RANK_VARIABLES.get(launcher, ''), '0')
    return int(value) if value.isdigit() else 0


def _read(path: str) -> dict:
    try:
        with open(path, 'rb') as f:
            owner = json.loads(f.read(4096))
    except (OSError, ValueError):
        return {}  # unreadable or half-written: its owner died writing it
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    started = owner.get('since')
    when = time.strftime(' since %Y-%m-%d %H:%M:%S', time.localtime(
        started)) if isinstance(started, (int, float)) else ''
    return (f'pid {owner.get("pid")} on host {owner.get("host")}{when}')


def acquire(work_dir: str, take_over: bool = False) -> None:
    """Hold ``work_dir``'s lock for this process; refuse (``WorkDirInUse``)
    when a live run, or one of another host, holds it and ``take_over`` is
    not given. A stale lock (its process gone) is taken over."""
    path = osp.join(work_dir, LOCK_FILE)
    owner = _read(path) if osp.exists(path) else None
    if owner is not None and not take_over and not _is_me(owner):
        alive = is_alive(owner)
        if alive or alive is None:
            where = ('still runs' if alive else
                     'may still run (another host: it cannot be checked '
                     'from here)')
            raise WorkDirInUse(
                f'work dir {work_dir} is held by another training run '
                f'({_describe(owner)}, in {path}), which {where}; wait for '
                'it to end or give another --work-dir (if that run has '
                'ended, start with --ignore-lock; through mmdet\'s or '
                'mmseg\'s own scripts: --cfg-options ignore_lock=True)')
    me = dict(this_process(), since=time.time())
    tmp = f'{path}.{me["pid"]}.tmp'
    with open(tmp, 'w') as f:
        json.dump(me, f)
        f.flush()
        os.fsync(f.fileno())
    if owner is not None:
        os.replace(tmp, path)
        return
    try:  # a new lock: of two runs starting together, one links it
        os.link(tmp, path)
    except FileExistsError:
        os.remove(tmp)
        acquire(work_dir, take_over)
    except OSError:  # a file system without hard links
        os.replace(tmp, path)
    else:
        os.remove(tmp)


def release(work_dir: str) -> None:
    """Remove ``work_dir``'s lock if this process holds it."""
    path = osp.join(work_dir, LOCK_FILE)
    if osp.exists(path) and _is_me(_read(path)):
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def holding(work_dir: str) -> Iterator[None]:
    """Release this process's lock of ``work_dir`` when the block ends,
    however it ends (a kill leaves it stale)."""
    try:
        yield
    finally:
        release(work_dir)
