"""mmcv 2.1.0 compiled with its ops against the target's torch: CPU ops, or
CUDA ops for the GPUs present (or ``TORCH_CUDA_ARCH_LIST``), in the build
environment recent CUDA toolkits need; the wheel cached under a key of
everything it depends on, and shared safely."""
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import List, NamedTuple, Optional

from .common import (Refused, StepFailed, Target, offline_env, probe, run,
                     say, sha256)

BUILD_PROBE = r'''
import json, sys, torch
caps = []
if torch.cuda.is_available():
    caps = sorted({'%d.%d' % torch.cuda.get_device_capability(i)
                   for i in range(torch.cuda.device_count())})
print(json.dumps(dict(torch=torch.__version__, cuda=torch.version.cuda,
                      caps=caps, py='%d%d' % sys.version_info[:2])))
'''


class Build(NamedTuple):
    """What the compiled wheel depends on, and its cache key."""
    key: str
    cuda_arch: Optional[str]  # TORCH_CUDA_ARCH_LIST for CUDA ops, or None
    note: str  # why CPU ops, when a GPU was there to use


# where CUDA toolkits install themselves by default
DEFAULT_CUDA_HOME = '/usr/local/cuda'


def find_cuda_home() -> Optional[Path]:
    """The CUDA toolkit: ``CUDA_HOME`` / ``CUDA_PATH``, else the folder
    above nvcc on PATH, else ``/usr/local/cuda``; the first with both
    ``bin/nvcc`` and ``include/cuda_runtime.h`` (an nvcc wrapper script in
    ``/usr/local/bin`` would otherwise make torch look for headers in
    ``/usr/local/include``)."""
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    nvcc = shutil.which('nvcc')
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append(DEFAULT_CUDA_HOME)
    for home in filter(None, candidates):
        home = Path(home)
        if (home / 'bin' / 'nvcc').exists() and (home / 'include' /
                                                 'cuda_runtime.h').exists():
            return home
    return None


def find_nvcc() -> Optional[str]:
    home = find_cuda_home()
    return str(home / 'bin' / 'nvcc') if home else shutil.which('nvcc')


LIBRARY_HEADERS = r'''
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print(os.pathsep.join(sorted(glob.glob(os.path.join(site, 'nvidia', '*',
                                                    'include')))))
'''


def cuda_build_env(target: Target, env: dict) -> List[str]:
    """Point the build at the toolkit, and at the CUDA library headers
    (cuSPARSE, cuBLAS, cuSOLVER) that torch's headers include: a toolkit
    with only the compiler and runtime lacks them, the pip-installed
    ``nvidia-*`` packages next to torch have them. Returns what was set."""
    said = []
    home = find_cuda_home()
    if home:
        env['CUDA_HOME'] = str(home)
        said.append(f'CUDA_HOME={home}')
    if not (home and (home / 'include' / 'cusparse.h').exists()):
        extra = probe(target.python, LIBRARY_HEADERS)
        if extra:
            env['CPATH'] = os.pathsep.join(
                filter(None, [extra, env.get('CPATH')]))
            said.append(f'CPATH+={extra} (the toolkit has no cusparse.h; '
                        'headers of the nvidia-* packages beside torch)')
    return said


def nvcc_version(nvcc: str) -> Optional[str]:
    try:
        out = subprocess.run([nvcc, '--version'], capture_output=True,
                             text=True).stdout
    except OSError:
        return None
    m = re.search(r'release (\d+\.\d+)', out)
    return m.group(1) if m else None


def arch_tag(arch_list: str) -> str:
    """``'8.0;9.0+PTX'`` -> ``'sm80-sm90ptx'``, for the cache key."""
    parts = re.split(r'[;\s,]+', arch_list.strip())
    return '-'.join('sm' + p.lower().replace('.', '').replace('+', '')
                    for p in parts if p)


def plan(target: Target, mmcv_version: str) -> Build:
    """Decide CPU or CUDA ops for the target's torch, and the cache key."""
    out = probe(target.python, BUILD_PROBE)
    if out is None:
        raise StepFailed('step "mmcv" failed: torch does not import in '
                         f'{target.python}; run {target.python} -c "import '
                         'torch"')
    info = json.loads(out)
    torch_v = info['torch'].replace('+', '_')
    cuda = info['cuda']
    arch, note = None, ''
    nvcc = find_nvcc() if cuda else None
    wanted = os.environ.get('TORCH_CUDA_ARCH_LIST') or ';'.join(info['caps'])
    if cuda and wanted and not nvcc:
        note = ('no nvcc on PATH or in CUDA_HOME: mmcv gets CPU ops only, '
                'so its ops (RoIAlign, NMS) cannot run on the GPU; install '
                f'the CUDA {cuda} toolkit to build CUDA ops')
    elif cuda and wanted:
        have = nvcc_version(nvcc)
        if have and have.split('.')[0] != cuda.split('.')[0]:
            raise Refused(
                f'nvcc {have} ({nvcc}) does not match the CUDA {cuda} this '
                f'torch was built with; put a CUDA {cuda.split(".")[0]}.x '
                'nvcc first on PATH (or in CUDA_HOME), or hide nvcc to build '
                'CPU ops only')
        arch = wanted
    ops = f'cudaops-{arch_tag(arch)}' if arch else 'cpuops'
    key = (f'mmcv-{mmcv_version}_torch-{torch_v}_cu-{cuda or "none"}_{ops}'
           f'_py{info["py"]}')
    return Build(key, arch, note)


