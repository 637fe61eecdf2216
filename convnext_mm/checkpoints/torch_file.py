"""Read a torch checkpoint file (``torch.save``'s zip or legacy format)
without ``torch.load``.

The format is decided as torch decides it, by the first bytes: a zip local
header is the zip format, a tar header the ``.tar`` format (refused: it can
only be read by running its pickles), anything else the legacy stream. Then
every byte of the file is accounted for before anything is built from it:

- zip: the records lie back to back from offset 0, each where the central
  directory says and no other, the directory follows the last one and the
  end record ends the file. A second directory, a prefix (a pickle with a
  zip appended), trailing data, duplicate or stray names, a deflated record
  inflating past :data:`MAX_INFLATION` are refused;
- legacy: the five pickles and the storages they announce fill the file
  exactly, each storage's length checked against its announced size.

Pickles are read by :mod:`.unpickler` with :mod:`.vocabulary`; storages are
read into memory by this module and handed to the tensors' builders.
``map_location`` is applied to each storage as ``torch.load`` applies it.
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


def _restore(map_location):
    """torch.load's own rule for ``map_location`` (None, a device, a dict of
    locations or a function of (storage, location))."""
    get = getattr(torch.serialization, '_get_restore_location', None)
    if get is None:  # pragma: no cover - every torch we support has it
        return lambda storage, location: storage
    return get(map_location)


class _Storages:
    """The persistent-id handler: a storage per key, read once."""

    def __init__(self, read, map_location, where: str, legacy=False):
        self.read = read  # key, nbytes -> a uint8 tensor of the bytes
        self.restore = _restore(map_location)
        self.where = where
        self.legacy = legacy
        self.by_key: Dict[str, Storage] = {}

    def __call__(self, pid):
        if type(pid) is not tuple or len(pid) not in (5, 6) or \
                pid[0] != 'storage' or len(pid) != (6 if self.legacy else 5):
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
        nbytes = numel * kind.dtype.itemsize
        data = self.read(key, nbytes)
        untyped = data.untyped_storage()
        try:
            untyped = self.restore(untyped, location)
        except RuntimeError as err:
            raise ValueError(f'{self.where}: its tensors were saved on '
                             f'{location}: {err}') from None
        storage = Storage(kind.dtype, untyped, numel)
        self.by_key[key] = storage
        return storage


def _buffer(nbytes: int) -> torch.Tensor:
    """Uninitialised memory for ``nbytes`` a file holds (read into it once:
    no zero-filling pass, no copy)."""
    return torch.empty(nbytes, dtype=torch.uint8)


def _fill(handle, buffer: torch.Tensor) -> bool:
    """Read ``handle`` into ``buffer``; whether it was filled."""
    return not len(buffer) or handle.readinto(
        memoryview(buffer.numpy())) == len(buffer)


def _run_pickle(stream, end, where, persistent_load=None):
    return Machine(VOCABULARY, persistent_load, where).load(stream, end)


# --- the zip format ----------------------------------------------------------

def _zip_layout(handle: BinaryIO, size: int, where: str):
    """The ZipFile and its prefix, once every byte of the file is accounted
    for (see the module docstring)."""
    handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError,
            NotImplementedError) as err:  # a zip version it does not read
        if isinstance(err, zipfile.BadZipFile) and 'not a zip file' in str(
                err):
            raise TruncatedError(
                f'{where} is truncated: it starts as a torch zip checkpoint '
                'but has no zip directory at its end (an interrupted save '
                'or download?)') from None
        raise CheckpointFileError(f'{where}: a damaged zip checkpoint '
                             f'({err})') from None
    infos = archive.infolist()
    if any('\0' in i.orig_filename for i in infos):
        # zipfile cuts a name at its NUL, torch's reader does not: the two
        # would read different records
        raise CheckpointFileError(f'{where}: a zip record name holds a NUL '
                             'byte; refusing a file that reads two ways')
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise CheckpointFileError(f'{where}: the zip checkpoint names a record '
                             'twice; refusing a file that reads two ways')
    pickles = [n for n in names if n.endswith('/data.pkl')
               and n.count('/') == 1]
    if len(pickles) != 1:
        raise CheckpointFileError(
            f'{where}: a zip file that is not a torch checkpoint (no '
            '<name>/data.pkl record)')
    prefix = pickles[0][:-len('data.pkl')]
    stray = [n for n in names if not n.startswith(prefix)]
    if stray:
        raise CheckpointFileError(f'{where}: the zip checkpoint has records '
                             f'outside {prefix}: {stray[0][:80]}')
    offset, data_at = 0, {}
    ordered = sorted(infos, key=lambda i: i.header_offset)
    starts = [i.header_offset for i in ordered[1:]] + [archive.start_dir]
    for info, following in zip(ordered, starts):
        if info.header_offset != offset:
            raise CheckpointFileError(
                f'{where}: the zip checkpoint has '
                f'{info.header_offset - offset:,} unaccounted bytes before '
                f'{info.filename[:80]}; refusing a file that reads two ways')
        handle.seek(offset)
        header = handle.read(_LOCAL.size)
        if len(header) != _LOCAL.size or header[:4] != _ZIP_MAGIC:
            raise CheckpointFileError(f'{where}: a damaged zip record '
                                 f'{info.filename[:80]}')
        fields = _LOCAL.unpack(header)
        name = handle.read(fields[-2])
        if name != info.orig_filename.encode(
                'utf-8' if info.flag_bits & 0x800 else 'cp437'):
            raise CheckpointFileError(
                f'{where}: record {info.filename[:80]} has another name in '
                'its header; refusing a file that reads two ways')
        data_at[info.filename] = offset + _LOCAL.size + fields[-2] + \
            fields[-1]
        offset = data_at[info.filename] + info.compress_size
        if info.flag_bits & 0x08:
            offset += _descriptor_length(handle, offset, following - offset,
                                         info, where)
        if info.flag_bits & 0x1:
            raise CheckpointFileError(f'{where}: record {info.filename[:80]} is '
                                 'damaged (encrypted; torch never encrypts)')
        if info.compress_type == zipfile.ZIP_STORED and \
                info.file_size != info.compress_size:
            raise CheckpointFileError(
                f'{where}: record {info.filename[:80]} is stored (not '
                f'compressed) in {info.compress_size:,} bytes but announces '
                f'{info.file_size:,}')
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > \
                max(MAX_INFLATION * max(info.compress_size, 1), 1 << 20):
            raise CheckpointTooCostlyError(
                f'{where}: record {info.filename[:80]} is compressed '
                f'{info.compress_size:,} -> {info.file_size:,} bytes (over '
                f'{MAX_INFLATION}x; torch.save never compresses): a '
                'decompression bomb. Refusing to load it')
    if offset != archive.start_dir:
        raise CheckpointFileError(
            f'{where}: the zip checkpoint\'s directory is not where its '
            'records end (a second directory?); refusing a file that reads '
            'two ways')
    handle.seek(size - _EOCD.size)
    end = handle.read(_EOCD.size)
    if len(end) != _EOCD.size or end[:4] != b'PK\x05\x06' or \
            _EOCD.unpack(end)[-1] != 0:
        raise CheckpointFileError(
            f'{where}: data follows the zip checkpoint\'s end record; '
            'refusing a file that reads two ways')
    directory_end = size - _EOCD.size
    cd_size = _EOCD.unpack(end)[5]
    handle.seek(directory_end - 20)
    locator = handle.read(20)
    if locator[:4] == b'PK\x06\x07':  # zip64: torch writes it always
        record = struct.unpack('<Q', locator[8:16])[0]
        head = b''
        if record < directory_end - 20:  # a place inside the file
            handle.seek(record)
            head = handle.read(48)
        if head[:4] != b'PK\x06\x06' or len(head) < 48 or record + 12 + \
                struct.unpack('<Q', head[4:12])[0] != directory_end - 20:
            raise CheckpointFileError(f'{where}: a damaged zip64 end record')
        cd_size = struct.unpack('<Q', head[40:48])[0]
        directory_end = record
    if archive.start_dir + cd_size != directory_end:
        raise CheckpointFileError(
            f'{where}: the zip checkpoint has bytes between its directory '
            'and its end record (a second directory?); refusing a file that '
            'reads two ways')
    return archive, prefix, data_at


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
    raise CheckpointFileError(f'{where}: the data descriptor of '
                         f'{info.filename[:80]} does not match its directory '
                         'entry')


class _Records:
    """The records of a checked zip checkpoint (see :func:`_zip_layout`):
    name -> (where its data starts, its size, and for a compressed record
    its ``ZipInfo``). zipfile's own tables are let go once this is made
    (a file of 100,000 tensors holds 100,000 of them); an archive with
    compressed records (torch writes none) is kept to inflate them."""

    def __init__(self, handle, archive, data_at, where: str):
        self.handle, self.where = handle, where
        self.entries = {}
        compressed = False
        for info in archive.infolist():
            packed = info.compress_type != zipfile.ZIP_STORED
            compressed |= packed
            self.entries[info.filename] = (data_at[info.filename],
                                           info.file_size,
                                           info if packed else None)
        self.archive = archive if compressed else None

    def _entry(self, name: str):
        entry = self.entries.get(name)
        if entry is None:
            raise MalformedPickleError(f'{self.where}: storage record {name} '
                                       'is missing')
        return entry

    def read(self, name: str, nbytes: Optional[int] = None) -> torch.Tensor:
        """A record's bytes (``nbytes``: what its tensor announces). A
        stored record - every record torch writes - is read straight from
        its place in the file into one buffer of its size, which the file's
        layout has already shown to lie in the file."""
        start, size, packed = self._entry(name)
        if nbytes is not None and size != nbytes:
            raise MalformedPickleError(
                f'{self.where}: storage record {name} holds {size:,} bytes, '
                f'its tensor announces {nbytes:,}')
        if packed is not None:
            data = _read_member(self.archive, packed, self.where)
            return torch.frombuffer(data, dtype=torch.uint8) if data else \
                _buffer(0)
        data = _buffer(size)
        self.handle.seek(start)
        if not _fill(self.handle, data):
            raise TruncatedError(f'{self.where} is truncated in {name[:80]}')
        return data

    def read_bytes(self, name: str) -> bytes:
        """A record as one bytes object (the pickle: read as it is run)."""
        start, size, packed = self._entry(name)
        if packed is not None:
            return bytes(_read_member(self.archive, packed, self.where))
        self.handle.seek(start)
        data = self.handle.read(size)
        if len(data) != size:
            raise TruncatedError(f'{self.where} is truncated in {name[:80]}')
        return data


def _read_member(archive, info, where: str) -> bytearray:
    """A compressed record's bytes; zipfile checks their CRC as it reads."""
    data = bytearray(info.file_size)
    try:
        with archive.open(info) as member:
            if member.readinto(data) != info.file_size or member.read(1):
                raise TruncatedError(f'{where} is truncated in '
                                     f'{info.filename[:80]}')
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError,
            NotImplementedError, RuntimeError) as err:
        # NotImplementedError: a compression method zipfile lacks;
        # RuntimeError: an encrypted record
        raise CheckpointFileError(f'{where}: record {info.filename[:80]} is '
                             f'damaged ({err})') from None
    return data


