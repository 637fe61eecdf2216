"""``--keep-torch``: set up on the torch the user's Python already has (a
cluster module, an NGC or vendor container) instead of installing ours."""
import json
import site
import sys
from pathlib import Path
from typing import Dict

from .common import Refused, StepFailed, Target, probe, run, say

# the oldest torch we support (the checkpoint reader no longer needs its
# weights-only allowlist, but nothing older has been run with this code)
OLDEST = (2, 4)

PROBE = r'''
import json
out = {}
try:
    import torch
    out['torch'] = torch.__version__
    out['cuda'] = torch.version.cuda
    out['where'] = torch.__file__.rsplit('/', 2)[0]
except Exception as err:
    out['torch_error'] = f'{type(err).__name__}: {err}'
else:
    try:
        import torchvision
        from torchvision.ops import nms
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
        out['torchvision'] = torchvision.__version__
    except Exception as err:
        out['torchvision_error'] = f'{type(err).__name__}: {err}'
print(json.dumps(out))
'''


def version_tuple(version: str):
    """``'2.11.0+cu130'`` -> ``(2, 11, 0)``; pre-releases count as their
    release."""
    parts = []
    for piece in version.split('+')[0].split('.')[:3]:
        digits = ''.join(c for c in piece if c.isdigit()) or '0'
        parts.append(int(digits))
    return tuple(parts + [0] * (3 - len(parts)))


def supported_range(torch_pin: str) -> str:
    newest = version_tuple(torch_pin)
    return f'{OLDEST[0]}.{OLDEST[1]} to {newest[0]}.{newest[1]}'


def check(python, torch_pin: str) -> Dict[str, str]:
    """The torch (and torchvision) ``python`` has, or :class:`Refused` when
    there is none or it is outside the supported range."""
    out = probe(python, PROBE)
    info = json.loads(out) if out else {'torch_error': 'the probe failed'}
    if 'torch_error' in info:
        raise Refused(
            f'--keep-torch: {python} cannot import torch '
            f'({info["torch_error"]}); run the installer with the Python '
            f'that has your torch, or drop --keep-torch to install torch '
            f'{torch_pin}')
    have = version_tuple(info['torch'])
    if not OLDEST <= have[:2] <= version_tuple(torch_pin)[:2]:
        raise Refused(
            f'--keep-torch: torch {info["torch"]} ({info["where"]}) is '
            f'outside the supported range {supported_range(torch_pin)}; use '
            f'a torch in that range, or drop --keep-torch to install torch '
            f'{torch_pin} in the venv')
    return info


def report(info: Dict[str, str]):
    say(f'keeping this Python\'s torch {info["torch"]} (CUDA '
        f'{info["cuda"] or "none"}) from {info["where"]}')
    if 'torchvision' in info:
        say(f'keeping its torchvision {info["torchvision"]}')
    else:
        say('torchvision is missing or does not load with this torch '
            f'({info["torchvision_error"]}): mmpretrain-based features '
            '(the classification configs configs/convnext_*_in1k.py, timm '
            'reference tests) are unavailable; detection and segmentation '
            'install and work')


def make_venv(target: Target):
    """A venv that sees this Python's packages: ``--system-site-packages``,
    and, when this Python is itself a venv (whose packages that flag does
    not reach), a ``.pth`` that adds its site-packages after the new
    venv's own."""
    if target.python.exists():
        return
    say(f'creating virtual environment {target.venv} on this Python\'s '
        'packages (--system-site-packages)')
    run(target, 'venv',
        [sys.executable, '-m', 'venv', '--system-site-packages', target.venv])
    if sys.prefix == sys.base_prefix:
        return
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    purelib = probe(target.python, 'import sysconfig; '
                    'print(sysconfig.get_paths()["purelib"])')
    if purelib is None:
        raise StepFailed(f'step "venv" failed: {target.python} does not run')
    # addsitedir also runs the parent's own .pth files (editable installs,
    # namespace packages), which a plain path line would not
    lines = [f'import site; site.addsitedir({p!r})' for p in parents]
    Path(purelib, '_convnext_mm_parent_env.pth').write_text('\n'.join(lines) +
                                                           '\n')
    say(f'this Python is a venv ({sys.prefix}): its site-packages are added '
        'to the new venv after its own')
