"""The installer's own behaviour: pins, progress, failures that name the step
and the log, the mmcv build key (CPU or CUDA ops, arch list), the wheel
cache's safety, and which pins a kept torch's environment gets."""
import importlib.util
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))

from installer import mmcv_build, selection  # noqa: E402
from installer.common import Refused, Target  # noqa: E402


@pytest.fixture
def setup_env(tmp_path, monkeypatch):
    monkeypatch.setenv('CONVNEXT_MM_VENV', str(tmp_path / 'venv'))
    monkeypatch.setenv('CONVNEXT_MM_CACHE', str(tmp_path / 'cache'))
    spec = importlib.util.spec_from_file_location(
        'setup_env_under_test', ROOT / 'tools' / 'setup_env.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def target(tmp_path):
    return Target(tmp_path / 'venv', tmp_path / 'cache')


def test_pins_cover_the_stack(setup_env):
    pins = setup_env.pins()
    assert pins['mmcv'] == '2.1.0'
    assert pins['mmdet'] == '3.3.0' and pins['mmsegmentation'] == '1.2.2'
    assert int(pins['setuptools'].split('.')[0]) in range(77, 81)
    assert pins['torch'].startswith('2.') and pins['torchvision']


def test_failed_step_names_itself_and_its_log(setup_env, target, tmp_path):
    cmd = [sys.executable, '-c',
           'print("compiling nms.cpp"); raise SystemExit("boom: no compiler")']
    with pytest.raises(setup_env.StepFailed) as err:
        setup_env.run(target, 'mmcv-build', cmd)
    text = str(err.value)
    assert text.startswith('step "mmcv-build" failed (exit 1)')
    assert 'boom: no compiler' in text and 'compiling nms.cpp' in text
    log = tmp_path / 'venv' / 'logs' / 'mmcv-build.log'
    assert f'Full log: {log}' in text and 'boom' in log.read_text()


def test_compile_progress_parses_ninja():
    line = '[12/77] c++ -MMD -MF /tmp/build/nms.o.d ...'
    assert mmcv_build.compile_progress(line) == \
        'compiling mmcv ops: 12/77 (15%)'
    assert mmcv_build.compile_progress("running bdist_wheel") is None


def test_main_reports_a_failing_step_without_a_traceback(setup_env,
                                                         monkeypatch):
    def broken_torch(*args):
        raise setup_env.StepFailed('step "torch" failed (exit 1). Last '
                                   'lines:\nNo matching distribution')
    monkeypatch.setattr(setup_env, 'step_venv', lambda *args: None)
    monkeypatch.setattr(setup_env, 'step_torch', broken_torch)
    with pytest.raises(SystemExit) as exit_info:
        setup_env.main([])
    assert str(exit_info.value).startswith('[setup] ERROR: step "torch" '
                                           'failed')


@pytest.mark.parametrize('argv, says', [
    (['--python', '3.12'], '--python, --platform and --skip-installed '
     'describe the target of --wheelhouse DIR'),
    (['--no-venv'], '--no-venv installs into this Python\'s own packages'),
    (['--wheelhouse', 'x', '--skip-installed', 'no/such/freeze.txt'],
     '--skip-installed no/such/freeze.txt: no such file'),
])
def test_contradicting_options_are_refused_in_one_line(setup_env, argv, says):
    with pytest.raises(SystemExit) as exit_info:
        setup_env.main(argv)
    assert str(exit_info.value).startswith('error: ' + says)


def fake_torch(monkeypatch, cuda, caps, nvcc=None, arch_list=None):
    info = dict(torch='2.11.0+cu130', cuda=cuda, caps=caps, py='312')
    monkeypatch.setattr(mmcv_build, 'probe',
                        lambda python, code: json.dumps(info))
    monkeypatch.setattr(mmcv_build, 'find_nvcc',
                        lambda: '/opt/cuda/bin/nvcc' if nvcc else None)
    monkeypatch.setattr(mmcv_build, 'nvcc_version', lambda path: nvcc)
    if arch_list:
        monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', arch_list)
    else:
        monkeypatch.delenv('TORCH_CUDA_ARCH_LIST', raising=False)


def test_cuda_ops_for_the_visible_gpu_only(monkeypatch, target):
    fake_torch(monkeypatch, '13.0', ['9.0'], nvcc='13.0')
    build = mmcv_build.plan(target, '2.1.0')
    assert build.cuda_arch == '9.0'
    assert build.key == ('mmcv-2.1.0_torch-2.11.0_cu130_cu-13.0_'
                         'cudaops-sm90_py312')


def test_the_arch_list_is_in_the_key_and_builds_without_a_gpu(
        monkeypatch, target):
    # a login node without GPUs building for the compute nodes
    fake_torch(monkeypatch, '13.0', [], nvcc='13.0', arch_list='8.0;9.0+PTX')
    build = mmcv_build.plan(target, '2.1.0')
    assert build.cuda_arch == '8.0;9.0+PTX'
    assert 'cudaops-sm80-sm90ptx' in build.key


@pytest.mark.parametrize('cuda, caps, nvcc', [
    (None, [], None),  # a CPU-only torch
    ('13.0', [], '13.0'),  # no GPU and no arch list
    ('13.0', ['9.0'], None),  # a GPU but no nvcc: said, CPU ops
])
def test_cpu_ops_otherwise(monkeypatch, target, cuda, caps, nvcc):
    fake_torch(monkeypatch, cuda, caps, nvcc=nvcc)
    build = mmcv_build.plan(target, '2.1.0')
    assert build.cuda_arch is None and build.key.endswith('_cpuops_py312')
    assert ('no nvcc' in build.note) == bool(caps)


def test_an_nvcc_of_another_cuda_major_is_refused(monkeypatch, target):
    fake_torch(monkeypatch, '13.0', ['9.0'], nvcc='12.4')
    with pytest.raises(Refused, match='nvcc 12.4 .* does not match the '
                       'CUDA 13.0 this torch was built with'):
        mmcv_build.plan(target, '2.1.0')


def toolkit(root: Path, with_library_headers: bool) -> Path:
    (root / 'bin').mkdir(parents=True)
    (root / 'bin' / 'nvcc').write_text('#!/bin/sh\n')
    (root / 'include').mkdir()
    (root / 'include' / 'cuda_runtime.h').write_text('')
    if with_library_headers:
        (root / 'include' / 'cusparse.h').write_text('')
    return root


def test_a_cuda_13_build_finds_its_toolkit_and_library_headers(
        tmp_path, monkeypatch, target):
    # an nvcc wrapper script on PATH (as CUDA 13 containers and this machine
    # have), a toolkit with only the compiler and runtime, torch's nvidia-*
    # packages carrying cusparse.h and friends
    wrapper = tmp_path / 'wrapper' / 'bin'
    wrapper.mkdir(parents=True)
    (wrapper / 'nvcc').write_text('#!/bin/sh\nexec /opt/cuda/bin/nvcc "$@"\n')
    (wrapper / 'nvcc').chmod(0o755)
    home = toolkit(tmp_path / 'cuda-13.0', with_library_headers=False)
    monkeypatch.setenv('PATH', str(wrapper))
    monkeypatch.delenv('CUDA_HOME', raising=False)
    monkeypatch.delenv('CUDA_PATH', raising=False)
    monkeypatch.setattr(mmcv_build, 'DEFAULT_CUDA_HOME', str(home))
    headers = tmp_path / 'site' / 'nvidia' / 'cu13' / 'include'
    monkeypatch.setattr(mmcv_build, 'probe', lambda python, code: str(headers))
    env = {'CPATH': '/mine'}
    said = mmcv_build.cuda_build_env(target, env)
    assert env['CUDA_HOME'] == str(home)  # not /wrapper, which has no headers
    assert env['CPATH'] == f'{headers}:/mine'
    assert said[0] == f'CUDA_HOME={home}' and 'no cusparse.h' in said[1]
    # a full toolkit needs nothing added
    full = toolkit(tmp_path / 'cuda-full', with_library_headers=True)
    monkeypatch.setenv('CUDA_HOME', str(full))
    env = {}
    assert mmcv_build.cuda_build_env(target, env) == [f'CUDA_HOME={full}']
    assert 'CPATH' not in env


def make_wheel(path: Path, payload=b'ops') -> Path:
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('mmcv/_ext.so', payload)
    return path


def test_the_cache_takes_whole_wheels_and_rebuilds_a_damaged_one(tmp_path):
    built = make_wheel(tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')
    cache = tmp_path / 'cache' / 'key'
    mask = os.umask(0o022)
    try:
        stored = mmcv_build.store(built, cache)
    finally:
        os.umask(mask)
    assert stored.stat().st_mode & 0o777 == 0o644  # other users read it
    assert mmcv_build.verified(cache) == stored
    assert sorted(p.name for p in cache.iterdir()) == [
        stored.name, stored.name + '.sha256'
    ]
    # the same name, other bytes (a concurrent writer, a bad copy)
    make_wheel(stored, b'other ops')
    assert mmcv_build.verified(cache) is None
    assert list(cache.iterdir()) == []


def test_an_interrupted_copy_never_lands_in_the_cache(tmp_path, monkeypatch):
    built = make_wheel(tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')

    def dies_half_way(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:10])
        raise OSError('No space left on device')
    monkeypatch.setattr(shutil, 'copyfile', dies_half_way)
    cache = tmp_path / 'cache' / 'key'
    with pytest.raises(OSError):
        mmcv_build.store(built, cache)
    assert list(cache.iterdir()) == []


def test_a_wheel_cached_before_hashes_is_checked_and_recorded(tmp_path):
    cache = tmp_path / 'key'
    cache.mkdir()
    good = make_wheel(cache / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')
    assert mmcv_build.verified(cache) == good
    assert (cache / (good.name + '.sha256')).exists()
    (cache / (good.name + '.sha256')).unlink()
    good.write_bytes(good.read_bytes()[:-30])  # truncated
    assert mmcv_build.verified(cache) is None and not good.exists()


def test_a_kept_torch_keeps_its_numerics_and_gets_the_rest():
    pins = dict(torch='2.12.0', torchvision='0.27.0', numpy='1.26.4',
                scipy='1.14.1', mmdet='3.3.0', mmcv='2.1.0', timm='1.0.15',
                mmpretrain='1.2.0', pycocotools='2.0.8')
    have = {'torch': '2.11.0+cu130', 'torchvision': '0.26.0', 'numpy': '2.1.2',
            'opencv-python-headless': '4.11.0', 'pycocotools': '2.0.8'}
    pins['opencv-python'] = '4.10.0.84'
    chosen = selection.select(pins, True, have)
    assert chosen.kept == {
        'torch': '2.11.0+cu130', 'torchvision': '0.26.0', 'numpy': '2.1.2',
        'opencv-python': 'opencv-python-headless 4.11.0',
        'pycocotools': '2.0.8'
    }
    assert chosen.install == dict(scipy='1.14.1', mmdet='3.3.0',
                                  timm='1.0.15', mmpretrain='1.2.0')
    assert 'mmcv' in chosen.left_out
    # without --keep-torch our pins win over what is there
    plain = selection.select(pins, False, have)
    assert plain.install['numpy'] == '1.26.4'
    assert plain.install['torch'] == '2.12.0'


def test_a_pin_with_a_marker_keeps_it_for_pip(setup_env):
    """mmdeploy's pin carries its platform marker to pip, and an installed
    mmdeploy of that version counts as kept."""
    marker = setup_env.pins()['mmdeploy']
    assert marker.startswith('1.3.1;') and 'platform_machine' in marker
    chosen = selection.select({'mmdeploy': marker}, False,
                              {'mmdeploy': '1.3.1'})
    assert chosen.kept == {'mmdeploy': '1.3.1'} and not chosen.install
    chosen = selection.select({'mmdeploy': marker}, False, {})
    assert chosen.install == {'mmdeploy': marker}


def test_a_freeze_is_read_as_names_and_versions():
    text = ('# comment\ntorch==2.11.0+cu130\nNumPy==2.1.2\n'
            'mypkg @ file:///src/mypkg\n-e git+https://x/y.git#egg=y\n')
    assert selection.parse_freeze(text) == {
        'torch': '2.11.0+cu130', 'numpy': '2.1.2', 'mypkg': ''
    }


def test_a_compiled_wheel_goes_back_into_the_wheelhouse(tmp_path,
                                                         monkeypatch):
    from installer import wheelhouse
    house = tmp_path / 'wh'
    house.mkdir()
    make_wheel(house / 'mmdet-3.3.0-py3-none-any.whl')
    wheelhouse.write_manifest(house, dict(
        python='3.11', keep_torch=True, files=wheelhouse.describe(house)))
    built = make_wheel(tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')
    wheelhouse.add_build(house, 'mmcv-2.1.0_key_py311', built)
    manifest = wheelhouse.check(house, '3.11', keep_torch=True)
    assert wheelhouse.cached_build(house, manifest, 'mmcv-2.1.0_key_py311') \
        == house / 'mmcv-builds' / 'mmcv-2.1.0_key_py311' / built.name
    assert wheelhouse.cached_build(house, manifest, 'other_key') is None
    # a read-only wheelhouse (a shared mount) is left as it is, the set-up
    # goes on
    def read_only(*args):
        raise OSError(30, 'Read-only file system')
    monkeypatch.setattr(wheelhouse, 'store', read_only)
    wheelhouse.add_build(house, 'mmcv-2.1.0_key2_py311', built)
    assert json.loads((house / 'manifest.json').read_text()) == manifest


def test_no_venv_sets_up_this_python_itself(setup_env, monkeypatch,
                                            tmp_path):
    seen = {}
    monkeypatch.setattr(setup_env.own_torch, 'check', lambda python, pin: {
        'torch': '2.11.0', 'cuda': None, 'where': '/opt/torch',
        'torchvision': '0.26.0'})
    monkeypatch.setattr(setup_env.own_torch, 'make_venv',
                        lambda target: seen.setdefault('venv', target))
    for step in ('step_torch', 'step_mmcv', 'step_packages'):
        monkeypatch.setattr(setup_env, step,
                            lambda target, *a, step=step: seen.setdefault(
                                step, target))
    monkeypatch.setattr(setup_env, 'probe', lambda python, code: 'versions')
    setup_env.main(['--keep-torch', '--no-venv'])
    assert 'venv' not in seen  # no venv is made
    for step in ('step_torch', 'step_mmcv', 'step_packages'):
        assert seen[step].python == Path(sys.executable)
        assert seen[step].venv is None
    # logs and the up-to-date stamp live in the cache, not in a venv
    assert seen['step_torch'].logs == tmp_path / 'cache' / 'logs'
    assert (tmp_path / 'cache' / '.convnext_mm_setup').exists()
    assert not (tmp_path / 'venv').exists()


def test_a_manylinux_target_takes_every_older_manylinux_wheel():
    from installer.wheelhouse import platform_tags, target_args
    tags = platform_tags('manylinux_2_28_x86_64')
    assert tags[0] == 'manylinux_2_28_x86_64'
    # e.g. ninja ships manylinux2014 (glibc 2.17) wheels only
    for older in ('manylinux_2_17_x86_64', 'manylinux2014_x86_64',
                  'manylinux2010_x86_64', 'manylinux1_x86_64'):
        assert older in tags
    assert 'manylinux_2_29_x86_64' not in tags
    assert platform_tags('macosx_11_0_arm64') == ['macosx_11_0_arm64']
    args = target_args('3.12', 'manylinux_2_17_aarch64')
    assert args[:4] == ['--python-version', '3.12', '--implementation', 'cp']
    assert args[-1] == '--only-binary=:all:'
    assert args.count('--platform') == len(
        platform_tags('manylinux_2_17_aarch64'))
