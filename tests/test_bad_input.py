"""Bad weights, URLs and configs: one ``error:`` line (exit code 2) before
any long work, and nothing lost or left behind."""
import errno
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convnext_mm  # noqa: F401
from convnext_mm.checkpoints import DownloadError
from convnext_mm.checkpoints.download import cache_path, cached_download
from convnext_mm.launch import lock
from convnext_mm.models import ConvNeXt
from convnext_mm.synthetic import make_ade20k
from convnext_mm.synthetic.small_configs import small_seg_config
from tool_utils import (ROOT, as_a_new_process, dumped, needs_mmdeploy,
                        run_tool)

# --- weights ----------------------------------------------------------------


def _atto_state(**changes):
    state = {f'backbone.{k}': v for k, v in
             ConvNeXt('atto').state_dict().items()}
    state.update(changes)
    return {'state_dict': state}


@pytest.mark.parametrize('key,value,message', [
    ('backbone.stages.1.0.pwconv1.weight', 'nan', 'NaN/Inf'),
    ('backbone.stages.2.3.dwconv.bias', 'inf', 'NaN/Inf'),
    ('backbone.stages.0.0.pwconv2.weight', torch.int64, 'dtype torch.int64'),
    ('backbone.norm3.weight', torch.bool, 'dtype torch.bool'),
    ('backbone.downsample_layers.0.0.weight', 'meta', 'meta tensor'),
])
def test_unfit_weights_are_refused_naming_the_key(tmp_path, key, value,
                                                  message):
    ckpt = _atto_state()
    tensor = ckpt['state_dict'][key]
    if value in ('nan', 'inf'):
        tensor = tensor.clone()
        tensor.view(-1)[3] = float(value)
    elif value == 'meta':
        tensor = torch.empty(tensor.shape, device='meta')
    else:
        tensor = tensor.to(value)
    ckpt['state_dict'][key] = tensor
    path = tmp_path / 'w.pth'
    torch.save(ckpt, path)
    backbone = ConvNeXt('atto',
                        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    short = key[len('backbone.'):]
    with pytest.raises(ValueError, match=f'{short}.*{message}'):
        backbone.init_weights()
    out = tmp_path / 'converted.pth'
    code, text = run_tool('convert_checkpoint.py', path, out, check=False)
    assert code == 2 and text.strip().count('\n') == 0, text
    assert text.startswith('error: ') and short in text
    assert not out.exists() and os.listdir(tmp_path) == ['w.pth']


def test_integer_keys_are_refused():
    from convnext_mm.checkpoints import to_convnext_mm
    with pytest.raises(ValueError, match="the int key 5"):
        to_convnext_mm({'state_dict': {5: torch.zeros(1)}})


def test_convert_tool_keeps_an_existing_output(tmp_path):
    src = tmp_path / 'w.pth'
    torch.save(_atto_state(), src)
    dst = tmp_path / 'keep.pth'
    dst.write_text('precious')
    code, text = run_tool('convert_checkpoint.py', src, dst, check=False)
    assert code == 2 and 'pass --force' in text
    assert dst.read_text() == 'precious'


# --- downloads --------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}

    def do_GET(self):  # noqa: N802
        if self.path.startswith('/hang'):
            time.sleep(4)
        if self.path in ('/slow.pth', '/endless.pth', '/badchunk.pth'):
            return self.misbehave()
        if self.path == '/slowheaders.pth':
            # a header line at a byte every 0.2 s: every read is in time
            self.wfile.write(b'HTTP/1.0 200 OK\r\nX-Pad: ')
            try:
                for _ in range(200):
                    self.wfile.write(b'a')
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        if self.path.startswith('/redirect/'):
            hop = int(self.path.rsplit('/', 1)[1].split('.')[0])
            time.sleep(0.4)
            self.send_response(302)
            self.send_header('Location', f'/redirect/{hop + 1}')
            self.end_headers()
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def misbehave(self):
        """A byte every 0.2 s, a body without end, broken chunking."""
        self.send_response(200)
        if self.path == '/badchunk.pth':
            self.send_header('Transfer-Encoding', 'chunked')
            self.end_headers()
            self.wfile.write(b'4\r\nabcd\r\nzz\r\n')
            return
        if self.path == '/slow.pth':
            self.send_header('Content-Length', '1000')
        self.end_headers()
        try:
            for _ in range(100_000):
                self.wfile.write(b'x' if self.path == '/slow.pth' else
                                 bytes(1 << 16))
                self.wfile.flush()
                if self.path == '/slow.pth':
                    time.sleep(0.2)
        except OSError:
            pass  # the client gave up, as it should

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


def _bytes_of(obj):
    import io
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


def test_cache_is_keyed_by_the_whole_url(server, tmp_path):
    _Handler.files = {'/a/w.pth': _bytes_of({'x': torch.ones(1)}),
                      '/b/w.pth': _bytes_of({'x': torch.zeros(1)})}
    from mmengine.runner.checkpoint import _load_checkpoint
    a = _load_checkpoint(f'{server}/a/w.pth', map_location='cpu')
    b = _load_checkpoint(f'{server}/b/w.pth', map_location='cpu')
    assert a['x'].item() == 1 and b['x'].item() == 0
    assert cache_path(f'{server}/a/w.pth') != cache_path(f'{server}/b/w.pth')
    assert cache_path(f'{server}/a/w.pth').endswith('-w.pth')


def test_hash_in_the_file_name_is_verified(server, tmp_path):
    import hashlib
    good = _bytes_of({'x': torch.ones(2)})
    digest = hashlib.sha256(good).hexdigest()[:8]
    _Handler.files = {f'/m-{digest}.pth': good, '/m-deadbeef.pth': good}
    path = cached_download(f'{server}/m-{digest}.pth', model_dir=tmp_path)
    assert open(path, 'rb').read() == good
    with pytest.raises(DownloadError, match='name promises deadbeef'):
        cached_download(f'{server}/m-deadbeef.pth', model_dir=tmp_path)
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_silent_server_times_out_and_leaves_nothing(server, tmp_path,
                                                    monkeypatch):
    monkeypatch.setenv('CONVNEXT_MM_DOWNLOAD_TIMEOUT', '1')
    _Handler.files = {'/hang/w.pth': b'x'}
    start = time.perf_counter()
    with pytest.raises(DownloadError, match='hang/w.pth.*by hand'):
        cached_download(f'{server}/hang/w.pth', model_dir=tmp_path)
    assert time.perf_counter() - start < 3.5
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('name,setting,match', [
    ('slow', ('DEADLINE', '1.5'), 'passed its deadline of 1.5 s'),
    ('slowheaders', ('DEADLINE', '1.5'), 'passed its deadline of 1.5 s'),
    ('redirect/0', ('DEADLINE', '1.5'), 'passed its deadline of 1.5 s'),
    ('endless', ('MAX_MB', '2'), 'passed the cap of 2,097,152 bytes'),
    ('badchunk', None, 'broke off: IncompleteRead|broke off: '),
])
def test_misbehaving_servers_leave_nothing_in_the_cache(
        server, tmp_path, monkeypatch, name, setting, match):
    if setting:
        monkeypatch.setenv(f'CONVNEXT_MM_DOWNLOAD_{setting[0]}', setting[1])
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=match) as err:
        cached_download(f'{server}/{name}.pth', model_dir=tmp_path)
    assert '\n' not in str(err.value)
    assert time.perf_counter() - start < 10
    assert os.listdir(tmp_path) == []


