#!/usr/bin/env python3
"""Set up convnext_mm's environment, idempotently, connected or offline.

Run with any Python >= 3.9::

    python3 tools/setup_env.py            # .venv in the checkout, our torch
    python3 tools/setup_env.py --force    # redo every step, rebuild mmcv
    python tools/setup_env.py --keep-torch [--no-venv]
                                          # on this Python's own torch
    python3 tools/setup_env.py --wheelhouse DIR [--python 3.X]
          [--platform TAG] [--keep-torch] [--skip-installed FREEZE]
                                          # collect every file, for later
    python3 tools/setup_env.py --offline DIR [--keep-torch]
                                          # set up from DIR alone

Steps: create the venv (``--system-site-packages`` with ``--keep-torch``);
install the pinned torch/torchvision (not with ``--keep-torch``); compile
mmcv 2.1.0 with its ops against that torch (CUDA ops for the visible GPUs or
``TORCH_CUDA_ARCH_LIST`` when torch has CUDA and nvcc is there, CPU ops
otherwise), reusing a wheel cached outside the checkout (or in the
wheelhouse) under a key of mmcv, torch, CUDA, arch list and Python; install
the rest of ``requirements.txt`` and this package in editable mode; check
the result.

Environment: ``CONVNEXT_MM_CACHE`` moves the wheel cache (default
``~/.cache/convnext_mm``); ``CONVNEXT_MM_VENV`` moves the venv; ``MAX_JOBS``
caps compile jobs (default: the core count); ``TORCH_CUDA_ARCH_LIST`` picks
the GPU architectures.
"""
import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from installer import mmcv_build, own_torch, wheelhouse  # noqa: E402
from installer.common import (ROOT, REQUIREMENTS, Refused,  # noqa: E402
                              StepFailed, Target, pins, pip, probe, run, say)
from installer.selection import select  # noqa: E402

# the first distribution of a name on sys.path is the one that imports
HAVE = ('import json, importlib.metadata as m; have = {}\n'
        'for d in m.distributions():\n'
        '    have.setdefault(d.metadata["Name"], d.version)\n'
        'print(json.dumps({k: v for k, v in have.items() if k}))')

CHECK = '''
import importlib.util
import torch, mmcv, mmengine, mmdet, mmseg, onnxruntime
from mmcv.ops import nms
import convnext_mm
line = (f"torch {torch.__version__} (CUDA available: "
        f"{torch.cuda.is_available()}), mmcv {mmcv.__version__}, "
        f"mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, "
        f"mmseg {mmseg.__version__}, onnxruntime {onnxruntime.__version__}")
# pip installs it where requirements.txt's marker holds (its wheels)
if importlib.util.find_spec("mmdeploy") is not None:
    import mmdeploy
    line += f", mmdeploy {mmdeploy.__version__}"
if WITH_TORCHVISION:
    import torchvision, mmpretrain
    line += (f", torchvision {torchvision.__version__}, "
             f"mmpretrain {mmpretrain.__version__}")
print(line)
'''


def check_code(with_torchvision=True):
    return CHECK.replace('WITH_TORCHVISION', str(with_torchvision))


def step_venv(target: Target, keep_torch: bool):
    if target.venv is None:
        return
    if keep_torch:
        own_torch.make_venv(target)
    elif not target.python.exists():
        say(f'creating virtual environment {target.venv}')
        run(target, 'venv', [sys.executable, '-m', 'venv', target.venv])


