"""Installing on cluster nodes: a wheelhouse made here (registry reachable),
then an offline set-up from it alone on a Python that already has its own
torch, with every network path closed; the refusals for an incomplete
wheelhouse and an unsupported torch.

The "node's Python" is a venv whose site-packages link (not copy) torch,
torchvision, the numerics and their dependencies from this interpreter, so
nothing of gigabytes is copied. The compiled mmcv wheel comes from the cache
the normal set-up filled (no compile here)."""
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / 'tools' / 'setup_env.py'
sys.path.insert(0, str(ROOT / 'tools'))

from installer.common import Target  # noqa: E402

# every way pip could reach a network: a closed local port
CLOSED = 'http://127.0.0.1:9'


def node_python(base: Path, names, fake_torch=None) -> Path:
    """A venv on the base interpreter of this one, whose site-packages
    links the distributions ``names`` and everything they require (extras
    included) from this interpreter; or holds a fake ``torch`` reporting
    ``fake_torch`` as its version. Returns its ``pip freeze``-style list."""
    subprocess.run([sys._base_executable, '-m', 'venv', '--without-pip',
                    str(base)], check=True)
    site = next(base.glob('lib/python*/site-packages'))
    if fake_torch:
        (site / 'torch').mkdir()
        (site / 'torch' / '__init__.py').write_text(
            f'__version__ = {fake_torch!r}\n'
            'class version:\n    cuda = None\n')
        return [f'torch=={fake_torch}']
    found, todo = {}, list(names)
    while todo:
        try:
            dist = metadata.distribution(todo.pop())
        except metadata.PackageNotFoundError:
            continue
        key = re.sub(r'[-_.]+', '-', dist.metadata['Name']).lower()
        if key in found:
            continue
        found[key] = dist
        todo += [re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', r).group(1)
                 for r in dist.requires or []]
    for dist in found.values():
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(dist.locate_file(top))
            if top not in ('..', '__pycache__') and source.exists() and \
                    not (site / top).exists():
                (site / top).symlink_to(source)
    return [f'{d.metadata["Name"]}=={d.version}' for d in found.values()]


def setup_env(python, *args, tmp, network=True):
    env = dict(os.environ, CONVNEXT_MM_VENV=str(tmp / 'venv'),
               CONVNEXT_MM_CACHE=str(tmp / 'cache'))
    if not network:
        env.update(PIP_INDEX_URL=CLOSED + '/simple', HTTP_PROXY=CLOSED,
                   HTTPS_PROXY=CLOSED, http_proxy=CLOSED, https_proxy=CLOSED)
    return subprocess.run([str(python), str(SETUP), *map(str, args)],
                          capture_output=True, text=True, env=env,
                          cwd=str(tmp))


@pytest.fixture(scope='module')
def node(tmp_path_factory):
    """The node's Python (own torch, torchvision, numerics) and its freeze."""
    root = tmp_path_factory.mktemp('node')
    freeze = node_python(root / 'python', [
        'torch', 'torchvision', 'numpy', 'scipy', 'opencv-python',
        'matplotlib'
    ])
    # as if the node had an older mmengine: ours replaces it
    freeze.append('mmengine==0.10.3')
    (root / 'freeze.txt').write_text('\n'.join(freeze) + '\n')
    return root / 'python' / 'bin' / 'python', root / 'freeze.txt'


@pytest.fixture(scope='module')
def house(node, tmp_path_factory):
    """A wheelhouse for the node, made here with the registry reachable;
    the compiled mmcv wheel comes from this machine's cache."""
    _, freeze = node
    work = tmp_path_factory.mktemp('house')
    cache = Target.from_environ().cache
    if not any((cache / 'wheels').glob('mmcv-*_cpuops_py*/mmcv-*.whl')):
        pytest.skip('no cached mmcv wheel: run tools/setup_env.py first')
    shutil.copytree(cache / 'wheels', work / 'cache' / 'wheels')
    res = setup_env(sys.executable, '--wheelhouse', work / 'wh',
                    '--keep-torch', '--skip-installed', freeze, tmp=work)
    assert res.returncode == 0, res.stdout + res.stderr
    return work / 'wh', res.stdout