def _load_zip(handle, size, where, map_location):
    archive, prefix, data_at = _zip_layout(handle, size, where)
    records = _Records(handle, archive, data_at, where)
    if records.archive is None:
        archive.close()
    del archive, data_at
    if prefix + 'byteorder' in records.entries and \
            records.read_bytes(prefix + 'byteorder') != b'little':
        raise CheckpointFileError(
            f'{where} was saved on a big-endian machine; convnext_mm reads '
            'little-endian checkpoints (re-save it on x86 or Arm)')
    pickle_size = records.entries[prefix + 'data.pkl'][1]
    if pickle_size > MAX_PICKLE_BYTES:
        raise CheckpointTooCostlyError(
            f'{where}: its pickle is {pickle_size:,} bytes, beyond any model '
            'checkpoint. Refusing to load it')
    data = records.read_bytes(prefix + 'data.pkl')
    storages = _Storages(
        lambda key, n: records.read(f'{prefix}data/{key}', n),
        map_location, where)
    return _run_pickle(io.BytesIO(data), len(data), where, storages)


# --- the legacy format -------------------------------------------------------

def _load_legacy(handle, size, where, map_location):
    pending = {}

    def later(key, nbytes):
        # the storages follow this pickle: what they announce must fit in
        # the bytes left, before anything is allocated for them
        announced = nbytes + sum(map(len, pending.values()))
        if announced > size - handle.tell():
            raise TruncatedError(
                f'{where} is truncated: its tensors announce {announced:,} '
                f'bytes of storage, the file has {size - handle.tell():,} '
                'left (an interrupted save or download?)')
        pending[key] = data = _buffer(nbytes)
        return data

    handle.seek(0)
    try:  # the magic number: a plain int, nothing named
        magic = Machine({}, None, where).load(handle, size)
    except (UnsafeCheckpointError, MalformedPickleError) as err:
        if isinstance(err, TruncatedError):
            raise
        magic = None
    if magic != _LEGACY_MAGIC:
        raise CheckpointFileError(f'{where} is not a PyTorch checkpoint (neither '
                             'a zip nor a legacy torch file)')
    version, info = (_run_pickle(handle, size, where) for _ in range(2))
    if version != _LEGACY_VERSION or not isinstance(info, dict) or \
            info.get('little_endian') is not True:
        raise CheckpointFileError(
            f'{where}: a legacy torch file of protocol {version!r} or from '
            'a big-endian machine; re-save it with a current torch')
    # storages are filled after the main pickle: its tensors share them
    storages = _Storages(later, 'cpu', where, legacy=True)
    value = _run_pickle(handle, size, where, storages)
    keys = _run_pickle(handle, size, where)
    if type(keys) is not list or sorted(keys) != sorted(pending):
        raise MalformedPickleError(
            f'{where}: its storage list does not match its tensors')
    for key in keys:
        data = pending[key]
        raw = handle.read(8)
        if len(raw) < 8:
            raise TruncatedError(f'{where} is truncated: storage {key} is '
                                 'missing')
        numel = struct.unpack('<q', raw)[0]
        if numel * storages.by_key[key].dtype.itemsize != len(data):
            raise MalformedPickleError(
                f'{where}: storage {key} announces two sizes')
        if not _fill(handle, data):
            raise TruncatedError(f'{where} is truncated in storage {key} '
                                 '(an interrupted save or download?)')
    if handle.tell() != size:
        raise CheckpointFileError(
            f'{where}: {size - handle.tell():,} bytes follow the legacy '
            'checkpoint\'s data; refusing a file that reads two ways')
    if map_location not in (None, 'cpu') and storages.by_key:
        restore = _restore(map_location)
        moved = {}
        for key, storage in storages.by_key.items():
            moved[id(storage.untyped)] = restore(storage.untyped, 'cpu')
        value = _move(value, moved)
    return value


def _move(value, moved):
    """Tensors of ``value`` on the storages ``map_location`` moved (legacy
    files only, which torch maps before filling); each container once."""
    def moved_tensor(item):
        if isinstance(item, torch.Tensor):
            target = moved.get(id(item.untyped_storage()))
            return item if target is None else item.to(target.device)
        return item

    seen, todo = set(), [value]
    while todo:
        node = todo.pop()
        if id(node) in seen or not isinstance(node, (dict, list)):
            continue
        seen.add(id(node))
        keys = list(node) if isinstance(node, dict) else range(len(node))
        for key in keys:
            node[key] = moved_tensor(node[key])
            todo.append(node[key])
    return moved_tensor(value)


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
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
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
            archive = _zip_layout(handle, size, path)[0]
            archive.close()
            return True
    except (ValueError, pickle.UnpicklingError, OSError, MemoryError):
        return False
