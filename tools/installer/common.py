"""What every set-up step shares: where things go, the pins, running a
logged command, asking the target Python a question."""
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / 'requirements.txt'


class StepFailed(RuntimeError):
    """A set-up step failed; the message names the step and the log."""


class Refused(RuntimeError):
    """Bad input found before any work: the message is the one line the
    user sees after ``error:``."""


def say(msg):
    print(f'[setup] {msg}', flush=True)


class Target:
    """The Python being set up: a venv's, or the running one (``--no-venv``).

    ``venv`` is None for ``--no-venv``; logs then go to the cache.
    """

    def __init__(self, venv: Optional[Path], cache: Path):
        self.venv = venv
        self.cache = cache
        self.python = (venv / 'bin' / 'python') if venv else Path(
            sys.executable)
        self.logs = (venv / 'logs') if venv else cache / 'logs'

    @classmethod
    def from_environ(cls, no_venv=False) -> 'Target':
        """``CONVNEXT_MM_VENV`` (default ``.venv`` in the checkout) and
        ``CONVNEXT_MM_CACHE`` (default ``~/.cache/convnext_mm``)."""
        venv = Path(os.environ.get('CONVNEXT_MM_VENV', ROOT / '.venv'))
        cache = Path(
            os.environ.get(
                'CONVNEXT_MM_CACHE',
                Path(os.environ.get('XDG_CACHE_HOME',
                                    Path.home() / '.cache')) / 'convnext_mm'))
        return cls(None if no_venv else venv, cache)


def pins(path: Path = REQUIREMENTS) -> Dict[str, str]:
    """Return ``{name: version}`` from requirements.txt (a version may end
    in an environment marker, ``1.3.1; platform_machine == "x86_64"``,
    which pip evaluates when it installs)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            name, _, version = line.partition('==')
            out[normalise(name)] = version.strip()
    return out


def normalise(name: str) -> str:
    """A project name as pip compares them (PEP 503)."""
    return re.sub(r'[-_.]+', '-', name).lower().strip()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def run(target: Target, step, cmd, env=None, progress=None):
    """Run ``cmd``, logging everything to ``<logs>/<step>.log``.

    ``progress``, when given, is called with each output line and returns a
    status string to show on one updating line, or None.
    """
    target.logs.mkdir(parents=True, exist_ok=True)
    log_path = target.logs / f'{step}.log'
    tty = sys.stdout.isatty()
    last_shown = ''
    last_time = 0.0
    with open(log_path, 'w') as log:
        log.write('$ ' + ' '.join(map(str, cmd)) + '\n')
        log.flush()
        proc = subprocess.Popen([str(c) for c in cmd],
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


def pip_progress(line):
    m = re.match(r'\s*(Collecting|Downloading|Installing collected|Saved) ?'
                 r'(\S*)', line)
    if m:
        return f'{m.group(1).lower()} {m.group(2)}'.strip()
    return None


def offline_env(wheelhouse: Path) -> dict:
    """An environment in which pip can reach nothing but ``wheelhouse``: no
    index, no configured extra indexes or find-links."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_')}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX='1',
               PIP_FIND_LINKS=str(wheelhouse),
               PIP_DISABLE_PIP_VERSION_CHECK='1')
    return env


def pip(target: Target, step, *args, env=None, progress=None,
        wheelhouse: Optional[Path] = None):
    """``pip install`` into the target; from ``wheelhouse`` alone if given."""
    if wheelhouse is not None:
        env = offline_env(wheelhouse) if env is None else env
        args = ('--no-index', '--find-links', wheelhouse) + args
    return run(target, step,
               [target.python, '-m', 'pip', 'install', '--progress-bar', 'off',
                *args],
               env=env,
               progress=progress or pip_progress)


def probe(python, code) -> Optional[str]:
    """Run ``code`` in ``python``; return its stdout or None."""
    res = subprocess.run([str(python), '-c', code],
                         capture_output=True,
                         text=True)
    return res.stdout.strip() if res.returncode == 0 else None