def step_torch(target: Target, p, keep_torch: bool, house):
    tools = [f"setuptools=={p['setuptools']}", f"wheel=={p['wheel']}",
             f"ninja=={p['ninja']}"]
    if keep_torch:
        # mmcv's build needs these in the target, without build isolation
        have = json.loads(probe(target.python, HAVE) or '{}')
        missing = [t for t in tools
                   if have.get(t.split('==')[0]) != t.split('==')[1]]
        if missing:
            pip(target, 'build-tools', *missing, wheelhouse=house)
        return
    want = f"{p['torch']} {p['torchvision']}"
    have = probe(target.python,
                 'import torch, torchvision; '
                 'print(torch.__version__.split("+")[0], '
                 'torchvision.__version__.split("+")[0])')
    if have == want:
        return
    say(f"installing torch {p['torch']} and torchvision {p['torchvision']} "
        '(several GB with the CUDA runtime libraries; about a minute)')
    pip(target, 'torch', f"torch=={p['torch']}",
        f"torchvision=={p['torchvision']}", *tools, f"numpy=={p['numpy']}",
        wheelhouse=house)


def step_mmcv(target: Target, p, force: bool, house, manifest):
    build = mmcv_build.plan(target, p['mmcv'])
    if build.note:  # a GPU that mmcv's ops will not run on
        say(build.note)
    installed = probe(target.python, 'import mmcv; from mmcv.ops import nms; '
                      'print(mmcv.__version__)')
    if installed == p['mmcv'] and not force:
        return
    cache_dir = target.cache / 'wheels' / build.key
    wheel = None
    if manifest and not force:
        wheel = wheelhouse.cached_build(house, manifest, build.key)
        if wheel:
            say(f'installing the wheelhouse\'s compiled mmcv {wheel}')
    if wheel is None and not force:
        wheel = mmcv_build.verified(cache_dir) if cache_dir.is_dir() else None
        if wheel:
            say(f'installing cached mmcv wheel {wheel}')
            if house:
                wheelhouse.add_build(house, build.key, wheel)
    if wheel is None:
        with tempfile.TemporaryDirectory(prefix='mmcv-build-') as tmp:
            built = mmcv_build.build(target, build, p['mmcv'],
                                     p['setuptools'], house,
                                     Path(tmp))
            # a partial build never lands in the cache: copied, then renamed
            wheel = mmcv_build.store(built, cache_dir)
        say(f'mmcv wheel cached as {wheel}')
        if house:
            wheelhouse.add_build(house, build.key, wheel)
    pip(target, 'mmcv-install', '--no-deps', '--force-reinstall', wheel,
        wheelhouse=house)


def step_packages(target: Target, p, keep_torch: bool, torchvision_ok: bool,
                  house):
    have = json.loads(probe(target.python, HAVE) or '{}')
    chosen = select(p, keep_torch, have, torchvision_ok)
    for name, version in sorted(chosen.kept.items()):
        if keep_torch and version != p.get(name):
            say(f'using the environment\'s {name} {version} (our pin: '
                f'{p[name]})')
    for name, why in sorted(chosen.left_out.items()):
        if name != 'mmcv':
            say(f'leaving out {name}: {why}')
    pinned = dict(chosen.install, mmcv=p['mmcv'])
    pinned.update({n: v for n, v in chosen.kept.items() if p.get(n) == v})
    target.logs.mkdir(parents=True, exist_ok=True)
    reqs = target.logs / 'requirements-selected.txt'
    reqs.write_text(''.join(f'{n}=={v}\n' for n, v in chosen.install.items()))
    constraints = target.logs / 'constraints.txt'
    constraints.write_text(''.join(f'{n}=={v}\n' for n, v in pinned.items()))
    say('installing OpenMMLab (mmengine, mmdet, mmsegmentation, mmpretrain), '
        'pycocotools, openmim, pytest and convnext_mm (editable)')
    pip(target, 'packages', '-r', reqs, '-c', constraints,
        '--no-build-isolation', '-e', ROOT, wheelhouse=house)


