"""Which of the pins a set-up installs, given what the target already has."""
from typing import Dict, NamedTuple

from .common import normalise

TORCH = ('torch', 'torchvision')
# built from its source archive against the target's torch (mmcv_build)
BUILT_HERE = ('mmcv', )
# needed in the target to build mmcv without build isolation
BUILD_TOOLS = ('setuptools', 'wheel', 'ninja')
# what a kept torch's environment usually brings, built against its numpy:
# used as found rather than replaced by our pins
KEPT_AS_FOUND = ('numpy', 'opencv-python', 'scipy', 'matplotlib')
OPENCV = ('opencv-python', 'opencv-python-headless', 'opencv-contrib-python',
          'opencv-contrib-python-headless')
# unusable without a torchvision that loads
NEED_TORCHVISION = ('mmpretrain', 'timm')


class Selection(NamedTuple):
    install: Dict[str, str]  # name -> pinned version
    kept: Dict[str, str]  # name -> the target's version (used as found)
    left_out: Dict[str, str]  # name -> why


def select(pins: Dict[str, str], keep_torch: bool, have: Dict[str, str],
           torchvision_ok: bool = True) -> Selection:
    """Split the pins (``{name: version}``) into what to install, what the
    target keeps (``have``: its installed ``{name: version}``), and what is
    left out."""
    have = {normalise(k): v for k, v in have.items()}
    install, kept, left_out = {}, {}, {}
    for name, version in pins.items():
        found = have.get(name)
        # a pin may carry an environment marker ("1.3.1; platform_machine
        # == ..."), which pip evaluates; the version is what precedes it
        version_only = version.split(';', 1)[0].strip()
        if name in BUILT_HERE:
            left_out[name] = 'built from source against the torch'
        elif keep_torch and name in TORCH:
            if name in have:
                kept[name] = have[name]
            else:
                left_out[name] = 'the kept torch has none'
        elif not torchvision_ok and name in NEED_TORCHVISION:
            left_out[name] = 'needs a torchvision that loads'
        elif found == version_only:
            kept[name] = found
        elif keep_torch and name in KEPT_AS_FOUND and (
                found or name == 'opencv-python'
                and any(v in have for v in OPENCV)):
            kept[name] = found or next(
                f'{v} {have[v]}' for v in OPENCV if v in have)
        else:
            install[name] = version
    return Selection(install, kept, left_out)


def parse_freeze(text: str) -> Dict[str, str]:
    """``pip freeze`` output -> ``{name: version}`` (``name @ url`` and
    editable lines give their name with version ``''``)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#') or line.startswith('-'):
            continue
        if '==' in line:
            name, _, version = line.partition('==')
        elif ' @ ' in line:
            name, version = line.split(' @ ', 1)[0], ''
        else:
            continue
        out[normalise(name)] = version.strip()
    return out
