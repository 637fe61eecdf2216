"""A wheelhouse: every file a set-up needs for a named Python and platform,
with a manifest of versions and SHA-256. Made on a connected machine
(``--wheelhouse``), used on nodes that reach no registry (``--offline``)."""
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .common import Refused, Target, normalise, pins, run, say, sha256
from .mmcv_build import download_source, recorded, store, verified
from .selection import BUILD_TOOLS, TORCH, parse_freeze, select

MANIFEST = 'manifest.json'
BUILDS = 'mmcv-builds'


def this_python() -> str:
    return '%d.%d' % sys.version_info[:2]


def target_args(python: Optional[str], platform: Optional[str]) -> List[str]:
    """pip's options for resolving and downloading for another Python or
    platform (binary wheels only, which pip requires for those)."""
    args = []
    if python:
        args += ['--python-version', python, '--implementation', 'cp']
    for tag in platform_tags(platform) if platform else []:
        args += ['--platform', tag]
    if python or platform:
        args += ['--only-binary=:all:']
    return args


def platform_tags(platform: str) -> List[str]:
    """``manylinux_2_28_x86_64`` -> itself and every older manylinux tag a
    glibc 2.28 machine also runs (pip takes ``--platform`` literally), the
    legacy aliases included; any other tag as it is."""
    m = re.fullmatch(r'manylinux_(\d+)_(\d+)_(\w+)', platform)
    if not m or m.group(1) != '2':
        return [platform]
    glibc, arch = int(m.group(2)), m.group(3)
    aliases = {17: 'manylinux2014', 12: 'manylinux2010', 5: 'manylinux1'}
    tags = []
    for minor in range(glibc, 4, -1):
        tags.append(f'manylinux_2_{minor}_{arch}')
        if minor in aliases:
            tags.append(f'{aliases[minor]}_{arch}')
    return tags


def is_torch_family(name: str) -> bool:
    """torch and what comes with its build (CUDA libraries, triton), whose
    versions in a container need not exist on any index."""
    return name in TORCH or name.startswith(('nvidia-', 'cuda-')) or \
        name in ('triton', 'pytorch-triton')


def _requirement(text: str):
    """A requirement parsed as pip parses it (pip's own packaging)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare Python: pip carries its own copy
        from pip._vendor.packaging.requirements import Requirement
    return Requirement(text)


def closure(report: dict, roots: Iterable[str], stop: Iterable[str]) -> Dict[
        str, str]:
    """``{name: version}`` of the resolved projects reachable from ``roots``
    through their requirements, not entering ``stop``.

    Requirements are followed as pip's resolver followed them: a
    requirement's environment marker is evaluated in the environment of
    pip's report, and a project's ``extra == ...`` requirements only for the
    extras something asked of it (torch asks ``cuda-toolkit[cudart, ...]``,
    whose extras pull in the CUDA runtime wheels).
    """
    resolved = {
        normalise(item['metadata']['name']): item['metadata']
        for item in report['install']
    }
    environment = dict(report.get('environment') or {})
    stop = {normalise(n) for n in stop}
    out: Dict[str, str] = {}
    extras: Dict[str, set] = {}
    todo = [(normalise(r), frozenset()) for r in roots]
    while todo:
        name, wanted = todo.pop()
        if name in stop or name not in resolved:
            continue
        known = extras.get(name)
        if known is not None and wanted <= known:
            continue
        extras[name] = (known or set()) | set(wanted)
        meta = resolved[name]
        out[name] = meta['version']
        for text in meta.get('requires_dist') or []:
            req = _requirement(text)
            if req.marker is not None and not any(
                    req.marker.evaluate(dict(environment, extra=extra))
                    for extra in sorted(extras[name]) or ['']):
                continue
            todo.append((normalise(req.name),
                         frozenset(normalise(e) for e in req.extras)))
    return out


def stub_wheels(folder: Path, have: Dict[str, str]) -> Path:
    """Empty wheels named as what the target keeps (``{name: version}``), so
    that an offline resolution counts them as present, as the target will."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, version in have.items():
        version = version.split()[-1] if version else ''
        if not re.fullmatch(r'[0-9][0-9A-Za-z.+!_-]*', version):
            continue
        dist = f'{name.replace("-", "_")}-{version}'
        info = f'{dist}.dist-info'
        with zipfile.ZipFile(folder / f'{dist}-py3-none-any.whl', 'w') as zf:
            zf.writestr(f'{info}/METADATA', 'Metadata-Version: 2.1\n'
                        f'Name: {name}\nVersion: {version}\n')
            zf.writestr(f'{info}/WHEEL', 'Wheel-Version: 1.0\nGenerator: '
                        'convnext_mm\nRoot-Is-Purelib: true\nTag: '
                        'py3-none-any\n')
            zf.writestr(f'{info}/RECORD', '')
    return folder


