"""Load checkpoints as untrusted input: torch's weights-only unpickler, plus
exactly what mmengine's own training checkpoints hold.

torch >= 2.6 loads with ``weights_only=True`` by default, and that refuses the
checkpoints mmengine writes: their ``message_hub`` holds ``HistoryBuffer``
objects with numpy arrays and ``meta`` holds numpy scalars. Rather than turn
the check off (a checkpoint could then run code, write files or rewrite
classes for the rest of the process), :func:`safe_torch_load` runs torch's own
weights-only unpickler with a handful of extra entries, each of which builds
a value and nothing else:

- numpy arrays and scalars of numeric, bool and string dtypes (no object or
  structured dtypes, which could carry other objects);
- ``HistoryBuffer`` through a stand-in that validates its state (numeric
  histories, the four built-in statistics mapped to themselves) and never
  touches the class's shared statistics table;
- ``getattr`` for exactly ``HistoryBuffer.min/max/mean/current``, which
  mmengine pickles as look-ups.

Before unpickling, :mod:`.pickle_scan` bounds the work a file can cost
(decompression bombs, colliding dict keys, giant pickles). Legacy (non-zip)
files go through the same weights-only path; torch's old ``.tar`` format is
refused. :func:`install` routes mmengine's local and http(s) checkpoint
loading through :mod:`.files` (which sends torch files here and reads
safetensors without pickle), so ``load_from``, ``--resume``, ``init_cfg`` and
the tools all load safely.
"""
import contextlib
import os
import os.path as osp
import pickle
import re
import threading

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from .pickle_scan import MalformedPickleError, check_cost

_STATISTICS = ('min', 'max', 'mean', 'current')
_HISTORY_STATE = {'max_length', '_log_history', '_count_history',
                  'statistics_methods'}
_NUMERIC_KINDS = 'biuf'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked to build something outside the allow-list."""


class _SafeHistoryBuffer(HistoryBuffer):
    """Unpickles as a plain ``HistoryBuffer`` after checking its state.

    mmengine's own ``__setstate__`` merges the file's statistics methods into
    the class-wide table, so one file could change what every buffer in the
    process logs; this one accepts only the built-ins, mapped to themselves.
    """

    def __setstate__(self, state):
        if not isinstance(state, dict) or not set(state) <= _HISTORY_STATE:
            found = sorted(map(str, state)) if isinstance(state, dict) \
                else type(state).__name__
            raise UnsafeCheckpointError(
                'refusing to load a HistoryBuffer whose state is not '
                f"mmengine's ({found})")
        methods = state.get('statistics_methods', {})
        if not isinstance(methods, dict) or any(
                name not in _STATISTICS
                or method is not getattr(HistoryBuffer, name)
                for name, method in methods.items()):
            raise UnsafeCheckpointError(
                'refusing to load a HistoryBuffer that redefines its '
                f'statistics methods ({methods!r}): it would change what '
                'every HistoryBuffer in this process reports')
        for key in ('_log_history', '_count_history'):
            value = state.get(key)
            if value is not None and not (
                    isinstance(value, np.ndarray)
                    and value.dtype.kind in _NUMERIC_KINDS):
                raise UnsafeCheckpointError(
                    f'refusing to load a HistoryBuffer whose {key} is not a '
                    f'numeric array ({type(value).__name__})')
        length = state.get('max_length', 1)
        if type(length) is not int or length < 1:
            raise UnsafeCheckpointError(
                'refusing to load a HistoryBuffer with max_length '
                f'{length!r}')
        self.__class__ = HistoryBuffer
        self.__dict__.update(
            (k, v) for k, v in state.items() if k != 'statistics_methods')
        self._set_default_statistics()


def _guarded_getattr(owner, name):
    if owner in (HistoryBuffer, _SafeHistoryBuffer) and name in _STATISTICS:
        return getattr(HistoryBuffer, name)
    raise UnsafeCheckpointError(
        f'refusing to load getattr({getattr(owner, "__qualname__", owner)!r}'
        f', {name!r}): only HistoryBuffer statistics look-ups are allowed')


def _numpy_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject or dtype.kind == 'V':
        raise UnsafeCheckpointError(
            f'refusing to load a numpy array of dtype {dtype}: object and '
            'structured arrays can carry arbitrary objects')
    return dtype


def _extra_globals():
    """(object, 'module.name') pairs admitted beyond torch's own list."""
    from numpy.core import multiarray
    pairs = [(_SafeHistoryBuffer,
              'mmengine.logging.history_buffer.HistoryBuffer'),
             (_guarded_getattr, 'builtins.getattr'),
             (_guarded_getattr, '__builtin__.getattr'),
             (np.ndarray, 'numpy.ndarray'), (_numpy_dtype, 'numpy.dtype')]
    # numpy 1.x and 2.x spell the array/scalar reconstructors differently
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        pairs += [(multiarray._reconstruct, f'{module}._reconstruct'),
                  (multiarray.scalar, f'{module}.scalar')]
    # dtypes pickle as numpy.dtypes.<Name>DType instances on numpy >= 1.25
    for name in dir(getattr(np, 'dtypes', None)):
        cls = getattr(np.dtypes, name)
        if name.endswith('DType') and isinstance(cls, type) and \
                name not in ('ObjectDType', 'VoidDType'):
            pairs.append((cls, f'numpy.dtypes.{name}'))
    return pairs


