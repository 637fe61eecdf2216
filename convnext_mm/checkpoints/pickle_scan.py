"""Bound the time and memory a checkpoint can cost before it is unpickled.

torch's weights-only unpickler decides *what* a pickle may build; it does not
bound *how much work* building it takes. Three cheap file-level checks close
that gap, each reading no more than the archive's directory and its pickles:

- a zip record that inflates far beyond its stored size (a deflate bomb;
  ``torch.save`` never compresses) is refused before anything is inflated;
- a pickle of more than :data:`MAX_PICKLE_OPS` opcodes is refused;
- a pickle that inserts more than :data:`MAX_COMPOSITE_KEYS` dict keys or set
  members other than strings, bytes and small integers is refused. Those are
  the only keys whose hashes a file cannot choose: with tuples, floats or
  large integers it can make every key collide and dict insertion quadratic
  (an 840 KB file then costs minutes of CPU). mmengine and torch checkpoints
  key by strings and small integers only.

The pickles are walked with :func:`pickletools.genops`, which decodes opcodes
without building anything, tracking only what kind of value each stack slot
holds.
"""
import pickletools
import tarfile
import zipfile
from typing import BinaryIO, List, Optional

MAX_PICKLE_OPS = 10_000_000
MAX_PICKLE_BYTES = 1 << 30
MAX_COMPOSITE_KEYS = 10_000
MAX_INFLATION = 20  # uncompressed / compressed size of one zip record
_SMALL_INT = (1 << 61) - 1  # ints below this hash to distinct values
# constructors that hash the items of the container they are given
_HASHING_CALLS = {
    'builtins.set', 'builtins.frozenset', 'builtins.dict',
    'collections.Counter', 'collections.OrderedDict',
    'collections.defaultdict', '__builtin__.set', '__builtin__.frozenset'
}
_LEGACY_PICKLES = 5
# the other opcodes: (values popped, values pushed), none a safe key
_POPS_PUSHES = {
    'BINPERSID': (1, 1), 'PERSID': (0, 1), 'BUILD': (1, 0), 'POP': (1, 0),
    'NEWOBJ_EX': (3, 1), 'EXT1': (0, 1), 'EXT2': (0, 1), 'EXT4': (0, 1),
    'BINFLOAT': (0, 1), 'FLOAT': (0, 1), 'EMPTY_DICT': (0, 1),
    'EMPTY_SET': (0, 1), 'BYTEARRAY8': (0, 1), 'NEXT_BUFFER': (0, 1),
    'READONLY_BUFFER': (1, 1)
}  # magic, protocol, sys info, object, storage keys


class CheckpointTooCostlyError(ValueError):
    """A checkpoint whose loading would cost unbounded time or memory."""


class MalformedPickleError(ValueError):
    """Bytes that are not a pickle stream."""


class _Slot:
    """What the scan knows of one stack entry."""
    __slots__ = ('safe_key', 'name', 'items')

    def __init__(self, safe_key=False, name=None):
        self.safe_key = safe_key  # hashes cannot be chosen by the file
        self.name = name  # 'module.name' of a GLOBAL
        self.items = None  # for lists/tuples: slots of the direct children

    def unsafe_items(self) -> int:
        """Children, and children of child lists/tuples (``set([...])`` is
        called with a tuple of one list), that are not safe keys. One level
        only: a list may contain itself."""
        count = 0
        for item in self.items or ():
            for leaf in (item, ) if item.items is None else item.items:
                count += not leaf.safe_key
        return count


def _seq(items) -> _Slot:
    slot = _Slot()
    slot.items = list(items)
    return slot


_MARK = _Slot()


