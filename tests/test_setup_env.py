"""The installer's own behaviour: pins, progress, and failures that name the
step and the log."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup_env(tmp_path, monkeypatch):
    monkeypatch.setenv('CONVNEXT_MM_VENV', str(tmp_path / 'venv'))
    monkeypatch.setenv('CONVNEXT_MM_CACHE', str(tmp_path / 'cache'))
    spec = importlib.util.spec_from_file_location(
        'setup_env_under_test', ROOT / 'tools' / 'setup_env.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pins_cover_the_stack(setup_env):
    pins = setup_env.pins()
    assert pins['mmcv'] == '2.1.0'
    assert pins['mmdet'] == '3.3.0' and pins['mmsegmentation'] == '1.2.2'
    assert int(pins['setuptools'].split('.')[0]) in range(77, 81)
    assert pins['torch'].startswith('2.') and pins['torchvision']


def test_failed_step_names_itself_and_its_log(setup_env, tmp_path):
    cmd = [sys.executable, '-c',
           'print("compiling nms.cpp"); raise SystemExit("boom: no compiler")']
    with pytest.raises(setup_env.StepFailed) as err:
        setup_env.run('mmcv-build', cmd)
    text = str(err.value)
    assert text.startswith('step "mmcv-build" failed (exit 1)')
    assert 'boom: no compiler' in text and 'compiling nms.cpp' in text
    log = tmp_path / 'venv' / 'logs' / 'mmcv-build.log'
    assert f'Full log: {log}' in text and 'boom' in log.read_text()


def test_compile_progress_parses_ninja(setup_env):
    line = '[12/77] c++ -MMD -MF /tmp/build/nms.o.d ...'
    assert setup_env.compile_progress(line) == \
        'compiling mmcv ops: 12/77 (15%)'
    assert setup_env.compile_progress('running bdist_wheel') is None


def test_main_reports_a_failing_step_without_a_traceback(setup_env,
                                                         monkeypatch,
                                                         capsys):
    def broken_torch(pins):
        raise setup_env.StepFailed('step "torch" failed (exit 1). Last '
                                   'lines:\nNo matching distribution')
    monkeypatch.setattr(setup_env, 'step_venv', lambda: None)
    monkeypatch.setattr(setup_env, 'step_torch', broken_torch)
    monkeypatch.setattr(sys, 'argv', ['setup_env.py'])
    with pytest.raises(SystemExit) as exit_info:
        setup_env.main()
    assert str(exit_info.value).startswith('[setup] ERROR: step "torch" '
                                           'failed')