def test_a_url_of_a_long_file_name_is_cached_under_a_short_one(server,
                                                              tmp_path):
    name = 'w' * 300
    _Handler.files = {f'/{name}.pth': _bytes_of({'x': torch.ones(1)})}
    path = cached_download(f'{server}/{name}.pth', model_dir=tmp_path)
    assert path.endswith('ww.pth') and len(os.path.basename(path)) == 13 + 120
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_download_settings_are_checked(server, tmp_path, monkeypatch):
    monkeypatch.setenv('CONVNEXT_MM_DOWNLOAD_MAX_MB', 'lots')
    with pytest.raises(ValueError, match='CONVNEXT_MM_DOWNLOAD_MAX_MB=.lots.'
                       ': give a positive number'):
        cached_download(f'{server}/slow.pth', model_dir=tmp_path)


def test_unreachable_url_gives_one_line_with_the_offline_way(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    url = f'http://127.0.0.1:{port}/convnext_tiny_1k_224.pth'
    with pytest.raises(DownloadError) as err:
        cached_download(url, model_dir=tmp_path)
    assert url in str(err.value) and "checkpoint='/path/to/file'" in \
        str(err.value)
    code, text = run_tool('convert_checkpoint.py', url, tmp_path / 'o.pth',
                          check=False)
    assert code == 2 and text.strip().count('\n') == 0, text
    assert text.startswith(f'error: cannot download {url}')


# --- configs ----------------------------------------------------------------


@pytest.fixture(scope='module')
def seg_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad_input')
    data = make_ade20k(root / 'ade', num_train=2, num_val=1, size=(64, 64))
    return dumped(small_seg_config, 'upernet_convnext_t_ade20k', data,
                  root / 'work')


def one_error_line(capsys, tool, *argv):
    """Run a tool in this process (as :func:`run_tool` does: the loggers
    it makes are let go after); return its single ``error:`` line."""
    code, text = run_tool(f'{tool}.py', *argv, check=False)
    text = text.strip()
    assert code == 2, text
    assert text.count('\n') == 0 and text.startswith('error: '), text
    return text


@pytest.mark.parametrize('option,message', [
    ('model.backbone.arch=tinny', "arch 'tinny'"),
    ('model.backbone.out_indices=[0,1,2,5]', 'out_indices'),
    ('model.backbone.drop_path_rate=-0.1', 'drop_path_rate=-0.1'),
    ('model.backbone.drop_rate=0.1',
     "no argument 'drop_rate'; did you mean drop_path_rate"),
    ('optim_wrapper.paramwise_cfg.decay_rate=-0.7', 'decay_rate=-0.7'),
    ('optim_wrapper.paramwise_cfg.num_layers=3', 'num_layers=3 is too'),
])
def test_config_errors_come_first_in_one_line(seg_config, capsys, option,
                                              message):
    line = one_error_line(capsys, 'train', seg_config, '--cfg-options',
                          option)
    assert message in line


def test_missing_decay_rate(seg_config, capsys, tmp_path):
    child = tmp_path / 'no_decay_rate.py'
    child.write_text(f"_base_ = '{seg_config}'\noptim_wrapper = dict("
                     "paramwise_cfg=dict(_delete_=True, num_layers=6))\n")
    line = one_error_line(capsys, 'train', child)
    assert 'needs paramwise_cfg.decay_rate' in line


@pytest.mark.parametrize('content,message', [
    ('model = dict(\n', 'SyntaxError'),
    (b'\x00\x9f\x92\x96 binary', 'cannot be read'),
])
def test_unreadable_configs(capsys, tmp_path, content, message):
    path = tmp_path / 'bad.py'
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(
        content)
    assert message in one_error_line(capsys, 'train', path)
    yaml = tmp_path / 'bad.yaml'
    yaml.write_text('model: [unclosed\n  - x: : :\n')
    assert 'cannot be read' in one_error_line(capsys, 'test', yaml, 'x.pth')
    assert 'is a directory' in one_error_line(capsys, 'train', tmp_path)


def test_checkpoint_errors_of_the_test_tool(seg_config, capsys, tmp_path):
    line = one_error_line(capsys, 'test', seg_config, tmp_path)
    assert 'is a directory' in line
    line = one_error_line(capsys, 'test', seg_config, tmp_path / 'gone.pth')
    assert 'does not exist' in line and 'init_cfg' not in line
    line = one_error_line(capsys, 'train', seg_config, '--resume',
                          tmp_path / 'gone.pth')
    assert 'does not exist' in line and 'init_cfg' not in line
    evil = tmp_path / 'evil.pth'
    import crafted
    evil.write_bytes(crafted.torch_legacy(crafted.file_write(
        str(tmp_path / 'x'))))
    line = one_error_line(capsys, 'test', seg_config, evil)
    assert 'refusing' in line
    line = one_error_line(capsys, 'train', seg_config, '--resume', evil)
    assert 'refusing' in line
    assert not list(tmp_path.glob('*.patch'))


def test_error_comes_before_the_runner_starts(seg_config, tmp_path):
    work = tmp_path / 'never'
    code, out = run_tool('train.py', seg_config, '--work-dir', work,
                         '--cfg-options', 'model.backbone.arch=tinny',
                         check=False)
    assert code == 2 and out.strip().count('\n') == 0, out
    assert 'System environment' not in out and not work.exists()


@pytest.mark.parametrize('code,says', [
    (errno.EACCES, ' cannot be written (Permission denied); give --work-dir '
     'a folder you can write to'),
    (errno.ENOSPC, ': no space to write (No space left on device); free '
     'space or give --work-dir on another disk'),
])
def test_a_work_dir_that_cannot_be_written_is_one_line(
        seg_config, capsys, tmp_path, monkeypatch, code, says):
    """A read-only work dir or a full disk (root writes anywhere, so the
    file system's answer is given here): one line before the runner, and
    the folder the check made is gone."""
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, 'mkstemp', refuse)
    work = tmp_path / 'work'
    line = one_error_line(capsys, 'train', seg_config, '--work-dir', work)
    assert line == f'error: work dir {work}{says}'
    assert not work.exists()