_MISSING = re.compile(r'No matching distribution found for (\S+)')


def verify_offline(folder: Path, requirements: List[str],
                   kept: Dict[str, str], extra: List[str]) -> None:
    """Resolve ``requirements`` from ``folder`` alone (and stand-ins for
    what the target keeps), as the offline install will; raise
    :class:`Refused` naming the first distribution it lacks."""
    if not requirements:
        return
    with tempfile.TemporaryDirectory(prefix='wheelhouse-check-') as tmp:
        reqs = Path(tmp, 'requirements.txt')
        reqs.write_text(''.join(f'{r}\n' for r in requirements))
        stubs = stub_wheels(Path(tmp, 'kept'), kept)
        cmd = [sys.executable, '-m', 'pip', 'install', '--dry-run',
               '--ignore-installed', '--no-index', '--find-links', folder,
               '--find-links', stubs, '--quiet',
               *(extra or ['--only-binary=:all:']), '--target',
               Path(tmp, 'target'), '-r', reqs]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('PIP_')}
        env.update(PIP_CONFIG_FILE=os.devnull,
                   PIP_DISABLE_PIP_VERSION_CHECK='1')
        res = subprocess.run([str(c) for c in cmd], capture_output=True,
                             text=True, env=env)
    if res.returncode != 0:
        missing = _MISSING.search(res.stdout + res.stderr)
        what = missing.group(1) if missing else \
            (res.stdout + res.stderr).strip().splitlines()[-1:]
        raise Refused(
            f'wheelhouse {folder} cannot install offline: it lacks '
            f'{what} (pip: no matching distribution without an index); '
            're-make it with --wheelhouse')


def _pip(args: List, step: str, target: Target):
    return run(target, step, [sys.executable, '-m', 'pip', *args])


def collect(folder: Path, target: Target, python: Optional[str],
            platform: Optional[str], keep_torch: bool,
            skip_installed: Optional[Path]):
    """Fill ``folder`` with the wheels of the pins and their dependencies for
    the target, mmcv's source archive, the cached compiled mmcv wheels for
    that Python, and ``manifest.json``."""
    if folder.exists() and (folder / MANIFEST).exists():
        raise Refused(f'{folder} already holds a wheelhouse '
                      f'({folder / MANIFEST}); pick a new folder, or remove '
                      'that one first')
    have = parse_freeze(skip_installed.read_text()) if skip_installed else {}
    # a fresh venv brings its own (older) setuptools, which would hide the
    # target's: the build tools always travel
    for name in BUILD_TOOLS:
        have.pop(name, None)
    p = pins()
    chosen = select(p, keep_torch, have)
    folder.mkdir(parents=True, exist_ok=True)
    extra = target_args(python, platform)
    py = python or this_python()
    say(f'collecting a wheelhouse for Python {py} on '
        f'{platform or sysconfig.get_platform()} in {folder}')
    for name, version in sorted(chosen.kept.items()):
        say(f'  left to the target: {name} {version} (it has it)')
    with tempfile.TemporaryDirectory(prefix='wheelhouse-') as tmp:
        reqs = Path(tmp, 'requirements.txt')
        reqs.write_text(''.join(f'{n}=={v}\n'
                                for n, v in chosen.install.items()))
        # resolved against what the target keeps, so that nothing in the
        # wheelhouse needs another version of it
        fixed = Path(tmp, 'constraints.txt')
        fixed.write_text(''.join(f'{n}=={v.split("+")[0]}\n'
                                 for n, v in have.items()
                                 if v and not is_torch_family(n)
                                 and n not in chosen.install))
        report_path = Path(tmp, 'report.json')
        # pip takes another platform's options only with --target (nothing
        # is installed there: --dry-run)
        _pip([
            'install', '--dry-run', '--ignore-installed',
            '--report', report_path, *(extra or ['--only-binary=:all:']),
            '--target', Path(tmp, 'target'), '-r', reqs, '-c', fixed
        ], 'wheelhouse-resolve', target)
        report = json.loads(report_path.read_text())
    # what the target has stays, unless we replace it with our pin
    stop = (set(have) - set(chosen.install)) | (set(TORCH)
                                                if keep_torch else set())
    wanted = closure(report, chosen.install, stop)
    say(f'downloading {len(wanted)} wheels and mmcv {p["mmcv"]}\'s source')
    _pip([
        'download', '--no-deps', '--quiet', '-d', folder,
        *(extra or ['--only-binary=:all:']),
        *[f'{n}=={v}' for n, v in sorted(wanted.items())]
    ], 'wheelhouse-download', target)
    download_source(target, p['mmcv'], p['setuptools'], folder,
                    python=sys.executable)
    builds = reuse_cached_builds(folder, target.cache, py, p['mmcv'])
    requirements = [f'{n}=={v}' for n, v in chosen.install.items()]
    kept = {n: v for n, v in have.items() if n in stop}
    say('checking that the wheelhouse installs offline (pip, no index)')
    verify_offline(folder, requirements, kept, extra)
    files = describe(folder)
    write_manifest(folder, dict(
        format=1, python=py, platform=platform or sysconfig.get_platform(),
        keep_torch=keep_torch, requirements=requirements,
        left_to_target=chosen.kept, kept=kept, mmcv=p['mmcv'],
        mmcv_source=f'mmcv-{p["mmcv"]}.tar.gz', files=files))
    size = sum(entry['size'] for entry in files.values())
    say(f'wheelhouse ready: {len(files)} files, '
        f'{size / 2**20:.0f} MiB, {builds} compiled mmcv wheel(s); copy '
        f'{folder} to the nodes and run python3 tools/setup_env.py '
        f'--offline {folder}' + (' --keep-torch' if keep_torch else ''))