def record_path(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + '.sha256')


def recorded(wheel: Path) -> str:
    """The SHA-256 recorded beside a stored wheel."""
    return record_path(wheel).read_text().split()[0]


def verified(folder: Path) -> Optional[Path]:
    """The wheel in ``folder`` if its recorded SHA-256 matches; a wheel whose
    hash does not match is removed (it will be rebuilt). A wheel cached
    before hashes were recorded is kept when its zip checks out."""
    for wheel in sorted(folder.glob('mmcv-*.whl')):
        record = record_path(wheel)
        if record.exists():
            if recorded(wheel) == sha256(wheel):
                return wheel
            say(f'cached {wheel} does not match its recorded SHA-256; '
                'removing it and building again')
        else:
            try:
                with zipfile.ZipFile(wheel) as zf:
                    if zf.testzip() is None:
                        store_record(wheel)
                        return wheel
            except zipfile.BadZipFile:
                pass
            say(f'cached {wheel} is damaged; removing it and building again')
        wheel.unlink()
        record.unlink(missing_ok=True)
    return None


def store_record(wheel: Path):
    tmp = record_path(wheel).with_suffix('.partial')
    tmp.write_text(f'{sha256(wheel)}  {wheel.name}\n')
    os.replace(tmp, record_path(wheel))


def store(wheel: Path, folder: Path) -> Path:
    """Copy ``wheel`` into ``folder`` so that no reader ever sees a partial
    file: a uniquely named temporary copy, renamed into place, then its
    hash record."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + wheel.name,
                               suffix='.partial')
    os.close(fd)
    try:
        shutil.copyfile(wheel, tmp)
        # mkstemp made it private; a cache shared between users must be
        # readable as a plain open() would have made it
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, folder / wheel.name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    store_record(folder / wheel.name)
    return folder / wheel.name


def compile_progress(line):
    m = re.match(r'\[(\d+)/(\d+)\]', line.strip())
    if m:
        done, total = int(m.group(1)), int(m.group(2))
        return f'compiling mmcv ops: {done}/{total} ({100 * done // total}%)'
    return None


def download_source(target: Target, version: str, setuptools: str,
                    into: Path, python=None) -> Path:
    """Download mmcv's source archive into ``into``. pip prepares its
    metadata in an isolated build environment, where mmcv's ``setup.py``
    needs a setuptools that still has ``pkg_resources`` (< 81)."""
    into.mkdir(parents=True, exist_ok=True)
    constraint = into / '.setuptools-constraint.txt'
    constraint.write_text(f'setuptools=={setuptools}\n')
    try:
        run(target, 'mmcv-download', [
            python or target.python, '-m', 'pip', 'download', '--no-deps',
            '--no-binary', ':all:', '--quiet', '-d', into, f'mmcv=={version}'
        ], env=dict(os.environ, PIP_CONSTRAINT=str(constraint)))
    finally:
        constraint.unlink()
    return into / f'mmcv-{version}.tar.gz'


def build(target: Target, build_: Build, version: str, setuptools: str,
          wheelhouse: Optional[Path], tmp: Path) -> Path:
    """Compile the wheel in the scratch folder ``tmp``; return its path
    there."""
    jobs = os.environ.get('MAX_JOBS', str(os.cpu_count() or 2))
    kind = f'CUDA ops for {build_.cuda_arch}' if build_.cuda_arch else \
        'CPU ops'
    say(f'compiling mmcv {version} with {kind} against this torch, {jobs} '
        'jobs (about 10 minutes on 2 cores for CPU ops, much longer with '
        'CUDA ops)')
    env = dict(os.environ if wheelhouse is None else offline_env(wheelhouse),
               MMCV_WITH_OPS='1', MAX_JOBS=jobs)
    if build_.cuda_arch:
        env.update(FORCE_CUDA='1', TORCH_CUDA_ARCH_LIST=build_.cuda_arch)
        for line in cuda_build_env(target, env):
            say(f'build environment: {line}')
    else:
        env.update(FORCE_CUDA='0', CUDA_VISIBLE_DEVICES='')
    archive = (wheelhouse / f'mmcv-{version}.tar.gz' if wheelhouse else
               download_source(target, version, setuptools, tmp))
    with tarfile.open(archive) as tf:
        # the 'data' filter refuses links and paths leaving the folder
        safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
        tf.extractall(tmp / 'src', **safe)
    source = tmp / 'src' / f'mmcv-{version}'
    run(target, 'mmcv-build', [
        target.python, '-m', 'pip', 'wheel', '-v', '--no-deps',
        '--no-build-isolation', '-w', tmp / 'out', source
    ],
        env=env,
        progress=compile_progress)
    built = sorted((tmp / 'out').glob('mmcv-*.whl'))
    if not built:
        raise StepFailed('step "mmcv-build" produced no wheel; see '
                         f'{target.logs / "mmcv-build.log"}')
    return built[0]