def test_our_runner_checks_before_testing_when_other_code_builds_it(
        seg_config, tmp_path):
    """Built by code other than a library's train/test script (here: this
    process), our configs' runner checks at the start of ``test()``: a
    checkpoint of another model is one line before the test loop."""
    from mmengine.config import Config
    from mmengine.registry import RUNNERS
    cfg = Config.fromfile(str(seg_config))
    assert cfg.runner_type == 'convnext_mm.PreflightRunner'
    ckpt = tmp_path / 'backbone_only.pth'
    backbone = ConvNeXt(**{k: v for k, v in cfg.model.backbone.items()
                           if k not in ('type', 'init_cfg')})
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in
                               backbone.state_dict().items()}}, ckpt)
    cfg.load_from, cfg.work_dir = str(ckpt), str(tmp_path / 'work')
    out = io.StringIO()
    with as_a_new_process(out), pytest.raises(SystemExit) as exit_:
        RUNNERS.build(cfg).test()
    assert exit_.value.code == 2
    line = out.getvalue().strip().splitlines()[-1]
    assert line.startswith('error: ') and str(ckpt) in line, line
    assert 'allow_partial=True' in line, line


def _lock_of(work, **owner):
    work.mkdir(parents=True, exist_ok=True)
    (work / 'iter_4.pth').write_bytes(b'the first run\'s checkpoint')
    (work / lock.LOCK_FILE).write_text(json.dumps(owner))
    return work


