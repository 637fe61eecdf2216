"""Read a torch checkpoint file (``torch.save``'s zip or legacy format)
without ``torch.load``.

The format is decided as torch decides it, by the first bytes, and every
byte is accounted for before anything is built (docs/security.md), so that
this reader and torch's never see different files. Pickles are run by
:mod:`.unpickler`; each storage is checked against the bytes left, read once
straight into an uninitialised tensor and placed by ``map_location`` as
``torch.load`` places it.
"""
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from typing import BinaryIO, Dict, Optional

import torch

from ..errors import (CheckpointFileError, CheckpointTooCostlyError,
                      MalformedPickleError, TruncatedError,
                      UnsafeCheckpointError)
from .unpickler import Machine
from .vocabulary import VOCABULARY, Storage, StorageType

MAX_INFLATION = 20  # uncompressed / compressed size of one zip record
MAX_PICKLE_BYTES = 1 << 30
_ZIP_MAGIC = b'PK\x03\x04'
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_VERSION = 1001
_LOCAL = struct.Struct('<4s2B4HL2L2H')  # a zip local file header
_EOCD = struct.Struct('<4s4H2LH')
_KEY = re.compile(r'[0-9A-Za-z_.-]{1,64}')
_LOCATION = re.compile(r'[a-z]{2,16}(:\d{1,4})?')


def _two_ways(where: str, what: str) -> CheckpointFileError:
    return CheckpointFileError(f'{where}: {what}; refusing a file that '
                               'reads two ways')


class _Storages:
    """The persistent-id handler: a storage per key, read once by
    ``read(key, nbytes)`` into a uint8 tensor."""

    def __init__(self, read, map_location, where: str, legacy=False):
        self.read, self.where, self.legacy = read, where, legacy
        # torch.load's own rule for map_location
        self.restore = torch.serialization._get_restore_location(
            map_location)
        self.by_key: Dict[str, Storage] = {}

    def __call__(self, pid):
        if type(pid) is not tuple or len(pid) != (6 if self.legacy else 5) \
                or pid[0] != 'storage':
            raise UnsafeCheckpointError(
                f'{self.where}: refusing to load it: a persistent id that is '
                'not a tensor storage')
        kind, key, location, numel = pid[1:5]
        if not isinstance(kind, StorageType) or type(key) is not str or \
                not _KEY.fullmatch(key) or type(location) is not str or \
                not _LOCATION.fullmatch(location) or type(numel) is not int \
                or numel < 0 or (self.legacy and pid[5] is not None):
            raise MalformedPickleError(
                f'{self.where}: a storage reference of an unknown form')
        known = self.by_key.get(key)
        if known is not None:
            if known.dtype != kind.dtype or known.numel != numel:
                raise MalformedPickleError(
                    f'{self.where}: storage {key} is read as two types')
            return known
        untyped = self.read(key, numel * kind.dtype.itemsize
                            ).untyped_storage()
        try:
            untyped = self.restore(untyped, location)
        except RuntimeError as err:
            raise ValueError(f'{self.where}: its tensors were saved on '
                             f'{location}: {err}') from None
        self.by_key[key] = Storage(kind.dtype, untyped, numel)
        return self.by_key[key]


def _read_into(handle, nbytes: int, where: str, what: str) -> torch.Tensor:
    """``nbytes`` of ``handle`` read once into uninitialised memory (no
    zero-filling pass, no copy)."""
    data = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes and handle.readinto(memoryview(data.numpy())) != nbytes:
        raise TruncatedError(f'{where} is truncated in {what[:80]} (an '
                             'interrupted save or download?)')
    return data


def _run_pickle(stream, end, where, persistent_load=None):
    return Machine(VOCABULARY, persistent_load, where).load(stream, end)


# --- the zip format ----------------------------------------------------------

