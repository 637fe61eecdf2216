"""What a checkpoint's pickle may name, and how each is built by our code.

:data:`VOCABULARY` is everything torch, numpy and mmengine write into model
and training checkpoints, each name mapped to a function of ours that checks
its arguments before building (a tensor's offset, sizes and strides against
its storage; a numpy array's bytes against its dtype and shape; a
``HistoryBuffer``'s state before its constructor sees it). No entry is the
library's own function. Tensors of other kinds (float8, complex, quantized)
are named and refused. The table as users see it: docs/security.md.
"""
import argparse
import math
import re
from collections import Counter, OrderedDict

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from .unpickler import Call, Internal, New, Pending, Refused

MAX_DIMS = 64  # torch's own limit
# elements a view may show beyond its storage's (``expand``, zero strides):
# what a consumer allocates from it stays bounded
MAX_EXPANDED = 1 << 24
MAX_DEVICE_INDEX = 127  # torch keeps a device index in 8 bits
KIND_REFUSAL = (
    '{name} tensors, which convnext_mm does not read: model and training '
    'checkpoints hold float and integer tensors and bool buffers. Convert '
    'the file (e.g. torch.load(..., weights_only=True), .float() each '
    'tensor, torch.save) and load that')
_NUMPY_SPEC = re.compile(r'(b1|[iu][1248]|f[248]|[SU](0|[1-9]\d{0,5}))')
_DEVICE = re.compile(r'[a-z]{2,16}(:\d{1,3})?')
_STATISTICS = ('min', 'max', 'mean', 'current')
_HISTORY_STATE = {'max_length', '_log_history', '_count_history',
                  'statistics_methods'}
# storage class names as torch.save writes them, with their dtypes
_STORAGES = {
    'DoubleStorage': torch.float64, 'FloatStorage': torch.float32,
    'HalfStorage': torch.float16, 'BFloat16Storage': torch.bfloat16,
    'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8,
    'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
    'UntypedStorage': torch.uint8, 'storage.UntypedStorage': torch.uint8}
_DTYPES = {name: getattr(torch, name) for name in (
    'float64', 'double', 'float32', 'float', 'float16', 'half', 'bfloat16',
    'int64', 'long', 'int32', 'int', 'int16', 'short', 'int8', 'uint8',
    'uint16', 'uint32', 'uint64', 'bool')}
_OTHER_KINDS = ('complex', 'float8', 'qint', 'quint', 'float4', 'bits',
                'chalf', 'cfloat', 'cdouble') + tuple(
                    f'{u}int{n}' for u in ('', 'u') for n in range(1, 8))