def test_a_second_run_on_a_work_dir_is_refused_naming_the_first(
        seg_config, capsys, tmp_path):
    """A live run of this host, or a run of another host (which cannot be
    checked), holds the work dir: one line naming it; nothing touched."""
    first = subprocess.Popen([sys.executable, '-c',
                              'import time; time.sleep(60)'])
    try:
        owner = dict(host=socket.gethostname(), pid=first.pid,
                     started=lock._start_time(first.pid), since=0)
        work = _lock_of(tmp_path / 'live', **owner)
        line = one_error_line(capsys, 'train', seg_config, '--work-dir', work)
        assert f'work dir {work} is held by another training run (pid ' \
            f'{first.pid} on host {owner["host"]} since ' in line
        assert 'which still runs; wait for it to end or give another ' \
            '--work-dir' in line
        assert json.loads((work / lock.LOCK_FILE).read_text()) == owner
        assert (work / 'iter_4.pth').read_bytes() == b"the first run's " \
            b'checkpoint'
        assert sorted(p.name for p in work.iterdir()) == [
            'convnext_mm.lock', 'iter_4.pth']
    finally:
        first.kill()
        first.wait()
    other = _lock_of(tmp_path / 'other', host='node-7', pid=1)
    line = one_error_line(capsys, 'train', seg_config, '--work-dir', other)
    assert 'pid 1 on host node-7' in line and 'may still run (another ' \
        'host' in line and 'start with --ignore-lock' in line
    # told otherwise through the config, as mmdet's/mmseg's scripts take it
    from mmengine.config import Config

    from convnext_mm.launch.runner import _checked
    cfg = Config.fromfile(str(seg_config))
    cfg.work_dir, cfg.ignore_lock = str(other), True
    with as_a_new_process(io.StringIO()):
        assert _checked(cfg, 'train')
    assert json.loads((other / lock.LOCK_FILE).read_text())['pid'] == \
        os.getpid()
    lock.release(str(other))


