#!/usr/bin/env python3
"""Set up convnext_mm's virtual environment on a fresh machine, idempotently.

Run with any Python >= 3.9 (it creates ``.venv`` in the checkout)::

    python3 tools/setup_env.py            # set up, or check and skip
    python3 tools/setup_env.py --force    # redo every step

Steps: create the venv; install the pinned torch/torchvision; compile mmcv
2.1.0 with its ops against that torch (CUDA ops when a GPU and nvcc are
present, CPU ops otherwise), reusing a wheel cached outside the checkout under
a key of mmcv, torch, CUDA and Python versions; install the rest of
``requirements.txt`` and this package in editable mode; check the result.

Environment: ``CONVNEXT_MM_CACHE`` moves the wheel cache (default
``~/.cache/convnext_mm``); ``CONVNEXT_MM_VENV`` moves the venv; ``MAX_JOBS``
caps compile jobs.
"""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / 'requirements.txt'
VENV = Path(os.environ.get('CONVNEXT_MM_VENV', ROOT / '.venv'))
CACHE = Path(
    os.environ.get('CONVNEXT_MM_CACHE',
                   Path(os.environ.get('XDG_CACHE_HOME',
                                       Path.home() / '.cache')) /
                   'convnext_mm'))
STAMP = VENV / '.convnext_mm_setup'
LOG_DIR = VENV / 'logs'


class StepFailed(RuntimeError):
    """A set-up step failed; the message names the step and the log."""


def say(msg):
    print(f'[setup] {msg}', flush=True)


def pins():
    """Return ``{name: version}`` from requirements.txt."""
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            name, _, version = line.partition('==')
            out[name.strip().lower()] = version.strip()
    return out


def venv_python():
    return VENV / 'bin' / 'python'