class StorageType(Internal):
    """A storage class named in a persistent id, with its dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class Storage(Internal):
    """One storage of a torch file, read into memory by :mod:`.torch_file`."""
    __slots__ = ('dtype', 'untyped', 'numel')

    def __init__(self, dtype: torch.dtype, untyped, numel: int):
        self.dtype, self.untyped, self.numel = dtype, untyped, numel


class _Marker(Internal):
    """A name passed as an argument: ``numpy.ndarray`` to ``_reconstruct``,
    ``torch.Tensor`` or ``Parameter`` to ``_rebuild_from_type_v2``."""

    def __init__(self, parameter: bool = False):
        self.parameter = parameter


_NDARRAY, _TENSOR, _PARAMETER = _Marker(), _Marker(), _Marker(True)


def _shape(value, what: str) -> tuple:
    if type(value) is not tuple or len(value) > MAX_DIMS or not all(
            type(n) is int and 0 <= n < 1 << 62 for n in value):
        raise ValueError(f'{what} must be a tuple of at most {MAX_DIMS} '
                         'non-negative ints')
    return value


# --- numpy -------------------------------------------------------------------

class _DType(Pending):
    """``numpy.dtype(spec, align, copy)`` then BUILD with its state."""

    def __init__(self, spec, align=False, copy=False):
        if type(spec) is not str or not _NUMPY_SPEC.fullmatch(spec) or \
                type(align) is not bool or type(copy) is not bool:
            raise ValueError(
                f'numpy dtype {str(spec)[:40]!r}: convnext_mm reads numpy '
                'arrays of bool, integer, float and fixed-length bytes/str '
                'dtypes only')
        self.spec = spec

    def build(self, state):
        if (type(state) is not tuple or len(state) not in (8, 9) or
                state[0] not in (3, 4) or state[1] not in ('<', '>', '|', '=')
                or any(s is not None for s in state[2:5]) or
                not all(type(s) is int for s in state[5:])):
            raise TypeError('numpy dtype state of an unknown form')
        dtype = np.dtype(state[1].strip('|=') + self.spec)
        if state[5] not in (-1, dtype.itemsize):
            raise TypeError(f'numpy dtype {self.spec} of item size '
                            f'{state[5]}')
        return dtype


def _dtype(value) -> np.dtype:
    if not isinstance(value, np.dtype) or not _NUMPY_SPEC.fullmatch(
            value.str[1:]):
        raise ValueError('numpy values need a numpy dtype of bool, integer, '
                         'float or fixed-length bytes/str')
    return value


def _array(shape, dtype, data, fortran=False) -> np.ndarray:
    shape, dtype = _shape(shape, 'numpy shape'), _dtype(dtype)
    if type(data) not in (bytes, bytearray) or type(fortran) is not bool:
        raise ValueError('numpy array data must be bytes')
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise ValueError(
            f'numpy array of shape {shape} and dtype {dtype} needs '
            f'{math.prod(shape) * dtype.itemsize:,} bytes, the file gives '
            f'{len(data):,}')
    order = 'F' if fortran else 'C'
    if not dtype.itemsize:
        return np.zeros(shape, dtype=dtype, order=order)
    return np.frombuffer(bytes(data), dtype=dtype).reshape(
        shape, order=order).copy(order=order)


class _Array(Pending):
    """``_reconstruct(ndarray, (0,), b'b')`` then BUILD with (version,
    shape, dtype, is_fortran, data)."""

    def __init__(self, cls, shape, typecode):
        if cls is not _NDARRAY or type(typecode) is not bytes:
            raise ValueError('numpy _reconstruct of something other than '
                             'an ndarray')

    def build(self, state):
        if type(state) is tuple and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if type(state) is not tuple or len(state) != 4:
            raise TypeError('numpy array state of an unknown form')
        shape, dtype, fortran, data = state
        return _array(shape, dtype, data, fortran)


def _scalar(dtype, data=None):
    dtype = _dtype(dtype)
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise ValueError(f'a numpy {dtype} scalar needs {dtype.itemsize} '
                         'bytes')
    if not dtype.itemsize:  # str_('') and bytes_(b''): U0, S0
        return dtype.type()
    return np.frombuffer(data, dtype=dtype)[0].copy()


def _frombuffer(data, dtype, shape, order):
    if order not in ('C', 'F'):
        raise ValueError(f'numpy order {order!r}')
    return _array(shape, dtype, data, order == 'F')


# --- Python and collections ------------------------------------------------

def _ordered_dict(items=()):
    value = OrderedDict()
    for pair in items:
        if type(pair) not in (list, tuple) or len(pair) != 2:
            raise ValueError('OrderedDict items must be pairs')
        value[pair[0]] = pair[1]
    return value


def _counter(mapping=None):
    if mapping is not None and not isinstance(mapping, dict):
        raise ValueError('Counter takes a dict')
    return Counter(mapping or {})


def _set(items=(), cls=set):
    if type(items) not in (list, tuple):
        raise ValueError('a set is built from a list')
    return cls(items)


def _bytes(*args):
    if args and (len(args) > 2 or type(args[0]) not in (str, bytes)):
        raise ValueError('bytes/bytearray only of a string or bytes')
    if args and type(args[0]) is str:
        return _encode(*args)
    return bytes(*args)


def _encode(text, encoding='latin1'):
    # protocol 2 spells bytes as _codecs.encode(str, 'latin1')
    if type(text) is not str or encoding not in ('latin1', 'latin-1'):
        raise ValueError('_codecs.encode only as protocol 2 writes bytes')
    return text.encode('latin-1')


# what the collections' builders hash, for the unpickler to count first
def _pairs_keys(args):
    return [p[0] for p in (args[0] if args else ())
            if type(p) in (list, tuple) and len(p) == 2]


def _members(args):
    return list(args[0]) if args and isinstance(args[0], (
        list, tuple, dict)) else []


# --- argparse and mmengine: NEWOBJ, then BUILD with their state ------------

def _no_args(pending):
    def new(*args):
        if args:
            raise ValueError(f'{pending.__name__[1:]} only as pickle writes '
                             'it')
        return pending()
    return new


class _Namespace(Pending):
    """An ``argparse.Namespace`` (the ConvNeXt authors' training checkpoints
    keep their command line in one): its attributes, plain data already,
    set by our code."""

    def build(self, state):
        if not isinstance(state, dict) or not all(
                type(k) is str and k.isidentifier() for k in state):
            raise TypeError('an argparse.Namespace whose state is not a dict '
                            'of attribute names')
        return argparse.Namespace(**state)


class _HistoryBuffer(Pending):
    """A ``HistoryBuffer``, built by its constructor from a checked state."""

    def build(self, state):
        if not isinstance(state, dict) or not set(state) <= _HISTORY_STATE:
            raise TypeError("a HistoryBuffer whose state is not mmengine's")
        methods = state.get('statistics_methods', {})
        if not isinstance(methods, dict) or any(
                name not in _STATISTICS
                or method is not getattr(HistoryBuffer, name)
                for name, method in methods.items()):
            raise ValueError(
                'a HistoryBuffer that redefines its statistics methods: it '
                'would change what every HistoryBuffer in this process '
                'reports')
        histories = []
        for key in ('_log_history', '_count_history'):
            value = state.get(key, np.zeros(0))
            if not isinstance(value, np.ndarray) or value.ndim != 1 or \
                    value.dtype.kind not in 'biuf':
                raise ValueError(f'a HistoryBuffer whose {key} is not a '
                                 'numeric vector')
            histories.append(value)
        length = state.get('max_length', 1_000_000)
        if type(length) is not int or length < max(1, len(histories[0])) \
                or len(histories[0]) != len(histories[1]):
            raise ValueError('a HistoryBuffer whose max_length or history '
                             'lengths do not agree')
        return HistoryBuffer(*histories, max_length=length)


_HISTORY = New('HistoryBuffer', _no_args(_HistoryBuffer))


def _history_statistic(owner, name):
    """``getattr(HistoryBuffer, name)`` for the built-in statistics only."""
    if owner is not _HISTORY or name not in _STATISTICS:
        raise ValueError('getattr is read only for HistoryBuffer\'s '
                         'statistics (min, max, mean, current)')
    return getattr(HistoryBuffer, name)


# --- torch -------------------------------------------------------------------

def _read_dtype(dtype, what='tensors'):
    if not isinstance(dtype, torch.dtype) or dtype not in _DTYPES.values():
        raise ValueError(f'{what} of dtype {dtype} are not read')
    return dtype


def _no_extras(hooks=None, metadata=None):
    if hooks not in (None, {}, ()):  # an empty OrderedDict equals {}
        raise ValueError('tensors with backward hooks are not read')
    if metadata not in (None, {}):
        raise ValueError('tensors with metadata (conjugate, negative views) '
                         'or attributes are not read')


def _tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
            metadata=None):
    if not isinstance(storage, Storage):
        raise ValueError('a tensor needs a storage of the file')
    size, stride = _shape(size, 'tensor sizes'), _shape(stride,
                                                        'tensor strides')
    if len(size) != len(stride) or type(offset) is not int or offset < 0 \
            or type(requires_grad) is not bool:
        raise ValueError('tensor sizes, strides and offset do not agree')
    _no_extras(hooks, metadata)
    numel = math.prod(size)
    if numel and offset + sum((n - 1) * s for n, s in zip(size, stride)) \
            >= storage.numel:
        raise ValueError(
            f'a tensor of sizes {size}, strides {stride} and offset '
            f'{offset} reaches past its storage of {storage.numel:,} '
            'elements')
    if numel > max(storage.numel, MAX_EXPANDED):
        raise ValueError(
            f'a view of {numel:,} elements of a storage of {storage.numel:,}'
            f' (sizes {size}, strides {stride}): past {MAX_EXPANDED:,} '
            'elements a view may not show more than its storage holds')
    tensor = torch.empty((0, ), dtype=storage.dtype,
                         device=storage.untyped.device)
    tensor.set_(storage.untyped, offset, torch.Size(size), stride)
    return tensor.requires_grad_(requires_grad and
                                 storage.dtype.is_floating_point)


def _tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype,
               metadata=None):
    """A tensor on an untyped storage, its dtype named apart (torch writes
    this for dtypes without a storage class of their own)."""
    dtype = _read_dtype(dtype)
    if not isinstance(storage, Storage) or storage.dtype != torch.uint8 or \
            storage.numel % dtype.itemsize:
        raise ValueError('a tensor needs a storage of the file')
    typed = Storage(dtype, storage.untyped, storage.numel // dtype.itemsize)
    return _tensor(typed, offset, size, stride, requires_grad, hooks,
                   metadata)


def _meta_tensor(dtype, size, stride, requires_grad=False):
    """A tensor of shapes only (the meta device): nothing is allocated. The
    loaders refuse it as a weight, naming it."""
    dtype = _read_dtype(dtype, 'meta tensors')
    size, stride = _shape(size, 'tensor sizes'), _shape(stride,
                                                        'tensor strides')
    if len(size) != len(stride) or type(requires_grad) is not bool:
        raise ValueError('meta tensor sizes and strides do not agree')
    try:
        return torch.empty_strided(size, stride, dtype=dtype, device='meta')
    except RuntimeError as err:  # sizes whose product overflows
        raise ValueError(f'meta tensor of sizes {size}: {err}') from None


def _parameter(data, requires_grad=True, hooks=None, state=None):
    if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool:
        raise ValueError('a Parameter wraps a tensor')
    _no_extras(hooks, state)
    return torch.nn.Parameter(
        data, requires_grad and data.dtype.is_floating_point)


_REBUILD_TENSOR = Call('torch._utils._rebuild_tensor_v2', _tensor)


def _from_type(func, new_type, args, state=None):
    if func is not _REBUILD_TENSOR or (new_type is not _TENSOR and new_type
                                       is not _PARAMETER) or \
            type(args) is not tuple or state not in (None, {}):
        raise ValueError('tensor subclasses and tensors with attributes are '
                         'not read')
    tensor = _tensor(*args)
    return torch.nn.Parameter(tensor, tensor.requires_grad) \
        if new_type.parameter else tensor


def _size(sizes=()):
    return torch.Size(_shape(tuple(sizes) if type(sizes) is list else sizes,
                             'torch.Size'))


def _device(kind, index=None):
    if type(kind) is not str or not _DEVICE.fullmatch(kind) or (
            index is not None and type(index) is not int):
        raise ValueError('torch.device of an odd name')
    _, _, named = kind.partition(':')
    for number in (index, int(named) if named else None):
        if number is not None and not 0 <= number <= MAX_DEVICE_INDEX:
            raise ValueError(f'torch.device index {number}')
    try:
        return torch.device(kind) if index is None else torch.device(kind,
                                                                     index)
    except RuntimeError:
        raise ValueError(f'torch.device {kind[:20]!r}: not a device type '
                         'torch knows') from None


def _build_vocabulary():
    table = {
        'collections.OrderedDict': Call('OrderedDict', _ordered_dict,
                                        _pairs_keys),
        'collections.Counter': Call('Counter', _counter, _members),
        'builtins.set': Call('set', _set, _members),
        'builtins.frozenset': Call(
            'frozenset', lambda items=(): _set(items, frozenset), _members),
        'builtins.bytes': Call('bytes', _bytes),
        'builtins.bytearray': Call('bytearray',
                                   lambda *a: bytearray(_bytes(*a))),
        '_codecs.encode': Call('_codecs.encode', _encode),
        'builtins.getattr': Call('getattr', _history_statistic),
        'mmengine.logging.history_buffer.HistoryBuffer': _HISTORY,
        'torch._utils._rebuild_tensor_v2': _REBUILD_TENSOR,
        'torch._utils._rebuild_tensor': _REBUILD_TENSOR,
        'torch._utils._rebuild_tensor_v3': Call('_rebuild_tensor_v3',
                                                _tensor_v3),
        'torch._utils._rebuild_meta_tensor_no_storage': Call(
            '_rebuild_meta_tensor_no_storage', _meta_tensor),
        'torch._utils._rebuild_parameter': Call('_rebuild_parameter',
                                                _parameter),
        'torch._utils._rebuild_parameter_with_state': Call(
            '_rebuild_parameter_with_state', _parameter),
        'torch._tensor._rebuild_from_type_v2': Call('_rebuild_from_type_v2',
                                                    _from_type),
        'torch.Tensor': _TENSOR,
        'torch.nn.parameter.Parameter': _PARAMETER,
        'torch.Size': Call('torch.Size', _size),
        'torch.device': Call('torch.device', _device),
        'argparse.Namespace': New('argparse.Namespace',
                                  _no_args(_Namespace)),
        'numpy.ndarray': _NDARRAY,
        'numpy.dtype': Call('numpy.dtype', _DType),
    }
    for name in _STATISTICS:
        table[f'mmengine.logging.history_buffer.HistoryBuffer.{name}'] = \
            getattr(HistoryBuffer, name)
    # numpy 1.x and 2.x spell their reconstructors differently
    for core in ('numpy.core', 'numpy._core'):
        table[f'{core}.multiarray._reconstruct'] = Call('_reconstruct',
                                                        _Array)
        table[f'{core}.multiarray.scalar'] = Call('scalar', _scalar)
        table[f'{core}.numeric._frombuffer'] = Call('_frombuffer',
                                                    _frombuffer)
    table.update({f'torch.{k}': StorageType(v) for k, v in _STORAGES.items()})
    table.update({f'torch.{k}': v for k, v in _DTYPES.items()})
    for name in dir(torch):
        kind = name.endswith('Storage') or isinstance(
            getattr(torch, name, None), torch.dtype)
        if kind and f'torch.{name}' not in table and any(
                name.lower().startswith(k) for k in _OTHER_KINDS):
            table[f'torch.{name}'] = Refused('it holds ' + KIND_REFUSAL.format(
                name=name.replace('Storage', '')))
    return table


VOCABULARY = _build_vocabulary()