def test_a_lock_is_stale_once_its_process_is_gone(tmp_path):
    """Gone: the pid exits, or the pid now names a process that started
    at another time (the system reused it); and held by its own process
    (a run resumed in the process that was stopped)."""
    ended = subprocess.Popen([sys.executable, '-c', 'pass'])
    ended.wait()
    me = lock.this_process()
    assert lock.is_alive(me)
    assert not lock.is_alive(dict(me, pid=ended.pid))
    if me['started'] is not None:
        assert not lock.is_alive(dict(me, started=str(int(me['started']) + 1)))
    assert not lock.is_alive({})
    assert lock.is_alive(dict(me, host='node-7')) is None
    work = _lock_of(tmp_path / 'stale', host=me['host'], pid=ended.pid)
    lock.acquire(str(work))
    assert json.loads((work / lock.LOCK_FILE).read_text())['pid'] == me['pid']
    lock.acquire(str(work))  # its own
    with lock.holding(str(work)):
        pass
    assert not (work / lock.LOCK_FILE).exists()
    other = _lock_of(tmp_path / 'other', host='node-7', pid=1)
    with pytest.raises(lock.WorkDirInUse):
        lock.acquire(str(other))
    lock.acquire(str(other), take_over=True)
    lock.release(str(other))
    assert sorted(p.name for p in other.iterdir()) == ['iter_4.pth']


@needs_mmdeploy
def test_deploy_refuses_bad_input_before_any_work(seg_config, capsys,
                                                  tmp_path):
    out = tmp_path / 'onnx'
    ckpt = tmp_path / 'missing.pth'

    def deploy(*argv):
        return one_error_line(capsys, 'deploy', seg_config, ckpt, '--out',
                              out, *argv)

    assert 'model.decode_head is PSPHead, which tools/deploy.py cannot ' \
        'export (supported: UPerHead)' in deploy(
            '--cfg-options', 'model.decode_head.type=PSPHead')
    assert 'sliding-window test mode exports for one input size' in deploy(
        '--dynamic')
    assert '--image nowhere.jpg does not exist' in deploy(
        '--image', 'nowhere.jpg')
    text_file = tmp_path / 'notes.jpg'
    text_file.write_text('not an image')
    assert 'is not an image OpenCV can read' in deploy('--image', text_file)
    assert '--shape 16 64: height and width must be at least 32' in deploy(
        '--shape', '16', '64')
    assert 'missing.pth' in deploy()
    classifier = ROOT / 'configs' / 'convnext_t_in1k.py'
    assert 'exports detection (mmdet) and segmentation (mmseg) configs' in \
        one_error_line(capsys, 'deploy', classifier, ckpt, '--out', out)
    assert not out.exists()


@needs_mmdeploy
def test_deploy_keeps_a_previous_export(seg_config, capsys, tmp_path):
    out = tmp_path / 'onnx'
    out.mkdir()
    (out / 'end2end.onnx').write_bytes(b'the export of yesterday')
    line = one_error_line(capsys, 'deploy', seg_config, tmp_path / 'x.pth',
                          '--out', out)
    assert f'--out {out} holds a previous export (end2end.onnx)' in line
    assert (out / 'end2end.onnx').read_bytes() == b'the export of yesterday'
    assert sorted(p.name for p in out.iterdir()) == ['end2end.onnx']
    (out / 'end2end.onnx').rename(out / 'notes.txt')
    line = one_error_line(capsys, 'deploy', seg_config, tmp_path / 'x.pth',
                          '--out', out)
    assert f'--out {out} holds other files (notes.txt); give a new or ' \
        'empty directory (the export appears there whole)' in line
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    assert 'is a file' in one_error_line(capsys, 'deploy', seg_config,
                                         tmp_path / 'x.pth', '--out', a_file)


