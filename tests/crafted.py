"""Hostile checkpoints, assembled opcode by opcode, as an attacker would.

Each builder returns the bytes of a pickle; :func:`torch_zip` and
:func:`torch_legacy` wrap a pickle in the two file formats ``torch.load``
reads. :func:`snapshot` records the process-wide state a payload could try
to change, so tests can compare it before and after a load attempt.
"""
import collections
import copyreg
import io
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

P = pickle


def text(value: str) -> bytes:
    data = value.encode()
    return P.BINUNICODE + struct.pack('<I', len(data)) + data


def glob(module: str, name: str) -> bytes:
    return P.GLOBAL + f'{module}\n{name}\n'.encode()


def long1(value: int) -> bytes:
    data = pickle.encode_long(value)
    return P.LONG1 + bytes([len(data)]) + data


def dict_of(*pairs: bytes) -> bytes:
    return P.EMPTY_DICT + P.MARK + b''.join(pairs) + P.SETITEMS


def program(body: bytes) -> bytes:
    """A protocol-2 pickle (torch.save's) of ``body``."""
    return P.PROTO + b'\x02' + body + P.STOP


def torch_zip(data_pkl: bytes, storages=None) -> bytes:
    """A zip checkpoint as torch.save writes it, around ``data_pkl`` (and
    ``storages``: key -> bytes of ``archive/data/<key>``)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as archive:
        archive.writestr('archive/data.pkl', data_pkl)
        for key, data in (storages or {}).items():
            archive.writestr(f'archive/data/{key}', data)
        archive.writestr('archive/byteorder', 'little')
        archive.writestr('archive/version', '3\n')
    return out.getvalue()


def torch_legacy(main: bytes) -> bytes:
    """torch's legacy (non-zip) format: magic, protocol, sys info, object,
    storage keys, then raw storage bytes (none here)."""
    magic = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)
    version = pickle.dumps(1001, protocol=2)
    info = pickle.dumps(
        dict(protocol_version=1001, little_endian=True,
             type_sizes=dict(short=2, int=4, long=4)), protocol=2)
    keys = pickle.dumps([], protocol=2)
    return magic + version + info + main + keys


def torch_tar() -> bytes:
    """A file in torch's oldest (.tar) format."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT) as t:
        for name, data in (('sys_info', pickle.dumps({})),
                           ('pickle', pickle.dumps({'w': 1})),
                           ('storages', pickle.dumps(0)),
                           ('tensors', pickle.dumps(0))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Reduce:
    """Pickles as ``func(*args)`` followed by BUILD ``state``; with
    ``copyreg.__newobj__`` it poses as an instance of ``args[0]``, as the
    pickler requires."""

    def __init__(self, func, args, state=None):
        self.value = (func, args) if state is None else (func, args, state)

    @property
    def __class__(self):
        if self.value[0] is copyreg.__newobj__:
            return self.value[1][0]
        return Reduce

    def __reduce__(self):
        return self.value


def saved(obj) -> bytes:
    """``torch.save(obj)`` bytes (zip format, protocol 2)."""
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


# --- payloads ---------------------------------------------------------------

def file_write(target: str) -> bytes:
    """BUILD gives torch._utils._rebuild_tensor ``dump_patches`` and a
    ``__name__``; a ('module', ...) persistent id then makes torch's legacy
    loader write ``<target>.patch``."""
    return program(
        glob('torch._utils', '_rebuild_tensor') + P.BINPUT + b'\x00' +
        dict_of(text('dump_patches'), P.NEWTRUE, text('__name__'),
                text(target)) + P.BUILD + P.POP + P.MARK + text('module') +
        P.BINGET + b'\x00' + text('#!/bin/sh\necho pwned\n') +
        text('original source') + P.TUPLE + P.BINPERSID)


def build_on(module: str, name: str, state: bytes) -> bytes:
    """BUILD ``state`` on a global (a class or function) itself."""
    return program(glob(module, name) + state + P.BUILD)


def history_buffer(statistics: dict, **extra) -> bytes:
    state = dict(max_length=10, _log_history=np.zeros(2),
                 _count_history=np.ones(2), statistics_methods=statistics)
    state.update(extra)
    return saved({'message_hub': {'log_scalars': {
        'train/loss': Reduce(copyreg.__newobj__, (HistoryBuffer, ), state)
    }}})


def colliding_int_keys(count: int) -> bytes:
    """A dict whose integer keys all hash alike (multiples of 2**61 - 1)."""
    modulus = (1 << 61) - 1
    batches, body = [], b''
    for start in range(0, count, 1000):
        body = b''.join(
            long1((k + 1) * modulus) + P.BININT1 + b'\x00'
            for k in range(start, min(start + 1000, count)))
        batches.append(P.MARK + body + P.SETITEMS)
    return program(P.EMPTY_DICT + b''.join(batches))


def colliding_set(count: int) -> bytes:
    """``set([...])`` of integers that all hash alike."""
    modulus = (1 << 61) - 1
    items = b''.join(long1((k + 1) * modulus) for k in range(count))
    return program(glob('builtins', 'set') + P.EMPTY_LIST + P.MARK + items +
                   P.APPENDS + P.TUPLE1 + P.REDUCE)


def tuple_keys(count: int) -> bytes:
    pairs = b''.join(P.BININT2 + struct.pack('<H', k % 65536) +
                     P.BININT2 + struct.pack('<H', k // 65536) + P.TUPLE2 +
                     P.NONE for k in range(count))
    return program(P.EMPTY_DICT + P.MARK + pairs + P.SETITEMS)


def self_nested() -> bytes:
    """``d = {}; d['state_dict'] = d``."""
    return program(P.EMPTY_DICT + P.BINPUT + b'\x00' + text('state_dict') +
                   P.BINGET + b'\x00' + P.SETITEM)


def snapshot() -> dict:
    """Process-wide state a checkpoint must not be able to change."""
    import torch._utils as tu
    functions = {
        name: (fn.__defaults__, fn.__kwdefaults__, fn.__name__,
               dict(fn.__dict__))
        for name, fn in vars(tu).items() if callable(fn) and
        hasattr(fn, '__defaults__')
    }

    def attrs(cls):
        # __slotnames__ is copyreg's cache, filled when a test pickles
        return {k: id(v) for k, v in vars(cls).items()
                if k != '__slotnames__'}

    return dict(
        functions=functions,
        counter=attrs(collections.Counter),
        ordered=attrs(collections.OrderedDict),
        history=attrs(HistoryBuffer),
        statistics=dict(HistoryBuffer._statistics_methods),
        storage=attrs(torch.UntypedStorage),
        tensor=attrs(torch.Tensor),
        ndarray_ok=np.ndarray.__setstate__,
        safe_globals=set(
            map(repr, torch.serialization.get_safe_globals())))