def run(step, cmd, env=None, progress=None):
    """Run ``cmd``, logging everything to ``LOG_DIR/<step>.log``.

    ``progress``, when given, is called with each output line and returns a
    status string to show on one updating line, or None.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f'{step}.log'
    tty = sys.stdout.isatty()
    last_shown = ''
    last_time = 0.0
    with open(log_path, 'w') as log:
        log.write('$ ' + ' '.join(map(str, cmd)) + '\n')
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            errors='replace')
        for line in proc.stdout:
            log.write(line)
            status = progress(line) if progress else None
            if status and status != last_shown:
                now = time.time()
                # on a terminal: one live line; in CI logs: one line / 30 s
                if tty:
                    print(f'\r[setup]   {status}', end='', flush=True)
                elif now - last_time > 30:
                    say(f'  {status}')
                    last_time = now
                last_shown = status
        code = proc.wait()
    if tty and last_shown:
        print()
    if code != 0:
        tail = log_path.read_text().splitlines()[-40:]
        raise StepFailed(f'step "{step}" failed (exit {code}). Last lines:\n' +
                         '\n'.join(tail) + f'\nFull log: {log_path}')
    return log_path


def pip(step, *args, env=None, progress=None):
    return run(
        step, [venv_python(), '-m', 'pip', 'install', '--progress-bar', 'off',
               *args],
        env=env,
        progress=progress or pip_progress)


def pip_progress(line):
    m = re.match(r'\s*(Collecting|Downloading|Installing collected) ?(\S*)',
                 line)
    if m:
        return f'{m.group(1).lower()} {m.group(2)}'.strip()
    return None


def probe(code):
    """Run ``code`` in the venv's Python; return its stdout or None."""
    res = subprocess.run([venv_python(), '-c', code],
                         capture_output=True,
                         text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def step_venv():
    if venv_python().exists():
        return
    say(f'creating virtual environment {VENV}')
    run('venv', [sys.executable, '-m', 'venv', VENV])


def step_torch(p):
    want = f"{p['torch']} {p['torchvision']}"
    have = probe('import torch, torchvision; '
                 'print(torch.__version__.split("+")[0], '
                 'torchvision.__version__.split("+")[0])')
    if have == want:
        return
    say(f"installing torch {p['torch']} and torchvision {p['torchvision']} "
        '(several GB with the CUDA runtime libraries; about a minute)')
    pip('torch', f"torch=={p['torch']}", f"torchvision=={p['torchvision']}",
        f"setuptools=={p['setuptools']}", f"wheel=={p['wheel']}",
        f"ninja=={p['ninja']}", f"numpy=={p['numpy']}")


def mmcv_build_key(p):
    """The cache key: mmcv, torch, CUDA (and whether CUDA ops), Python."""
    info = probe(
        'import os, shutil, sys, torch; '
        'cuda_ops = torch.cuda.is_available() and '
        '(shutil.which("nvcc") is not None '
        'or bool(os.environ.get("CUDA_HOME")));'
        'print(torch.__version__, torch.version.cuda or "none", '
        '"cuda" if cuda_ops else "cpu", '
        '"%d%d" % sys.version_info[:2])')
    if info is None:
        raise StepFailed('step "mmcv" failed: torch does not import in the '
                         f'venv; run {venv_python()} -c "import torch"')
    torch_v, cuda_v, ops, py = info.split()
    torch_v = torch_v.replace('+', '_')
    key = f"mmcv-{p['mmcv']}_torch-{torch_v}_cu-{cuda_v}_{ops}ops_py{py}"
    return key, ops == 'cuda'


def compile_progress(line):
    m = re.match(r'\[(\d+)/(\d+)\]', line.strip())
    if m:
        done, total = int(m.group(1)), int(m.group(2))
        return f'compiling mmcv ops: {done}/{total} ({100 * done // total}%)'
    return None


def step_mmcv(p, force):
    key, cuda_ops = mmcv_build_key(p)
    installed = probe('import mmcv; from mmcv.ops import nms; '
                      'print(mmcv.__version__)')
    if installed == p['mmcv'] and not force:
        return
    cache_dir = CACHE / 'wheels' / key
    wheels = sorted(cache_dir.glob('mmcv-*.whl'))
    if wheels and not force:
        say(f'installing cached mmcv wheel {wheels[-1]}')
        pip('mmcv-install', '--no-deps', '--force-reinstall', wheels[-1])
        return
    jobs = os.environ.get('MAX_JOBS', str(os.cpu_count() or 2))
    say(f"compiling mmcv {p['mmcv']} with {'CUDA' if cuda_ops else 'CPU'} "
        f'ops against this torch, {jobs} jobs (about 10 minutes on 2 cores '
        'for CPU ops, much longer with CUDA ops); the wheel is cached as '
        f'{cache_dir}')
    env = dict(os.environ, MMCV_WITH_OPS='1', MAX_JOBS=jobs,
               FORCE_CUDA='1' if cuda_ops else '0')
    if not cuda_ops:
        env['CUDA_VISIBLE_DEVICES'] = ''
    with tempfile.TemporaryDirectory(prefix='mmcv-build-') as tmp:
        run('mmcv-build', [
            venv_python(), '-m', 'pip', 'wheel', '-v', '--no-deps',
            '--no-build-isolation', '--no-binary', 'mmcv', '-w', tmp,
            f"mmcv=={p['mmcv']}"
        ],
            env=env,
            progress=compile_progress)
        built = sorted(Path(tmp).glob('mmcv-*.whl'))
        if not built:
            raise StepFailed('step "mmcv-build" produced no wheel; see '
                             f'{LOG_DIR / "mmcv-build.log"}')
        # write under a temporary name, then rename: an interrupted copy never
        # looks like a valid cached wheel
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cache_dir / (built[0].name + '.partial')
        shutil.copy2(built[0], partial)
        partial.rename(cache_dir / built[0].name)
        wheel = cache_dir / built[0].name
    pip('mmcv-install', '--no-deps', '--force-reinstall', wheel)


def step_packages():
    say('installing OpenMMLab (mmengine, mmdet, mmsegmentation, mmpretrain), '
        'pycocotools, openmim, pytest and convnext_mm (editable)')
    pip('packages', '-r', REQUIREMENTS, '-c', REQUIREMENTS, '-e', ROOT)


CHECK = '''
import torch, torchvision, mmcv, mmengine, mmdet, mmseg, mmpretrain
from mmcv.ops import nms
import convnext_mm
print(f"torch {torch.__version__} "
      f"(CUDA available: {torch.cuda.is_available()}), "
      f"torchvision {torchvision.__version__}, mmcv {mmcv.__version__}, "
      f"mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, "
      f"mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}")
'''


def fingerprint():
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, ROOT / 'setup.py', Path(__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--force', action='store_true',
                        help='redo every step, rebuilding mmcv')
    args = parser.parse_args()
    if sys.version_info < (3, 9):
        sys.exit('[setup] Python >= 3.9 is needed to run the installer')
    if STAMP.exists() and STAMP.read_text() == fingerprint() and \
            not args.force and probe(CHECK) is not None:
        say(f'environment {VENV} is up to date')
        return
    start = time.time()
    p = pins()
    try:
        STAMP.unlink(missing_ok=True)
        step_venv()
        step_torch(p)
        step_mmcv(p, args.force)
        step_packages()
        versions = probe(CHECK)
        if versions is None:
            run('check', [venv_python(), '-c', CHECK])
    except StepFailed as err:
        sys.exit(f'[setup] ERROR: {err}')
    STAMP.write_text(fingerprint())
    say(versions)
    say(f'done in {time.time() - start:.0f} s; activate with '
        f'`source {VENV}/bin/activate`')


if __name__ == '__main__':
    main()