_EXTRA = None
_LOCK = threading.Lock()
_TORCH_DETAIL = re.compile(r'WeightsUnpickler error:\s*(.*)', re.S)
_GLOBAL = re.compile(
    r'GLOBAL (\S+) (?:was not an allowed global|whose module)')
_RESAVE = ('If you trust the file, re-save it once: python -c "import torch; '
           'torch.save(torch.load(\'OLD\', weights_only=False), \'NEW\')" '
           'and load NEW')


@contextlib.contextmanager
def _allowing(extra):
    """``torch.serialization.safe_globals(extra)`` (torch >= 2.5); on torch
    2.4, which has only the process-wide allowlist, the same by adding to it
    and restoring it afterwards (callers hold ``_LOCK``)."""
    scoped = getattr(torch.serialization, 'safe_globals', None)
    if scoped is not None:
        with scoped(extra):
            yield
        return
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(extra)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def _refusal(err: Exception, where: str) -> UnsafeCheckpointError:
    """One line from torch's several-paragraph weights-only message (torch
    re-raises our own refusals inside it, keeping them as the context)."""
    for ours in (err, err.__context__):
        if isinstance(ours, UnsafeCheckpointError):
            return UnsafeCheckpointError(f'{where}: {ours}')
    text = str(err).split('\n\nCheck the documentation')[0]
    found = _TORCH_DETAIL.search(text)
    detail = (found.group(1) if found else text.split('\n\n')[-1]).strip()
    name = _GLOBAL.search(detail)
    if name:
        detail = (f'refusing to load {name.group(1)}: the checkpoint '
                  'contains an object that is neither tensors, plain Python '
                  'containers, numpy arrays nor mmengine training state, and '
                  'building it could run arbitrary code')
    else:
        detail = f'refusing to load it: {detail.splitlines()[0].rstrip(".")}'
    return UnsafeCheckpointError(f'{where}: {detail}. {_RESAVE}')


def safe_torch_load(file, map_location=None):
    """``torch.load`` that admits tensors and mmengine training state only.

    Args:
        file: A path or a seekable binary file.
        map_location: As for ``torch.load``.

    Raises:
        FileNotFoundError: ``file`` is a path that does not exist.
        UnsafeCheckpointError: the file asks to build a disallowed object,
            or is in torch's legacy ``.tar`` format.
        ValueError: the file is not a torch checkpoint at all, or loading it
            would cost unbounded time or memory.
    """
    global _EXTRA
    where = 'the checkpoint'
    if isinstance(file, (str, os.PathLike)):
        file = where = osp.expanduser(os.fspath(file))
        if osp.isdir(file):
            raise IsADirectoryError(
                f'checkpoint {file} is a directory; give the checkpoint '
                'file inside it (e.g. a .pth file)')
        if not osp.isfile(file):
            raise FileNotFoundError(f'checkpoint {file} does not exist')
    try:
        check_cost(file, where)
    except MalformedPickleError as err:
        raise ValueError(
            f'{where} is not a PyTorch checkpoint that torch.load can read '
            f'({str(err).split(": ", 1)[-1]})') from None
    with _LOCK:
        if _EXTRA is None:
            _EXTRA = _extra_globals()
        try:
            with _allowing(_EXTRA):
                return torch.load(
                    file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise _refusal(err, where) from None
        except RuntimeError as err:
            if 'legacy .tar format' in str(err):
                raise UnsafeCheckpointError(
                    f'{where} is in torch\'s legacy .tar format, which can '
                    'only be loaded by running its pickles unchecked. '
                    f'{_RESAVE}') from None
            raise ValueError(f'{where} is not a PyTorch checkpoint that '
                             f'torch.load can read ({err})') from None
        except Exception as err:  # noqa: BLE001  whatever bad bytes raise
            if isinstance(err, (FileNotFoundError, MemoryError)):
                raise
            raise ValueError(
                f'{where} is not a PyTorch checkpoint that torch.load can '
                f'read ({type(err).__name__}: {err})') from None


def _load_from_local(filename, map_location):
    from .files import read_for_mmengine
    return read_for_mmengine(filename, map_location)


def _load_from_http(filename, map_location=None, model_dir=None,
                    progress=None):
    from .download import cached_download
    from .files import read_for_mmengine
    return read_for_mmengine(
        cached_download(filename, model_dir=model_dir, progress=progress),
        map_location)


def install():
    """Route mmengine's local and http(s) checkpoint loading through here
    (torch files, safetensors, Hugging Face folders)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=_load_from_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=_load_from_http, force=True)
