"""Download checkpoints once per machine, safely.

- The cache file is named after the whole URL (a SHA-256 prefix of it before
  the file's own name), so ``.../a/w.pth`` and ``.../b/w.pth`` never share an
  entry.
- Bytes go to a temporary file in the cache folder and are renamed into
  place only when complete (and verified): an interrupted, overlong or late
  download leaves nothing behind, and a half-written file is never read.
- Three bounds, each set by an environment variable: connecting and every
  read time out (``CONVNEXT_MM_DOWNLOAD_TIMEOUT``, 60 s), the whole download
  - connecting, each redirect, the headers and the body - has a deadline
  (``CONVNEXT_MM_DOWNLOAD_DEADLINE``, 7200 s: a server sending a byte a
  second never times a read out; a watchdog shuts the connections down when
  it passes), and a size cap
  (``CONVNEXT_MM_DOWNLOAD_MAX_MB``, 8192 MiB, above every ConvNeXt
  checkpoint), checked against the announced length first.
- Progress is shown for files over 64 MiB: a bar on a terminal, a log line
  every 10% elsewhere.
- A file name that carries a SHA-256 prefix (torch hub's and OpenMMLab's
  ``name-<hash>.pth`` convention) is checked against it.
- In distributed runs rank 0 downloads while the others wait at a barrier.
"""
import hashlib
import http.client
import os
import os.path as osp
import re
import socket
import threading
import urllib.error
import urllib.request
from typing import Optional

from ..errors import DownloadError
from .saving import atomic_file

# as torch.hub: the hex digits between the last '-' and the first '.'
_HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,64})\.')
_CHUNK = 1 << 20
_LARGE = 64 << 20
DEFAULTS = dict(timeout=60., deadline=7200., max_mb=8192.)


def _setting(name: str) -> float:
    variable = f'CONVNEXT_MM_DOWNLOAD_{name.upper()}'
    raw = os.environ.get(variable)
    if raw is None:
        return DEFAULTS[name]
    try:
        value = float(raw)
    except ValueError:
        value = -1.
    if not value > 0:
        raise ValueError(f'{variable}={raw!r}: give a positive number '
                         f'(default {DEFAULTS[name]:g})')
    return value


def _offline_hint(url: str) -> str:
    return (f'Offline or behind a proxy? Download {url} by hand and point '
            'the config at the file: init_cfg=dict(type=\'Pretrained\', '
            'checkpoint=\'/path/to/file\') or load_from=\'/path/to/file\'')


# of the URL's file name in the cache's (file systems allow 255 bytes, and
# the temporary name adds to it)
MAX_NAME = 120


def _url_name(url: str) -> str:
    return osp.basename(url.split('?')[0].split('#')[0])


def cache_path(url: str, model_dir: Optional[str] = None) -> str:
    """Where ``url`` is cached: ``<model_dir>/<sha256(url)[:12]>-<name>``,
    the name's end kept when it is long (its extension, and a hash in it)."""
    import torch
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    name = _url_name(url) or 'checkpoint.pth'
    while len(name.encode()) > MAX_NAME:
        name = name[1:]
    return osp.join(model_dir, f'{key}-{name}')