def fingerprint(mode: str):
    digest = hashlib.sha256(mode.encode())
    for path in (REQUIREMENTS, ROOT / 'setup.py', Path(__file__),
                 *sorted(Path(__file__).parent.glob('installer/*.py'))):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--force', action='store_true',
                        help='redo every step, rebuilding mmcv')
    parser.add_argument('--keep-torch', action='store_true',
                        help='use the torch (and torchvision) this Python '
                        'has: a --system-site-packages venv')
    parser.add_argument('--no-venv', action='store_true',
                        help='with --keep-torch: install into this Python '
                        'itself, no venv')
    where = parser.add_mutually_exclusive_group()
    where.add_argument('--wheelhouse', type=Path, metavar='DIR',
                       help='collect every file the set-up needs into DIR '
                       '(connected machine), with a manifest')
    where.add_argument('--offline', type=Path, metavar='DIR',
                       help='set up from the wheelhouse DIR alone, never '
                       'touching the network')
    parser.add_argument('--python', metavar='3.X',
                        help='with --wheelhouse: the target Python')
    parser.add_argument('--platform', metavar='TAG',
                        help='with --wheelhouse: the target platform tag, '
                        'e.g. manylinux_2_28_x86_64')
    parser.add_argument('--skip-installed', type=Path, metavar='FREEZE',
                        help='with --wheelhouse: `pip freeze` of the target; '
                        'what it has is left out')
    args = parser.parse_args(argv)
    if not args.wheelhouse and (args.python or args.platform
                                or args.skip_installed):
        raise Refused('--python, --platform and --skip-installed describe '
                      'the target of --wheelhouse DIR; add --wheelhouse')
    if args.no_venv and not args.keep_torch:
        raise Refused('--no-venv installs into this Python\'s own packages '
                      'and is for --keep-torch; add --keep-torch, or drop '
                      '--no-venv for a venv with our torch')
    if args.python and not all(x.isdigit() for x in args.python.split('.')):
        raise Refused(f'--python {args.python}: give a version like 3.12')
    if args.skip_installed and not args.skip_installed.is_file():
        raise Refused(f'--skip-installed {args.skip_installed}: no such file; '
                      'make it on the target with python -m pip freeze > '
                      'FILE')
    return args


def main(argv=None):
    if sys.version_info < (3, 9):
        sys.exit('error: Python >= 3.9 is needed to run the installer')
    try:
        args = parse_args(argv)
        target = Target.from_environ(no_venv=args.no_venv)
        p = pins()
        if args.wheelhouse:
            start = time.time()
            wheelhouse.collect(args.wheelhouse.resolve(), target, args.python,
                               args.platform, args.keep_torch,
                               args.skip_installed)
            say(f'done in {time.time() - start:.0f} s')
            return
        house = args.offline.resolve() if args.offline else None
        manifest = wheelhouse.check(house, wheelhouse.this_python(),
                                    args.keep_torch) if house else None
        info = own_torch.check(sys.executable, p['torch']) \
            if args.keep_torch else {}
        torchvision_ok = not args.keep_torch or 'torchvision' in info
        check = check_code(torchvision_ok)
        mode = f'keep_torch={args.keep_torch} no_venv={args.no_venv}'
        stamp = (target.venv or target.cache) / '.convnext_mm_setup'
        if stamp.exists() and stamp.read_text() == fingerprint(mode) and \
                not args.force and probe(target.python, check) is not None:
            say(f'environment {target.venv or target.python} is up to date')
            return
        start = time.time()
        if args.keep_torch:
            own_torch.report(info)
        stamp.unlink(missing_ok=True)
        step_venv(target, args.keep_torch)
        step_torch(target, p, args.keep_torch, house)
        step_mmcv(target, p, args.force, house, manifest)
        step_packages(target, p, args.keep_torch, torchvision_ok, house)
        versions = probe(target.python, check)
        if versions is None:
            run(target, 'check', [target.python, '-c', check])
    except Refused as err:
        sys.exit(f'error: {err}')
    except StepFailed as err:
        sys.exit(f'[setup] ERROR: {err}')
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint(mode))
    say(versions)
    say(f'done in {time.time() - start:.0f} s' +
        (f'; activate with `source {target.venv}/bin/activate`'
         if target.venv else ''))


if __name__ == '__main__':
    main()