def _zip_layout(handle: BinaryIO, size: int, where: str):
    """The ZipFile, its prefix and each record's (data offset, size, ZipInfo
    if compressed), once every byte of the file is accounted for (see the
    module docstring)."""
    handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError,
            NotImplementedError) as err:  # a zip version it does not read
        if 'not a zip file' in str(err):
            raise TruncatedError(
                f'{where} is truncated: it starts as a torch zip checkpoint '
                'but has no zip directory at its end (an interrupted save '
                'or download?)') from None
        raise CheckpointFileError(f'{where}: a damaged zip checkpoint '
                                  f'({err})') from None
    infos = archive.infolist()
    names = [i.filename for i in infos]
    pickles = [n for n in names if n.endswith('/data.pkl')
               and n.count('/') == 1]
    if any('\0' in i.orig_filename for i in infos):
        # zipfile cuts a name at its NUL, torch's reader does not
        raise _two_ways(where, 'a zip record name holds a NUL byte')
    if len(set(names)) != len(names):
        raise _two_ways(where, 'the zip checkpoint names a record twice')
    if len(pickles) != 1:
        raise CheckpointFileError(
            f'{where}: a zip file that is not a torch checkpoint (no '
            '<name>/data.pkl record)')
    prefix = pickles[0][:-len('data.pkl')]
    stray = [n for n in names if not n.startswith(prefix)]
    if stray:
        raise CheckpointFileError(f'{where}: the zip checkpoint has records '
                                  f'outside {prefix}: {stray[0][:80]}')
    offset, records = 0, {}
    ordered = sorted(infos, key=lambda i: i.header_offset)
    starts = [i.header_offset for i in ordered[1:]] + [archive.start_dir]
    for info, following in zip(ordered, starts):
        record = info.filename[:80]
        if info.header_offset != offset:
            raise _two_ways(where, f'the zip checkpoint has '
                            f'{info.header_offset - offset:,} unaccounted '
                            f'bytes before {record}')
        handle.seek(offset)
        header = handle.read(_LOCAL.size)
        if len(header) != _LOCAL.size or header[:4] != _ZIP_MAGIC:
            raise CheckpointFileError(f'{where}: a damaged zip record '
                                      f'{record}')
        fields = _LOCAL.unpack(header)
        if handle.read(fields[-2]) != info.orig_filename.encode(
                'utf-8' if info.flag_bits & 0x800 else 'cp437'):
            raise _two_ways(where, f'record {record} has another name in '
                            'its header')
        start = offset + _LOCAL.size + sum(fields[-2:])
        records[info.filename] = (start, info.file_size, None if
                                  info.compress_type == zipfile.ZIP_STORED
                                  else info)
        offset = start + info.compress_size
        if info.flag_bits & 0x08:
            offset += _descriptor_length(handle, offset, following - offset,
                                         info, where)
        if info.flag_bits & 0x1:
            raise CheckpointFileError(f'{where}: record {record} is damaged '
                                      '(encrypted; torch never encrypts)')
        if info.compress_type == zipfile.ZIP_STORED and \
                info.file_size != info.compress_size:
            raise CheckpointFileError(
                f'{where}: record {record} is stored (not compressed) in '
                f'{info.compress_size:,} bytes but announces '
                f'{info.file_size:,}')
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > \
                max(MAX_INFLATION * max(info.compress_size, 1), 1 << 20):
            raise CheckpointTooCostlyError(
                f'{where}: record {record} is compressed '
                f'{info.compress_size:,} -> {info.file_size:,} bytes (over '
                f'{MAX_INFLATION}x; torch.save never compresses): a '
                'decompression bomb. Refusing to load it')
    # the directory must follow the records, end where the end records
    # begin, and lie where they say: zipfile moves a misplaced one
    # ("concatenated" zips), torch's reader does not
    handle.seek(size - _EOCD.size)
    end = handle.read(_EOCD.size)
    if len(end) != _EOCD.size or end[:4] != b'PK\x05\x06' or \
            _EOCD.unpack(end)[-1] != 0:
        raise _two_ways(where, "data follows the zip checkpoint's end record")
    directory_end, (cd_size, cd_offset) = size - _EOCD.size, \
        _EOCD.unpack(end)[5:7]
    handle.seek(directory_end - 20)
    locator = handle.read(20)
    if locator[:4] == b'PK\x06\x07':  # zip64: torch writes it always
        record = struct.unpack('<Q', locator[8:16])[0]
        head = b''
        if record < directory_end - 20:  # a place inside the file
            handle.seek(record)
            head = handle.read(56)
        if head[:4] != b'PK\x06\x06' or len(head) < 56 or record + 12 + \
                struct.unpack('<Q', head[4:12])[0] != directory_end - 20:
            raise CheckpointFileError(f'{where}: a damaged zip64 end record')
        (cd_size, cd_offset), directory_end = struct.unpack(
            '<2Q', head[40:56]), record
    if not offset == cd_offset == archive.start_dir == directory_end - \
            cd_size:
        raise _two_ways(where, "the zip checkpoint's directory is not where "
                        'its records end and its end record says (a second '
                        'directory?)')
    return archive, prefix, records


