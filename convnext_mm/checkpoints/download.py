"""Download checkpoints once per machine, safely.

- The cache file is named after the whole URL (a SHA-256 prefix of it before
  the file's own name), so ``.../a/w.pth`` and ``.../b/w.pth`` never share an
  entry.
- Bytes go to a temporary file in the cache folder and are renamed into
  place only when complete (and verified): an interrupted download leaves
  nothing behind, and a half-written file is never read.
- Connecting and every read time out (``CONVNEXT_MM_DOWNLOAD_TIMEOUT``
  seconds, default 60), so a server that never answers cannot hang a job.
- A file name that carries a SHA-256 prefix (torch hub's and OpenMMLab's
  ``name-<hash>.pth`` convention) is checked against it.
- In distributed runs rank 0 downloads while the others wait at a barrier.
"""
import hashlib
import os
import os.path as osp
import re
import urllib.error
import urllib.request
from typing import Optional

from .atomic import atomic_file

# as torch.hub: the hex digits between the last '-' and the first '.'
_HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,64})\.')
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A checkpoint URL could not be fetched (or did not verify)."""


def _offline_hint(url: str) -> str:
    return (f'Offline or behind a proxy? Download {url} by hand and point '
            'the config at the file: init_cfg=dict(type=\'Pretrained\', '
            'checkpoint=\'/path/to/file\') or load_from=\'/path/to/file\'')


def _url_name(url: str) -> str:
    return osp.basename(url.split('?')[0].split('#')[0])


def cache_path(url: str, model_dir: Optional[str] = None) -> str:
    """Where ``url`` is cached: ``<model_dir>/<sha256(url)[:12]>-<name>``."""
    import torch
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return osp.join(model_dir, f'{key}-{_url_name(url) or "checkpoint.pth"}')


def download(url: str, dst: str, timeout: Optional[float] = None,
             progress: bool = False) -> None:
    """Fetch ``url`` into ``dst`` atomically, verifying a hash in its name.

    Raises:
        DownloadError: with one line naming the URL and what to do offline.
    """
    timeout = timeout or float(
        os.environ.get('CONVNEXT_MM_DOWNLOAD_TIMEOUT', 60))
    expected = _HASH_IN_NAME.search(_url_name(url))
    digest = hashlib.sha256()
    with atomic_file(dst) as out:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, 'reason', err)
            raise DownloadError(
                f'cannot download {url}: {reason}. {_offline_hint(url)}'
            ) from None
        with response:
            total = int(response.headers.get('Content-Length') or 0)
            bar = _progress(total, progress)
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except OSError as err:  # includes socket timeouts
                    raise DownloadError(
                        f'download of {url} broke off: {err}. '
                        f'{_offline_hint(url)}') from None
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                bar(len(chunk))
            bar(None)
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


def _progress(total: int, show: bool):
    if not show:
        return lambda n: None
    from tqdm import tqdm
    bar = tqdm(total=total or None, unit='B', unit_scale=True,
               unit_divisor=1024)

    def update(n):
        if n is None:
            bar.close()
        else:
            bar.update(n)

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