def scan_pickle(stream, where: str) -> None:
    """Walk one pickle (bytes or a binary file positioned at it) and raise
    :class:`CheckpointTooCostlyError` if it is too costly to build."""
    stack: List[_Slot] = []
    memo = {}
    risky_keys = 0

    def pop_mark():
        items = []
        while stack:
            top = stack.pop()
            if top is _MARK:
                return items[::-1]
            items.append(top)
        return items[::-1]

    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(stream)):
            if count >= MAX_PICKLE_OPS:
                raise CheckpointTooCostlyError(
                    f'{where}: the pickle has more than {MAX_PICKLE_OPS:,} '
                    'opcodes, beyond any model checkpoint; refusing to load '
                    'it')
            name = op.name
            if name == 'MARK':
                stack.append(_MARK)
            elif name in ('BINUNICODE', 'SHORT_BINUNICODE', 'BINUNICODE8',
                          'UNICODE', 'SHORT_BINSTRING', 'BINSTRING',
                          'STRING', 'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8',
                          'NONE', 'NEWTRUE', 'NEWFALSE', 'BININT1',
                          'BININT2'):
                stack.append(_Slot(safe_key=True))
            elif name in ('BININT', 'INT', 'LONG', 'LONG1', 'LONG4'):
                small = isinstance(arg, int) and abs(arg) < _SMALL_INT
                stack.append(_Slot(safe_key=small))
            elif name in ('GLOBAL', 'STACK_GLOBAL', 'INST'):
                if name == 'STACK_GLOBAL':
                    del stack[-2:]
                    arg = None
                elif name == 'INST':
                    pop_mark()
                stack.append(
                    _Slot(name=arg.replace(' ', '.') if arg else None))
            elif name == 'EMPTY_LIST' or name == 'EMPTY_TUPLE':
                stack.append(_seq(()))
            elif name in ('TUPLE', 'LIST'):
                stack.append(_seq(pop_mark()))
            elif name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
                n = int(name[-1])
                if n > len(stack):
                    raise IndexError(name)
                items, stack[-n:] = stack[-n:], []
                stack.append(_seq(items))
            elif name == 'APPEND':
                item = stack.pop()
                if stack and stack[-1].items is not None:
                    stack[-1].items.append(item)
            elif name == 'APPENDS':
                items = pop_mark()
                if stack and stack[-1].items is not None:
                    stack[-1].items.extend(items)
            elif name == 'SETITEM':
                del stack[-1]
                risky_keys += int(not stack.pop().safe_key)
            elif name in ('SETITEMS', 'ADDITEMS', 'DICT', 'FROZENSET'):
                items = pop_mark()
                keys = items[::2] if name in ('SETITEMS', 'DICT') else items
                risky_keys += sum(not k.safe_key for k in keys)
                if name in ('DICT', 'FROZENSET'):
                    stack.append(_Slot())
            elif name in ('REDUCE', 'NEWOBJ'):
                args = stack.pop()
                func = stack.pop()
                if func.name in _HASHING_CALLS:
                    risky_keys += args.unsafe_items()
                stack.append(_Slot())
            elif name in ('BINPUT', 'LONG_BINPUT', 'PUT'):
                memo[arg] = stack[-1]
            elif name == 'MEMOIZE':
                memo[len(memo)] = stack[-1]
            elif name in ('BINGET', 'LONG_BINGET', 'GET'):
                stack.append(memo.get(arg, _Slot()))
            elif name in ('OBJ', 'POP_MARK'):
                pop_mark()
                if name == 'OBJ':
                    stack.append(_Slot())
            elif name == 'DUP':
                stack.append(stack[-1])
            elif name in _POPS_PUSHES:
                pops, pushes = _POPS_PUSHES[name]
                if pops > len(stack):
                    raise IndexError(name)
                del stack[len(stack) - pops:]
                stack.extend(_Slot() for _ in range(pushes))
            elif name == 'STOP':
                break
            # PROTO, FRAME and anything else do not touch the stack
            if risky_keys > MAX_COMPOSITE_KEYS:
                raise CheckpointTooCostlyError(
                    f'{where}: the pickle inserts more than '
                    f'{MAX_COMPOSITE_KEYS:,} dict keys or set members that '
                    'are not strings or small integers; such keys can be '
                    'made to collide so that loading takes hours, and no '
                    'model checkpoint has them. Refusing to load it')
    except CheckpointTooCostlyError:
        raise
    except (ValueError, IndexError, KeyError, EOFError) as err:
        raise MalformedPickleError(
            f'{where}: malformed pickle ({type(err).__name__}: {err})'
        ) from None


def _zip_pickles(file: BinaryIO, where: str) -> List[bytes]:
    with zipfile.ZipFile(file) as archive:
        pickles = []
        for info in archive.infolist():
            stored = max(info.compress_size, 1)
            if info.compress_type != zipfile.ZIP_STORED and \
                    info.file_size > max(MAX_INFLATION * stored, 1 << 20):
                raise CheckpointTooCostlyError(
                    f'{where}: record {info.filename} is compressed '
                    f'{info.compress_size:,} -> {info.file_size:,} bytes '
                    f'(over {MAX_INFLATION}x; torch.save never compresses): '
                    'a decompression bomb. Refusing to load it')
            if info.filename.endswith('.pkl'):
                if info.file_size > MAX_PICKLE_BYTES:
                    raise CheckpointTooCostlyError(
                        f'{where}: {info.filename} is a '
                        f'{info.file_size:,}-byte pickle, beyond any model '
                        'checkpoint. Refusing to load it')
                with archive.open(info) as member:
                    pickles.append(member.read(MAX_PICKLE_BYTES + 1))
        return pickles


def check_cost(file, where: Optional[str] = None) -> None:
    """Refuse a checkpoint (path or seekable binary file) whose loading would
    cost unbounded time or memory; leave the file position where it was."""
    where = where or str(file)
    opened = not hasattr(file, 'read')
    handle = open(file, 'rb') if opened else file
    start = handle.tell()
    try:
        if zipfile.is_zipfile(handle):
            handle.seek(start)
            for data in _zip_pickles(handle, where):
                scan_pickle(data, where)
            return
        handle.seek(start)
        if tarfile.is_tarfile(handle):
            return  # torch's weights-only loader refuses the tar format
        # torch's legacy (non-zip) format: a few pickles in a row, then raw
        # storage bytes
        handle.seek(start)
        for _ in range(_LEGACY_PICKLES):
            scan_pickle(handle, where)
    finally:
        if opened:
            handle.close()
        else:
            handle.seek(start)