def test_resume_names_a_broken_checkpoint_and_the_complete_one(
        seg_config, capsys, tmp_path):
    import crafted
    from convnext_mm.training import choose_resume
    work = tmp_path / 'work'
    work.mkdir()
    complete = work / 'iter_2.pth'
    complete.write_bytes(crafted.saved({'state_dict': {}, 'meta': {}}))
    os.utime(complete, (1e9, 1e9))
    broken = work / 'iter_4.pth'
    broken.write_bytes(crafted.saved({'w': torch.ones(100)})[:300])
    (work / 'last_checkpoint').write_text(str(broken))
    hint = f'the newest complete checkpoint in {work} is {complete}'
    # a named checkpoint is refused, with the complete one beside it
    line = one_error_line(capsys, 'train', seg_config, '--resume', broken)
    assert f'{broken} is truncated' in line and hint in line
    # --resume alone falls back past it (the real runs: test_training_faults)
    fitting = []
    chosen, note = choose_resume(str(work), 'iter_{}.pth', fitting.append)
    assert chosen is None and fitting == [str(complete)]  # fits() said no
    chosen, note = choose_resume(str(work), 'iter_{}.pth', lambda p: True)
    assert chosen == str(complete)
    assert note == (f'--resume: {broken} (named by last_checkpoint) is not '
                    f'complete (its save was cut off); resuming from '
                    f'{complete}, the newest complete checkpoint')
    broken.unlink()
    chosen, note = choose_resume(str(work), 'iter_{}.pth', lambda p: True)
    assert chosen == str(complete) and 'does not exist' in note
    complete.unlink()
    chosen, note = choose_resume(str(work), 'iter_{}.pth', lambda p: True)
    assert chosen is None and note == (
        f'--resume: no complete checkpoint in {work}; starting from '
        'iteration 0')
    # a newer complete file than the marker's (killed between the two)
    for step in (2, 4):
        (work / f'iter_{step}.pth').write_bytes(crafted.saved({'s': step}))
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    chosen, note = choose_resume(str(work), 'iter_{}.pth', lambda p: True)
    assert chosen == str(work / 'iter_4.pth') and 'is newer than' in note


def test_written_files_are_whole_readable_and_never_clobbered(tmp_path):
    from convnext_mm.checkpoints.saving import atomic_file
    old = os.umask(0o022)
    try:
        long_name = tmp_path / ('c' * 240 + '.pth')
        with atomic_file(long_name) as out:
            out.write(b'data')
        assert long_name.read_bytes() == b'data'
        assert long_name.stat().st_mode & 0o777 == 0o644
        dst = tmp_path / 'dst.pth'
        with pytest.raises(FileExistsError, match='appeared while'):
            with atomic_file(dst, overwrite=False) as out:
                out.write(b'new')
                dst.write_bytes(b'theirs')  # another process got there
        assert dst.read_bytes() == b'theirs'
        assert sorted(os.listdir(tmp_path)) == sorted([long_name.name,
                                                       'dst.pth'])
    finally:
        os.umask(old)


# --- data pre-flight -----------------------------------------------------


@pytest.fixture
def det_data(tmp_path):
    """A small COCO-format dataset and a Mask R-CNN config on it, in
    tmp_path (each test may break them)."""
    from convnext_mm.synthetic import make_coco_instances
    from convnext_mm.synthetic.small_configs import small_det_config
    data = dict(train=make_coco_instances(tmp_path / 'coco', num_images=3,
                                          split='train'),
                val=make_coco_instances(tmp_path / 'coco', num_images=2,
                                        seed=1, split='val'))
    cfg = dumped(small_det_config, 'mask_rcnn_convnext_t_coco', data,
                 tmp_path / 'work')
    train = data['train']
    return cfg, Path(train['data_root']), train


def _ann(root, part):
    return json.loads((root / part['ann_file']).read_text())


def test_a_listed_image_that_is_missing_is_named(det_data, capsys):
    cfg, root, train = det_data
    first = _ann(root, train)['images'][0]['file_name']
    (root / train['img_dir'] / first).unlink()
    line = one_error_line(capsys, 'train', cfg)
    assert line == ('error: train_dataloader.dataset: image '
                    f'{root / train["img_dir"] / first} does not exist')
    line = one_error_line(capsys, 'test', cfg, 'x.pth', '--cfg-options',
                          f'test_dataloader.dataset.ann_file='
                          f'{train["ann_file"]}',
                          f'test_dataloader.dataset.data_root={root}/')
    assert line.startswith('error: test_dataloader.dataset: image ')