def _descriptor_length(handle, offset, room, info, where) -> int:
    """Length of the data descriptor at ``offset`` (an optional signature,
    the CRC, then 4- or 8-byte sizes), which must repeat the directory's and
    fill the ``room`` before the next record."""
    handle.seek(offset)
    raw = handle.read(28)
    start = 4 if raw[:4] == b'PK\x07\x08' else 0
    crc = struct.unpack('<L', raw[start:start + 4])[0] if \
        len(raw) >= start + 4 else None
    for fmt in ('<2L', '<2Q'):
        width = struct.calcsize(fmt)
        sizes = raw[start + 4:start + 4 + width]
        if crc == info.CRC and len(sizes) == width and struct.unpack(
                fmt, sizes) == (info.compress_size, info.file_size) and \
                start + 4 + width == room:
            return start + 4 + width
    raise CheckpointFileError(
        f'{where}: the data descriptor of {info.filename[:80]} does not '
        'match its directory entry')


def _read_record(handle, archive, records, name, where, nbytes=None):
    """A record's bytes as a uint8 tensor; ``nbytes``, what its tensor
    announces, must be its size. A stored record - every record torch
    writes - is read straight from its place in the file, which the layout
    has shown to lie in the file; zipfile inflates a compressed one."""
    if name not in records:
        raise MalformedPickleError(f'{where}: storage record {name} is '
                                   'missing')
    start, size, packed = records[name]
    if nbytes is not None and size != nbytes:
        raise MalformedPickleError(
            f'{where}: storage record {name} holds {size:,} bytes, its '
            f'tensor announces {nbytes:,}')
    if packed is None:
        handle.seek(start)
        return _read_into(handle, size, where, name)
    data = bytearray(size)
    try:  # zipfile checks the CRC as it reads
        with archive.open(packed) as member:
            if member.readinto(data) != size or member.read(1):
                raise TruncatedError(f'{where} is truncated in {name[:80]}')
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError,
            NotImplementedError, RuntimeError) as err:
        # NotImplementedError: a method zipfile lacks; RuntimeError: an
        # encrypted record
        raise CheckpointFileError(f'{where}: record {name[:80]} is damaged '
                                  f'({err})') from None
    return torch.frombuffer(data, dtype=torch.uint8) if data else \
        torch.empty(0, dtype=torch.uint8)


def _load_zip(handle, size, where, map_location):
    archive, prefix, records = _zip_layout(handle, size, where)
    if not any(packed for _, _, packed in records.values()):
        # its tables let go: 100,000 ZipInfos for as many tensors
        archive = archive.close()

    def read(name, nbytes=None):
        return _read_record(handle, archive, records, prefix + name, where,
                            nbytes)

    if prefix + 'byteorder' in records and \
            bytes(read('byteorder').numpy()) != b'little':
        raise CheckpointFileError(
            f'{where} was saved on a big-endian machine; convnext_mm reads '
            'little-endian checkpoints (re-save it on x86 or Arm)')
    pickle_size = records[prefix + 'data.pkl'][1]
    if pickle_size > MAX_PICKLE_BYTES:
        raise CheckpointTooCostlyError(
            f'{where}: its pickle is {pickle_size:,} bytes, beyond any model '
            'checkpoint. Refusing to load it')
    data = bytes(read('data.pkl').numpy())
    storages = _Storages(lambda key, n: read(f'data/{key}', n), map_location,
                         where)
    return _run_pickle(io.BytesIO(data), len(data), where, storages)


# --- the legacy format -------------------------------------------------------

