"""Download checkpoints once per machine: cached under a name keyed by the
whole URL, written whole or not at all (:mod:`.saving`), bounded by a read
timeout, a deadline over the whole download and a size cap (the settings:
docs/security.md), a SHA-256 prefix in the file name verified; in
distributed runs rank 0 downloads while the others wait."""
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

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from tqdm import tqdm

from ..errors import DownloadError
from .saving import atomic_file

# as torch.hub: the hex digits between the last '-' and the first '.'
_HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,64})\.')
_LARGE = 64 << 20
DEFAULTS = dict(timeout=60., deadline=7200., max_mb=8192.)
# of the URL's file name in the cache's (file systems allow 255 bytes, and
# the temporary name adds to it)
MAX_NAME = 120


def _setting(name: str) -> float:
    variable = f'CONVNEXT_MM_DOWNLOAD_{name.upper()}'
    raw = os.environ.get(variable)
    try:
        value = DEFAULTS[name] if raw is None else float(raw)
    except ValueError:
        value = -1.
    if not value > 0:
        raise ValueError(f'{variable}={raw!r}: give a positive number '
                         f'(default {DEFAULTS[name]:g})')
    return value


def _failed(url: str, what: str) -> DownloadError:
    return DownloadError(
        f'{what}. Offline or behind a proxy? Download {url} by hand and '
        "point the config at the file: init_cfg=dict(type='Pretrained', "
        "checkpoint='/path/to/file') or load_from='/path/to/file'")


def _url_name(url: str) -> str:
    return osp.basename(url.split('?')[0].split('#')[0])


def cache_path(url: str, model_dir: Optional[str] = None) -> str:
    """Where ``url`` is cached: ``<model_dir>/<sha256(url)[:12]>-<name>``,
    the name's end kept when it is long (its extension, and a hash in it)."""
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    name = (_url_name(url) or 'checkpoint.pth').encode()[-MAX_NAME:]
    return osp.join(model_dir, hashlib.sha256(url.encode()).hexdigest()[:12]
                    + '-' + name.decode(errors='ignore'))


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
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except (AttributeError, OSError):  # not connected, or closed
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


def download(url: str, dst: str, progress: bool = False) -> None:
    """Fetch ``url`` into ``dst`` atomically, verifying a hash in its name.

    Raises:
        DownloadError: with one line naming the URL and what to do offline.
    """
    timeout, deadline = _setting('timeout'), _setting('deadline')
    cap = int(_setting('max_mb') * (1 << 20))
    expected = _HASH_IN_NAME.search(_url_name(url))
    watchdog = _Watchdog(deadline)
    watchdog.timer.start()
    try:
        with atomic_file(dst) as out:
            digest = _fetch(url, out, timeout, cap, progress, watchdog)
            if expected and not digest.startswith(expected.group(1)):
                raise DownloadError(
                    f"{url}: the file's SHA-256 starts with "
                    f'{digest[:len(expected.group(1))]}, but its name '
                    f'promises {expected.group(1)}: corrupted or tampered '
                    'with. Nothing was kept; try again, or download it by '
                    'hand and check it')
    except DownloadError:
        if watchdog.fired:
            raise _failed(url, f'download of {url} passed its deadline of '
                          f'{deadline:g} s (CONVNEXT_MM_DOWNLOAD_DEADLINE); '
                          'nothing was kept') from None
        raise
    finally:
        watchdog.timer.cancel()


def _fetch(url, out, timeout, cap, progress, watchdog) -> str:
    """Write ``url``'s body to ``out``; return its SHA-256."""
    digest = hashlib.sha256()
    try:
        response = watchdog.opener().open(url, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError,
            http.client.HTTPException) as err:
        raise _failed(url, f'cannot download {url}: '
                      f'{getattr(err, "reason", err)}') from None
    with response:
        try:
            total = int(response.headers.get('Content-Length') or 0)
        except ValueError:
            total = 0
        if total > cap:
            raise DownloadError(
                f'{url} announces {total:,} bytes, over the download cap of '
                f'{cap:,} (CONVNEXT_MM_DOWNLOAD_MAX_MB); nothing was kept')
        bar = _progress(url, total, progress)
        while not watchdog.fired:
            try:
                # read1: whatever one receive brings, so that the deadline is
                # checked however slowly bytes come
                chunk = response.read1(1 << 20)
            except (OSError, http.client.HTTPException) as err:
                raise _failed(url, f'download of {url} broke off: '
                              f'{type(err).__name__}: {err}') from None
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            bar(len(chunk))
            if out.tell() > cap:
                raise DownloadError(
                    f'download of {url} passed the cap of {cap:,} bytes '
                    '(CONVNEXT_MM_DOWNLOAD_MAX_MB); nothing was kept')
        bar(None)
    if watchdog.fired:
        raise DownloadError(f'download of {url}: deadline')
    if total and out.tell() != total:
        raise _failed(url, f'download of {url} ended after {out.tell():,} '
                      f'of {total:,} bytes')
    return digest.hexdigest()


def _progress(url: str, total: int, show: bool):
    """Progress for large files: a bar on a terminal (``show``), else a log
    line every 10%."""
    if total and total < _LARGE:
        return lambda n: None
    if show:
        bar = tqdm(total=total or None, unit='B', unit_scale=True,
                   unit_divisor=1024)
        return lambda n: bar.close() if n is None else bar.update(n)
    done, next_tenth = 0, 1

    def update(n):
        nonlocal done, next_tenth
        done += n or 0
        while total and next_tenth <= 10 and done * 10 >= total * next_tenth:
            print_log(f'downloading {_url_name(url)}: {next_tenth * 10}% of '
                      f'{total / (1 << 20):,.0f} MiB', logger='current')
            next_tenth += 1

    return update


def cached_download(url: str, model_dir: Optional[str] = None,
                    progress: Optional[bool] = None) -> str:
    """Path of ``url``'s cached copy, downloading it first if needed."""
    rank, world_size = get_dist_info()
    dst = cache_path(url, model_dir)
    if rank == 0 and not osp.isfile(dst):
        download(url, dst, os.isatty(2) if progress is None else progress)
    if world_size > 1:
        barrier()
        if rank != 0 and not osp.isfile(dst):
            download(url, dst)
    return dst