def test_a_corrupt_image_is_named_with_check_data_full(det_data, capsys):
    from mmengine.config import Config

    from convnext_mm.launch import check_data
    cfg, root, train = det_data
    first = root / train['img_dir'] / _ann(root, train)['images'][0][
        'file_name']
    data = first.read_bytes()
    first.write_bytes(data[:len(data) // 2])  # a whole header, cut data
    check_data(Config.fromfile(cfg), ['train'])  # quick: headers only
    line = one_error_line(capsys, 'train', cfg, '--check-data', 'full')
    assert line == (f'error: train_dataloader.dataset: image {first} cannot '
                    'be decoded; replace or remove it')


@pytest.mark.parametrize('content', [b'', b'<html>not found</html>'])
def test_a_file_that_is_no_image_is_named_by_the_quick_check(
        det_data, capsys, content):
    cfg, root, train = det_data
    first = root / train['img_dir'] / _ann(root, train)['images'][0][
        'file_name']
    first.write_bytes(content)
    line = one_error_line(capsys, 'train', cfg)
    assert line == (f'error: train_dataloader.dataset: image {first} is not '
                    'an image (no image format in its header); replace or '
                    'remove it')


def test_an_annotation_of_an_unknown_category_is_named(det_data, capsys):
    cfg, root, train = det_data
    ann = _ann(root, train)
    ann['annotations'][0]['category_id'] = 77
    (root / train['ann_file']).write_text(json.dumps(ann))
    line = one_error_line(capsys, 'train', cfg)
    assert line == (
        f'error: train_dataloader.dataset: 1 annotation(s) in '
        f'{root / train["ann_file"]} have category_id 77, which is not among '
        'its categories (1, 2, 3); mmdet would drop them without a word: '
        'fix the file')


@pytest.mark.parametrize('key', ['images', 'annotations'])
def test_a_coco_file_without_images_or_annotations_is_one_line(
        det_data, capsys, key):
    cfg, root, train = det_data
    ann = _ann(root, train)
    ann[key] = []
    (root / train['ann_file']).write_text(json.dumps(ann))
    line = one_error_line(capsys, 'train', cfg)
    assert line == (f'error: train_dataloader.dataset.ann_file: '
                    f'{root / train["ann_file"]} lists no {key}; ' + (
                        'a COCO file needs at least one' if key == 'images'
                        else 'training needs at least one'))


def test_a_polygon_of_two_points_is_named(det_data, capsys):
    cfg, root, train = det_data
    ann = _ann(root, train)
    ann['annotations'][1]['segmentation'] = [[1, 1, 5, 5]]
    (root / train['ann_file']).write_text(json.dumps(ann))
    line = one_error_line(capsys, 'test', cfg, 'x.pth', '--cfg-options',
                          f'test_dataloader.dataset.ann_file='
                          f'{train["ann_file"]}',
                          f'test_dataloader.dataset.data_root={root}/')
    assert line == (
        f'error: test_dataloader.dataset: 1 annotation(s) in '
        f'{root / train["ann_file"]} have a segmentation polygon of fewer '
        f'than 3 points (the first: annotation id '
        f'{ann["annotations"][1]["id"]}); the mask metric fails on them: '
        'fix or remove them')


def test_boxes_mmdet_drops_are_counted_and_refused_when_all(det_data):
    from mmengine.config import Config

    from convnext_mm.launch import check_data
    from helpers import captured_log
    cfg, root, train = det_data
    ann = _ann(root, train)
    total = len(ann['annotations'])
    ann['annotations'][0]['bbox'][2] = 0  # zero width
    ann['annotations'][1]['bbox'][3] = -4  # negative height
    (root / train['ann_file']).write_text(json.dumps(ann))
    with captured_log() as lines:
        check_data(Config.fromfile(cfg), ['train'])
    assert any(f'mmdet leaves out 2 of the {total} annotation(s)' in line
               for line in lines), lines
    for a in ann['annotations']:
        a['bbox'][0] = 10_000  # outside its image
    (root / train['ann_file']).write_text(json.dumps(ann))
    with pytest.raises(ValueError, match=f'none of the {total} annotation'):
        check_data(Config.fromfile(cfg), ['train'])


def test_class_names_that_are_not_the_datasets_say_how_to_set_them(
        det_data, capsys):
    cfg, root, train = det_data
    # the config left at COCO's 80 classes
    line = one_error_line(capsys, 'train', cfg, '--cfg-options',
                          'train_dataloader.dataset.metainfo.classes='
                          '[person,bicycle]')
    assert line.startswith(
        "error: train_dataloader.dataset: the config's classes person, "
        f'bicycle are not categories of {root / train["ann_file"]} (its '
        'categories: ')
    assert "--cfg-options train_dataloader.dataset.metainfo.classes='[" in \
        line


def test_ade20k_image_without_label_map_and_class_lists(tmp_path, capsys):
    from mmengine.config import Config

    from convnext_mm.launch import check_data
    from convnext_mm.synthetic import make_ade20k, make_image_folder
    data = make_ade20k(tmp_path / 'ade', num_train=2, num_val=1,
                       size=(64, 64))
    cfg = Config.fromfile(dumped(small_seg_config,
                                 'upernet_convnext_t_ade20k', data,
                                 tmp_path / 'work'))
    check_data(cfg, ['train', 'val'], 'full')
    labels = Path(data['data_root']) / 'annotations' / 'training'
    gone, empty = sorted(labels.iterdir())[:2]
    # class indices: 0..N with reduce_zero_label (0 ignored), 255 ignored
    count = len(cfg.train_dataloader.dataset.metainfo['classes']) + 1
    kept = np.array(Image.open(gone))
    for value, ok in ((count - 1, True), (255, True), (count, False)):
        wrong = kept.copy()
        wrong[0, :3] = value
        Image.fromarray(wrong).save(gone)
        if ok:
            check_data(cfg, ['train'])
        else:
            with pytest.raises(ValueError, match=(
                    f'label map {gone} holds class index {count}; the values '
                    f'must be 0..{count - 1} for {count - 1} classes with '
                    r'reduce_zero_label \(0 is ignored\), or 255')):
                check_data(cfg, ['train'])
    Image.fromarray(kept).save(gone)
    empty.write_bytes(b'')  # a zero-byte label map: one line, no traceback
    with pytest.raises(ValueError, match=f'{empty} is not an image'):
        check_data(cfg, ['train'])
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=f'has no label map {gone}'):
        check_data(cfg, ['train'])
    check_data(cfg, ['train'], 'off')
    # mmpretrain's annotation list
    from convnext_mm.synthetic.small_configs import small_cls_config
    folders = make_image_folder(tmp_path / 'folders')
    cls_cfg = small_cls_config('convnext_t_in1k', folders, tmp_path / 'c')
    train_dir = Path(folders['data_root']) / 'train'
    listed = sorted(p.relative_to(train_dir) for p in train_dir.rglob('*.*'))
    (train_dir.parent / 'train.txt').write_text(
        ''.join(f'{p} 0\n' for p in listed) + 'cat/missing.png 1\n')
    cls_cfg.train_dataloader.dataset.ann_file = 'train.txt'
    with pytest.raises(FileNotFoundError,
                       match='train_dataloader.dataset: image .*missing.png'):
        check_data(cls_cfg, ['train'])


# --- shape pre-flight ----------------------------------------------------


def test_a_neck_of_other_widths_than_the_backbone_is_one_line(
        seg_config, det_data, capsys):
    cfg, _, _ = det_data
    # the case: an atto backbone, the neck left at T's widths
    line = one_error_line(capsys, 'train', cfg, '--cfg-options',
                          'model.neck.in_channels=[96,192,384,768]')
    assert line == (
        'error: model.neck: FPN takes in_channels=[96, 192, 384, 768] but the '
        'backbone (ConvNeXt arch atto) gives [40, 80, 160, 320] channels; '
        'set model.neck.in_channels=[40, 80, 160, 320]')
    line = one_error_line(capsys, 'test', cfg, 'x.pth', '--cfg-options',
                          'model.roi_head.bbox_head.in_channels=256')
    assert line == (
        'error: model.roi_head.bbox_head: Shared2FCBBoxHead takes '
        'in_channels=256 but the neck (FPN), pooled per RoI, gives 128 '
        'channels; set model.roi_head.bbox_head.in_channels=128')
    line = one_error_line(capsys, 'train', seg_config, '--cfg-options',
                          'model.backbone.arch=tiny')
    assert line.startswith(
        'error: model.decode_head: UPerHead takes in_channels=[40, 80, 160, '
        '320] but the backbone (ConvNeXt arch tiny) gives [96, 192, 384, '
        '768] channels')


@needs_mmdeploy
def test_deploy_refuses_soft_nms_before_any_work(det_data, capsys,
                                                 tmp_path):
    cfg, _, _ = det_data
    line = one_error_line(capsys, 'deploy', cfg, tmp_path / 'x.pth',
                          '--out', tmp_path / 'o', '--cfg-options',
                          "model.test_cfg.rcnn.nms.type=soft_nms")
    assert line == (
        "error: model.test_cfg.rcnn.nms.type is 'soft_nms': standard ONNX "
        'has hard NMS only (NonMaxSuppression), so this test cannot be '
        'exported exactly. Export with hard NMS: --cfg-options '
        'model.test_cfg.rcnn.nms.type=nms (boxes that soft-NMS would keep '
        'with a lowered score are then removed)')
    assert not (tmp_path / 'o').exists()