@pytest.mark.long
def test_offline_install_on_the_nodes_own_torch(node, house, tmp_path):
    python, _ = node
    wheelhouse, made = house
    manifest = json.loads((wheelhouse / 'manifest.json').read_text())
    # what the node has stays out (torch too); the build tools always travel
    for name in ('numpy', 'scipy', 'opencv-python', 'matplotlib'):
        assert f'left to the target: {name}' in made
    names = ' '.join(manifest['files'])
    assert 'mmdet-3.3.0-' in names and 'setuptools-80.9.0-' in names
    assert 'mmengine-0.10.7-' in names
    assert not [n for n in manifest['files'] if Path(n).name.startswith(
        ('torch-', 'torchvision-', 'numpy-', 'scipy-', 'nvidia'))]
    assert 'mmcv-2.1.0.tar.gz' in manifest['files']
    assert any(n.startswith('mmcv-builds/') for n in manifest['files'])

    res = setup_env(python, '--offline', wheelhouse, '--keep-torch',
                    tmp=tmp_path, network=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "keeping this Python's torch" in out
    assert "installing the wheelhouse's compiled mmcv" in out
    assert 'compiling mmcv' not in out
    venv_python = tmp_path / 'venv' / 'bin' / 'python'
    check = subprocess.run(
        [str(venv_python), '-c',
         'import torch, mmcv, mmdet, mmseg, mmpretrain, convnext_mm; '
         'from mmcv.ops import nms; print(torch.__file__); '
         'print(mmdet.__file__)'],
        capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    torch_file, mmdet_file = check.stdout.split()
    # the node's torch (linked, not copied); our packages in the new venv
    assert torch_file.startswith(str(python.parent.parent))
    assert mmdet_file.startswith(str(tmp_path / 'venv'))
    logs = (tmp_path / 'venv' / 'logs' / 'packages.log').read_text()
    assert '--no-index' in logs and str(wheelhouse) in logs


@pytest.mark.long
def test_a_wheelhouse_missing_a_file_is_refused_naming_it(house, tmp_path):
    wheelhouse, _ = house
    copy = tmp_path / 'wh'
    shutil.copytree(wheelhouse, copy, copy_function=os.link)
    victim = next(copy.glob('mmdet-*.whl'))
    victim.unlink()
    res = setup_env(sys.executable, '--offline', copy, '--keep-torch',
                    tmp=tmp_path, network=False)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f'error: wheelhouse {copy} is incomplete: missing {victim.name}; '
        'copy it again from where it was made, or re-make it with '
        '--wheelhouse'
    ]
    assert not (tmp_path / 'venv').exists()


@pytest.mark.long
def test_an_existing_wheelhouse_is_not_overwritten(house, tmp_path):
    wheelhouse, _ = house
    before = (wheelhouse / 'manifest.json').read_bytes()
    res = setup_env(sys.executable, '--wheelhouse', wheelhouse, tmp=tmp_path)
    assert res.returncode == 1
    assert res.stderr.startswith(f'error: {wheelhouse} already holds a '
                                 'wheelhouse')
    assert (wheelhouse / 'manifest.json').read_bytes() == before


def test_an_unsupported_torch_is_refused_before_any_work(tmp_path):
    node_python(tmp_path / 'old', [], fake_torch='2.3.1')
    res = setup_env(tmp_path / 'old' / 'bin' / 'python', '--keep-torch',
                    tmp=tmp_path)
    assert res.returncode == 1
    line, = res.stderr.strip().splitlines()
    assert line.startswith('error: --keep-torch: torch 2.3.1 (')
    assert 'outside the supported range 2.4 to 2.12' in line
    assert not (tmp_path / 'venv').exists()


def test_a_torch_without_torchvision_installs_without_mmpretrain(tmp_path):
    from installer import own_torch, selection
    from installer.common import pins
    node_python(tmp_path / 'bare', ['torch'])
    info = own_torch.check(tmp_path / 'bare' / 'bin' / 'python',
                           pins()['torch'])
    assert 'torchvision' not in info and 'torchvision_error' in info
    chosen = selection.select(pins(), True, {'torch': info['torch']},
                              torchvision_ok=False)
    assert 'mmpretrain' in chosen.left_out and 'timm' in chosen.left_out
    assert 'mmdet' in chosen.install and 'torch' in chosen.kept


# --- what a wheelhouse must hold (no index needed) --------------------------

def _wheel(folder: Path, name: str, version: str, requires=()):
    """A minimal wheel of ``name`` that requires ``requires``."""
    import zipfile
    folder.mkdir(parents=True, exist_ok=True)
    info = f'{name}-{version}.dist-info'
    meta = f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n'
    meta += ''.join(f'Requires-Dist: {r}\n' for r in requires)
    extras = {r.split("extra == '")[1].split("'")[0] for r in requires
              if "extra == '" in r}
    meta += ''.join(f'Provides-Extra: {e}\n' for e in sorted(extras))
    with zipfile.ZipFile(folder / f'{name}-{version}-py3-none-any.whl',
                         'w') as zf:
        zf.writestr(f'{info}/METADATA', meta)
        zf.writestr(f'{info}/WHEEL', 'Wheel-Version: 1.0\nGenerator: test\n'
                    'Root-Is-Purelib: true\nTag: py3-none-any\n')
        zf.writestr(f'{info}/RECORD', '')


def _report(*items, environment=None):
    return dict(environment=environment or dict(sys_platform='linux',
                                                platform_system='Linux'),
                install=[dict(metadata=dict(name=n, version=v,
                                            requires_dist=list(r)))
                         for n, v, r in items])


def test_closure_follows_extras_as_pip_resolved_them():
    from installer.wheelhouse import closure
    report = _report(
        ('torch', '2.12.0', ['cuda-toolkit[cudart,nvrtc]==13.0.2; '
                             'platform_system == "Linux"', 'filelock']),
        ('cuda-toolkit', '13.0.2', [
            "nvidia-cuda-runtime==13.0.96.*; (sys_platform == 'linux' or "
            "sys_platform == 'win32') and extra == 'cudart'",
            "nvidia-cuda-nvrtc==13.0.88.*; extra == 'nvrtc'",
            "nvidia-cufft==12.0.0.*; extra == 'cufft'"]),
        ('nvidia-cuda-runtime', '13.0.96', []),
        ('nvidia-cuda-nvrtc', '13.0.88', []),
        ('nvidia-cufft', '12.0.0', []),  # resolved for someone else
        ('filelock', '3.20.0', []),
        ('mmdet', '3.3.0', ['pywin32; sys_platform == "win32"']),
        ('pywin32', '311', []))
    wanted = closure(report, ['torch', 'mmdet'], [])
    assert set(wanted) == {'torch', 'cuda-toolkit', 'nvidia-cuda-runtime',
                           'nvidia-cuda-nvrtc', 'filelock', 'mmdet'}
    # what the target keeps is not entered (--keep-torch)
    assert set(closure(report, ['torch', 'mmdet'], ['torch'])) == {'mmdet'}


@pytest.mark.long
def test_closure_of_our_torch_is_what_pip_resolves(tmp_path):
    """The full flow's torch, resolved by pip against the registry (no
    download): every project pip would install is in the wheelhouse's
    list, the CUDA runtime wheels reached through cuda-toolkit's extras
    among them (they were lost once)."""
    from installer.common import pins
    from installer.wheelhouse import closure
    torch_pin = pins()['torch']
    report = tmp_path / 'report.json'
    res = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run',
         '--ignore-installed', '--quiet', '--only-binary=:all:', '--report',
         str(report), '--target', str(tmp_path / 't'),
         f'torch=={torch_pin}'], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f'the registry cannot resolve torch here: '
                    f'{res.stderr[-300:]}')
    report = json.loads(report.read_text())
    resolved = {re.sub(r'[-_.]+', '-', i['metadata']['name']).lower()
                for i in report['install']}
    wanted = closure(report, ['torch'], [])
    assert resolved - set(wanted) == set()
    assert 'nvidia-cuda-runtime' in wanted


def test_the_offline_check_names_what_a_wheelhouse_lacks(tmp_path):
    from installer.common import Refused
    from installer.wheelhouse import verify_offline
    house = tmp_path / 'wh'
    _wheel(house, 'top', '1.0', ['mid[x]==1.0', 'torch==2.12.0'])
    _wheel(house, 'mid', '1.0', ["leaf==1.0; extra == 'x'"])
    kept = {'torch': '2.12.0+cu130'}
    with pytest.raises(Refused, match=r'lacks leaf==1.0'):
        verify_offline(house, ['top==1.0'], kept, [])
    _wheel(house, 'leaf', '1.0')
    verify_offline(house, ['top==1.0'], kept, [])
    # without the target's torch standing in, torch is what it lacks
    with pytest.raises(Refused, match=r'lacks torch==2.12.0'):
        verify_offline(house, ['top==1.0'], {}, [])
