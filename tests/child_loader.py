"""Load checkpoints in child processes under limits, and say how each ended.

Run as a worker (``python child_loader.py``): it imports torch and
convnext_mm once, then reads requests from stdin, one JSON line each
(``{"path": ..., "how": "read_file" | "mmengine" | "init_cfg",
"seconds": N}``), forks a
child per request and writes one JSON line back: ``status`` is

- ``loaded``: plain data came back (tensors, containers, numpy values,
  mmengine training state and nothing else);
- ``refused``: one of the tools' one-line errors, with its ``message``;
- ``traceback``: any other exception (type and message);
- ``changed``: a process-wide global changed, or a file appeared;
- ``crash`` / ``hang``: the child died of a signal (a segfault, or the CPU,
  wall-clock or memory limit).

Each child runs in an empty folder with an address-space limit of what the
worker maps plus ``CHILD_MEMORY_MB`` (1024), ``CHILD_SECONDS`` (20) of CPU
and wall-clock time.
"""
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import convnext_mm  # noqa: E402,F401  (installs the safe loaders)
import crafted  # noqa: E402
from convnext_mm.checkpoints import read_file  # noqa: E402
from convnext_mm.errors import USER_ERRORS  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.runner.checkpoint import (CheckpointLoader,  # noqa: E402
                                        _load_checkpoint)

MEMORY = int(os.environ.get('CHILD_MEMORY_MB', 1024)) << 20
SECONDS = int(os.environ.get('CHILD_SECONDS', 20))
_LEAVES = (str, bytes, bytearray, int, float, bool, type(None), torch.Tensor,
           np.ndarray, np.generic, np.dtype, torch.dtype, torch.device,
           HistoryBuffer)


def _plain(value) -> str:
    """'' if ``value`` is plain data, else what is not."""
    todo, seen = [value], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:  # each shared object once
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            todo.extend(node.keys())
            todo.extend(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            todo.extend(node)
        elif callable(node) and getattr(node, '__qualname__', '').startswith(
                'HistoryBuffer.'):
            continue
        elif not isinstance(node, _LEAVES):
            return type(node).__name__
    return ''


def _load(path: str, how: str):
    if how == 'read_file':
        return read_file(path, map_location='cpu')
    if how == 'mmengine':
        return _load_checkpoint(path, map_location='cpu')
    if how == 'exec':  # the harness's own test: code that misbehaves
        exec(open(path).read())
    from convnext_mm.models import ConvNeXt
    ConvNeXt('atto', init_cfg=dict(type='Pretrained',
                                   checkpoint=path)).init_weights()
    return {}


def _snapshot():
    state = crafted.snapshot()
    state['schemes'] = {k: id(v) for k, v in CheckpointLoader._schemes.items()}
    state['torch_threads'] = torch.get_num_threads()
    return state


def _child(request, out_fd, work):
    limit = MEMORY + _mapped()
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    seconds = request.get('seconds', SECONDS)
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    signal.alarm(seconds + 2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # stdout is the worker's answer channel
    os.chdir(work)
    before = _snapshot()
    try:
        value = _load(request['path'], request['how'])
        odd = _plain(value)
        result = dict(status='traceback', type='not plain',
                      message=f'a {odd} came back') if odd else dict(
                          status='loaded')
    except USER_ERRORS as err:
        message = str(err.args[0] if isinstance(err, KeyError) and err.args
                      else err)
        result = dict(status='refused', type=type(err).__name__,
                      message=message)
    except BaseException as err:  # noqa: BLE001  what we are looking for
        result = dict(status='traceback', type=type(err).__name__,
                      message=str(err)[:500],
                      where=traceback.format_exc()[-1500:])
    if _snapshot() != before:
        result = dict(status='changed', message='a global changed')
    elif os.listdir(work):
        result = dict(status='changed', message='wrote ' +
                      ', '.join(os.listdir(work)))
    os.write(out_fd, json.dumps(result).encode())
    os._exit(0)


def _mapped() -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmSize:'):
                return int(line.split()[1]) << 10
    return 0


def run(request) -> dict:
    read_fd, write_fd = os.pipe()
    work = tempfile.mkdtemp(prefix='child-')
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            _child(request, write_fd, work)
        finally:
            os._exit(70)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(work, ignore_errors=True)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        kind = 'hang' if sig in ('SIGALRM', 'SIGXCPU', 'SIGKILL') else 'crash'
        return dict(status=kind, message=sig)
    if not chunks:
        return dict(status='crash', message=f'exit {os.WEXITSTATUS(status)}')
    return json.loads(b''.join(chunks))


def main():
    torch.set_num_threads(1)  # no pool threads to lose across fork
    HistoryBuffer()  # registers the built-in statistics, once
    print('ready', flush=True)
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == '__main__':
    main()
