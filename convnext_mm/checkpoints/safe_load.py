"""Load mmengine checkpoints safely under torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses the
checkpoints mmengine itself writes: their ``message_hub`` holds
``HistoryBuffer`` objects with numpy arrays, schedulers hold a ``Counter``,
``meta`` holds numpy scalars. Turning the check off would let a checkpoint
run arbitrary code. Instead :func:`safe_torch_load` unpickles with torch's own
weights-only allow-list plus exactly the types mmengine checkpoints contain,
and :func:`install` makes mmengine's local and http(s) checkpoint loaders use
it, so ``load_from``, ``--resume``, ``init_cfg`` and the test tools all work.
"""
import _compat_pickle
import collections
import io
import os
import os.path as osp
import pickle
import types

import torch

# (module, name) -> what mmengine training checkpoints contain beyond
# torch's own weights-only allow-list
_EXTRA_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('collections', 'Counter'): collections.Counter,
    ('collections', 'defaultdict'): collections.defaultdict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
    ('builtins', 'complex'): complex,
}
_LAZY_GLOBALS = {
    # numpy 1.x and 2.x spell the array/scalar reconstructors differently
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('mmengine.logging.history_buffer', 'HistoryBuffer'),
    ('mmengine.config.config', 'ConfigDict'),
}
# numpy dtypes pickle as numpy.dtypes.<Name>DType classes on numpy >= 1.25
_DTYPE_MODULES = ('numpy.dtypes', )
# ``getattr(obj, name)`` pairs allowed: mmengine pickles the statistics
# methods of HistoryBuffer as bound look-ups
_GETATTR_ALLOWED = {
    'HistoryBuffer': {'min', 'max', 'mean', 'current'},
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked to unpickle something outside the allow-list."""


def _torch_safe_globals():
    from torch import _weights_only_unpickler as wou
    allowed = dict(wou._get_allowed_globals())
    allowed.update(wou._get_user_allowed_globals())
    return allowed


def _guarded_getattr(obj, name):
    owner = obj if isinstance(obj, type) else type(obj)
    if name in _GETATTR_ALLOWED.get(owner.__name__, ()) and \
            owner.__module__.startswith('mmengine.'):
        return getattr(obj, name)
    raise UnsafeCheckpointError(
        f'checkpoint asks for getattr({owner.__qualname__}, {name!r}), which '
        'is not on convnext_mm\'s allow-list')


class Unpickler(pickle.Unpickler):
    """An unpickler that only builds allow-listed globals."""

    _torch_allowed = None

    def find_class(self, module, name):
        # protocol 2 (torch.save's default) spells Python 2 module names;
        # map them as pickle's own find_class does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name),
                                                      (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in _EXTRA_GLOBALS:
            return _EXTRA_GLOBALS[key]
        if key == ('builtins', 'getattr'):
            return _guarded_getattr
        if key in _LAZY_GLOBALS or (module in _DTYPE_MODULES
                                    and name.endswith('DType')):
            return super().find_class(module, name)
        if Unpickler._torch_allowed is None:
            Unpickler._torch_allowed = _torch_safe_globals()
        full = f'{module}.{name}'
        if full in Unpickler._torch_allowed:
            return Unpickler._torch_allowed[full]
        raise UnsafeCheckpointError(
            f'refusing to load {module}.{name}: the checkpoint contains an '
            'object that is neither tensors, plain Python containers, numpy '
            'arrays nor mmengine training state. Loading it could run '
            'arbitrary code. If you trust the file, load it yourself with '
            'torch.load(path, weights_only=False) and save its state dict.')


def _load(file, **kwargs):
    return Unpickler(file, **kwargs).load()


def _loads(data, **kwargs):
    return Unpickler(io.BytesIO(data), **kwargs).load()


# the shape torch.load expects of ``pickle_module``
pickle_module = types.ModuleType('convnext_mm_safe_pickle')
pickle_module.Unpickler = Unpickler
pickle_module.load = _load
pickle_module.loads = _loads
pickle_module.UnpicklingError = pickle.UnpicklingError
pickle_module.__name__ = 'convnext_mm_safe_pickle'


def safe_torch_load(file, map_location=None):
    """``torch.load`` that admits tensors and mmengine training state only.

    Raises:
        FileNotFoundError: ``file`` is a path that does not exist.
        UnsafeCheckpointError: the file pickles a disallowed object.
        ValueError: the file is not a torch checkpoint at all.
    """
    if isinstance(file, (str, os.PathLike)):
        file = osp.expanduser(os.fspath(file))
        if not osp.isfile(file):
            raise FileNotFoundError(
                f'checkpoint {file} does not exist (or is not a file)')
    try:
        return torch.load(
            file,
            map_location=map_location,
            weights_only=False,
            pickle_module=pickle_module)
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError,
            OSError) as err:
        if isinstance(err, pickle.UnpicklingError) and \
                'refusing' in str(err):
            raise
        raise ValueError(
            f'{file} is not a PyTorch checkpoint that torch.load can read '
            f'({type(err).__name__}: {err})') from err


def _load_from_local(filename, map_location):
    return safe_torch_load(filename, map_location=map_location)


def _load_from_http(filename, map_location=None, model_dir=None,
                    progress=None):
    """Download once per machine (rank 0 first), then load safely."""
    from mmengine.dist import barrier, get_dist_info
    rank, world_size = get_dist_info()
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, osp.basename(filename.split('?')[0]))
    show = os.isatty(0) if progress is None else progress
    if rank == 0 and not osp.isfile(cached):
        os.makedirs(model_dir, exist_ok=True)
        torch.hub.download_url_to_file(filename, cached, progress=show)
    if world_size > 1:
        barrier()
        if rank != 0 and not osp.isfile(cached):
            torch.hub.download_url_to_file(filename, cached, progress=show)
    return safe_torch_load(cached, map_location=map_location)


def install():
    """Route mmengine's local and http(s) checkpoint loading through here."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=_load_from_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=_load_from_http, force=True)