def _load_legacy(handle, size, where, map_location, filled=None):
    """The legacy stream: magic, version, system info, the main pickle, the
    storage keys, then the storages. Its storages follow the pickle that
    makes their tensors, so they are filled on the CPU and, for another
    ``map_location``, the pickle is run again on the ``filled`` storages."""
    pending = {}

    def later(key, nbytes):
        # what the storages announce must fit in the bytes left, before
        # anything is allocated for them
        announced = nbytes + sum(map(len, pending.values()))
        if announced > size - handle.tell():
            raise TruncatedError(
                f'{where} is truncated: its tensors announce {announced:,} '
                f'bytes of storage, the file has {size - handle.tell():,} '
                'left (an interrupted save or download?)')
        pending[key] = torch.empty(nbytes, dtype=torch.uint8)
        return pending[key]

    handle.seek(0)
    try:  # the magic number: a plain int, nothing named
        magic = Machine({}, None, where).load(handle, size)
    except TruncatedError:
        raise
    except (UnsafeCheckpointError, MalformedPickleError):
        magic = None
    if magic != _LEGACY_MAGIC:
        raise CheckpointFileError(f'{where} is not a PyTorch checkpoint '
                                  '(neither a zip nor a legacy torch file)')
    version, info = (_run_pickle(handle, size, where) for _ in range(2))
    if version != _LEGACY_VERSION or not isinstance(info, dict) or \
            info.get('little_endian') is not True:
        raise CheckpointFileError(
            f'{where}: a legacy torch file of protocol {version!r} or from '
            'a big-endian machine; re-save it with a current torch')
    storages = _Storages(later, 'cpu', where, legacy=True) if filled is None \
        else _Storages(lambda key, n: filled[key], map_location, where, True)
    value = _run_pickle(handle, size, where, storages)
    if filled is not None:
        return value
    keys = _run_pickle(handle, size, where)
    if type(keys) is not list or sorted(keys) != sorted(pending):
        raise MalformedPickleError(
            f'{where}: its storage list does not match its tensors')
    for key in keys:
        raw = handle.read(8)
        if len(raw) < 8:
            raise TruncatedError(f'{where} is truncated: storage {key} is '
                                 'missing')
        data = pending[key]
        if struct.unpack('<q', raw)[0] * storages.by_key[key].dtype.itemsize \
                != len(data):
            raise MalformedPickleError(
                f'{where}: storage {key} announces two sizes')
        if len(data) and handle.readinto(memoryview(data.numpy())) != len(
                data):
            raise TruncatedError(f'{where} is truncated in storage {key} '
                                 '(an interrupted save or download?)')
    if handle.tell() != size:
        raise _two_ways(where, f'{size - handle.tell():,} bytes follow the '
                        "legacy checkpoint's data")
    if map_location in (None, 'cpu') or not pending:
        return value
    return _load_legacy(handle, size, where, map_location, pending)


def load(file, map_location=None, where: Optional[str] = None):
    """Read a torch checkpoint (a path or a seekable binary file).

    Raises:
        UnsafeCheckpointError: it asks for something outside the vocabulary,
            or is in the ``.tar`` format.
        CheckpointTooCostlyError: over a bound.
        TruncatedError: it ends before what it announces.
        ValueError: anything else that is not a torch checkpoint.
    """
    opened = isinstance(file, (str, os.PathLike))
    where = where or (os.fspath(file) if opened else 'the checkpoint')
    handle = open(file, 'rb') if opened else file
    try:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0)
        head = handle.read(4)
        if not head:
            raise TruncatedError(f'{where} is empty (an interrupted save or '
                                 'download?)')
        if head == _ZIP_MAGIC:
            return _load_zip(handle, size, where, map_location)
        handle.seek(0)
        if size >= 512 and _is_tar(handle):
            raise UnsafeCheckpointError(
                f'{where} is in torch\'s legacy .tar format, which can only '
                'be loaded by running its pickles unchecked. If you trust '
                'the file, convert it once with python tools/'
                'convert_checkpoint.py --trusted OLD NEW and load NEW')
        if head[:1] != pickle.PROTO and head[:1] not in b'(}]cK':
            raise CheckpointFileError(
                f'{where} is not a PyTorch checkpoint: it is neither a zip '
                'nor a pickle stream')
        return _load_legacy(handle, size, where, map_location)
    finally:
        if opened:
            handle.close()


def _is_tar(handle) -> bool:
    try:
        return tarfile.is_tarfile(handle)
    except (OSError, ValueError, EOFError):
        return False
    finally:
        handle.seek(0)


def is_complete(path: str) -> bool:
    """Whether the torch file at ``path`` is whole: for the zip format its
    records and directory (cheap: no tensor is read), else a full read."""
    try:
        with open(path, 'rb') as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(0)
            if handle.read(4) != _ZIP_MAGIC:
                load(handle, 'cpu', path)
                return True
            _zip_layout(handle, size, path)[0].close()
            return True
    except (ValueError, pickle.UnpicklingError, OSError, MemoryError):
        return False