def reuse_cached_builds(folder: Path, cache: Path, python: str,
                        mmcv: str) -> int:
    """Copy the compiled mmcv wheels this machine has cached for ``python``
    into ``folder/mmcv-builds/<key>/``."""
    count = 0
    tag = 'py' + python.replace('.', '')
    for key_dir in sorted((cache / 'wheels').glob(f'mmcv-{mmcv}_*_{tag}')):
        wheel = verified(key_dir)
        if wheel is not None:
            store(wheel, folder / BUILDS / key_dir.name)
            count += 1
    return count


def describe(folder: Path) -> Dict[str, dict]:
    """``{relative path: {sha256, size}}`` of the wheelhouse's files."""
    out = {}
    for path in sorted(folder.rglob('*')):
        if path.is_file() and path.name != MANIFEST and not (
                path.name.endswith('.sha256')
                or path.name.endswith('.partial')):
            out[str(path.relative_to(folder))] = dict(
                sha256=sha256(path), size=path.stat().st_size)
    return out


def write_manifest(folder: Path, manifest: dict):
    tmp = folder / (MANIFEST + '.partial')
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + '\n')
    os.replace(tmp, folder / MANIFEST)


def check(folder: Path, python: str, keep_torch: bool) -> dict:
    """The manifest of an intact wheelhouse made for ``python``, or
    :class:`Refused` naming what is missing or wrong."""
    path = folder / MANIFEST
    if not path.exists():
        raise Refused(
            f'{folder} is not a wheelhouse (no {MANIFEST}); make one on a '
            f'connected machine with python3 tools/setup_env.py --wheelhouse '
            f'{folder} --python {python}')
    manifest = json.loads(path.read_text())
    if manifest['python'] != python:
        raise Refused(
            f'{folder} was made for Python {manifest["python"]}, this is '
            f'Python {python}; make one with --python {python}')
    if manifest['keep_torch'] and not keep_torch:
        raise Refused(f'{folder} holds no torch (it was made with '
                      '--keep-torch); add --keep-torch to use this Python\'s '
                      'torch')
    missing, damaged = [], []
    for name, entry in manifest['files'].items():
        file = folder / name
        if not file.exists():
            missing.append(name)
        elif file.stat().st_size != entry['size'] or sha256(
                file) != entry['sha256']:
            damaged.append(name)
    if missing or damaged:
        what = '; '.join(
            ([f'missing {", ".join(missing)}'] if missing else []) +
            ([f'SHA-256 differs from {MANIFEST}: {", ".join(damaged)}']
             if damaged else []))
        raise Refused(f'wheelhouse {folder} is incomplete: {what}; copy it '
                      'again from where it was made, or re-make it with '
                      '--wheelhouse')
    # what pip will need, resolved from the folder alone before anything is
    # created (wheelhouses made before the check kept no list: the pins)
    verify_offline(folder, manifest.get('requirements', []),
                   manifest.get('kept', manifest.get('left_to_target', {})),
                   [])
    return manifest


def cached_build(folder: Path, manifest: dict, key: str) -> Optional[Path]:
    """The compiled mmcv wheel the wheelhouse holds for ``key``, checked."""
    for name in manifest['files']:
        if name.startswith(f'{BUILDS}/{key}/') and name.endswith('.whl'):
            return folder / name
    return None


def add_build(folder: Path, key: str, wheel: Path):
    """Write a freshly compiled mmcv wheel back into the wheelhouse so the
    next node skips the build; a read-only wheelhouse is left as it is."""
    try:
        stored = store(wheel, folder / BUILDS / key)
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest['files'][str(stored.relative_to(folder))] = dict(
            sha256=recorded(stored), size=stored.stat().st_size)
        write_manifest(folder, manifest)
    except OSError as err:
        say(f'could not write the compiled mmcv wheel into {folder} '
            f'({err}); the next node will compile it again')
        return
    say(f'compiled mmcv wheel written back into {folder / BUILDS / key}')