class _Watchdog:
    """Shuts down every connection the download opened once its deadline
    passes, whatever the connection is waiting for (the connect, a
    redirect's headers, the body): a blocked read then fails at once."""

    def __init__(self, seconds: float):
        self.connections, self.fired = [], False
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True

    def fire(self):
        self.fired = True
        for connection in list(self.connections):
            sock = getattr(connection, 'sock', None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def opener(self):
        """A urllib opener whose connections the watchdog knows."""
        watched = self.connections

        def tracked(cls):
            class Tracked(cls):
                def connect(self):
                    watched.append(self)
                    super().connect()
            return Tracked

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(tracked(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(tracked(http.client.HTTPSConnection), req,
                                    context=self._context)

        return urllib.request.build_opener(HTTP(), HTTPS())


def download(url: str, dst: str, timeout: Optional[float] = None,
             progress: bool = False) -> None:
    """Fetch ``url`` into ``dst`` atomically, verifying a hash in its name.

    Raises:
        DownloadError: with one line naming the URL and what to do offline.
    """
    timeout = timeout or _setting('timeout')
    allowed = _setting('deadline')
    cap = int(_setting('max_mb') * (1 << 20))
    expected = _HASH_IN_NAME.search(_url_name(url))
    watchdog = _Watchdog(allowed)
    watchdog.timer.start()
    try:
        _fetch(url, dst, timeout, cap, expected, progress, watchdog)
    except DownloadError:
        if watchdog.fired:
            raise DownloadError(
                f'download of {url} passed its deadline of {allowed:g} s '
                '(CONVNEXT_MM_DOWNLOAD_DEADLINE); nothing was kept. '
                f'{_offline_hint(url)}') from None
        raise
    finally:
        watchdog.timer.cancel()


def _fetch(url, dst, timeout, cap, expected, progress, watchdog) -> None:
    digest = hashlib.sha256()
    with atomic_file(dst) as out:
        try:
            response = watchdog.opener().open(url, timeout=timeout)
        except (urllib.error.URLError, OSError, ValueError,
                http.client.HTTPException) as err:
            reason = getattr(err, 'reason', err)
            raise DownloadError(
                f'cannot download {url}: {reason}. {_offline_hint(url)}'
            ) from None
        with response:
            try:
                total = int(response.headers.get('Content-Length') or 0)
            except ValueError:
                total = 0
            if total > cap:
                raise DownloadError(
                    f'{url} announces {total:,} bytes, over the download '
                    f'cap of {cap:,} (CONVNEXT_MM_DOWNLOAD_MAX_MB); nothing '
                    'was kept')
            bar = _progress(url, total, progress)
            while True:
                try:
                    # read1: whatever one receive brings, so that the
                    # deadline is checked however slowly bytes come
                    chunk = response.read1(_CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise DownloadError(
                        f'download of {url} broke off: '
                        f'{type(err).__name__}: {err}. '
                        f'{_offline_hint(url)}') from None
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                bar(len(chunk))
                if out.tell() > cap:
                    raise DownloadError(
                        f'download of {url} passed the cap of {cap:,} bytes '
                        '(CONVNEXT_MM_DOWNLOAD_MAX_MB); nothing was kept')
                if watchdog.fired:
                    raise DownloadError(f'download of {url}: deadline')
            bar(None)
        if watchdog.fired:
            raise DownloadError(f'download of {url}: deadline')
        if total and out.tell() != total:
            raise DownloadError(
                f'download of {url} ended after {out.tell():,} of '
                f'{total:,} bytes. {_offline_hint(url)}')
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise DownloadError(
                f'{url}: the file\'s SHA-256 starts with '
                f'{digest.hexdigest()[:len(expected.group(1))]}, but its name '
                f'promises {expected.group(1)}: corrupted or tampered with. '
                'Nothing was kept; try again, or download it by hand and '
                'check it')


def _progress(url: str, total: int, show: bool):
    """Progress for large files: a bar on a terminal (``show``), else a log
    line every 10%."""
    if total and total < _LARGE:
        return lambda n: None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=total or None, unit='B', unit_scale=True,
                   unit_divisor=1024)
        return lambda n: bar.close() if n is None else bar.update(n)
    from mmengine.logging import print_log
    done, next_tenth = 0, 1

    def update(n):
        nonlocal done, next_tenth
        if n is None or not total:
            return
        done += n
        while next_tenth <= 10 and done * 10 >= total * next_tenth:
            print_log(f'downloading {_url_name(url)}: {next_tenth * 10}% of '
                      f'{total / (1 << 20):,.0f} MiB', logger='current')
            next_tenth += 1

    return update


def cached_download(url: str, model_dir: Optional[str] = None,
                    progress: Optional[bool] = None) -> str:
    """Path of ``url``'s cached copy, downloading it first if needed."""
    from mmengine.dist import barrier, get_dist_info
    rank, world_size = get_dist_info()
    dst = cache_path(url, model_dir)
    show = os.isatty(2) if progress is None else progress
    if rank == 0 and not osp.isfile(dst):
        download(url, dst, progress=show)
    if world_size > 1:
        barrier()
        if rank != 0 and not osp.isfile(dst):
            download(url, dst, progress=False)
    return dst
