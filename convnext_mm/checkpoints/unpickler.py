"""A pickle reader that builds plain data, never what a file names.

Python's own pure-Python unpickler (``pickle._Unpickler``, whose opcodes
build only strings, numbers, tuples and lists) runs the pickle, with every
opcode that calls, hashes or allocates replaced: a name is looked up in our
vocabulary, never in a module; REDUCE and NEWOBJ call our builders; BUILD
finishes only our :class:`Pending` values; dict keys and set members are
counted before they are hashed; an announced length is checked against the
bytes left before it is read; opcodes that build objects any other way are
refused. Shared values are visited once (time linear in the pickle). What is
read, refused and bounded: docs/security.md.
"""
import argparse
import functools
import pickle
import pickletools
import struct
from collections import OrderedDict
from typing import Callable, Dict, Optional, Tuple

from ..errors import (CheckpointTooCostlyError, MalformedPickleError,
                      TruncatedError, UnsafeCheckpointError)

MAX_PICKLE_OPS = 10_000_000
MAX_DEPTH = 100
MAX_COMPOSITE_KEYS = 10_000
# elements hashed for tuple keys, counted as hashing visits them (a tuple's
# hash is not cached: one that holds another many times over hashes it each
# time)
MAX_HASHED_ELEMENTS = 1_000_000
_SMALL_INT = (1 << 61) - 1  # ints below this hash to distinct values
# Python 2 names that protocol-2 pickles use (pickle's fix_imports)
_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}
_REFUSED_BY_NAME = (
    'the checkpoint names it, and it is neither tensors, plain Python '
    'containers, numpy arrays nor mmengine training state; building it '
    'could run arbitrary code')


class Internal:
    """A value only the reader uses while it reads (vocabulary entries,
    storages, unfinished objects); one left in the result is refused."""
    __slots__ = ()


class Call(Internal):
    """A vocabulary entry for REDUCE: ``func(*args)`` with our ``func``;
    ``hashed(args)``, when given, yields what ``func`` will hash (a set's
    items, a dict's keys), counted against the key bounds first."""

    def __init__(self, name: str, func: Callable,
                 hashed: Optional[Callable] = None):
        self.name, self.func, self.hashed = name, func, hashed


class New(Call):
    """A vocabulary entry for NEWOBJ: ``func(*args)`` builds the instance."""


class Refused(Internal):
    """A vocabulary entry that names what it is and why it is not read."""

    def __init__(self, why: str):
        self.why = why


class Pending(Internal):
    """A value that becomes whole on BUILD: ``build(state)`` returns it, and
    the memo hands out the built value from then on. One never built is
    refused when the pickle ends."""
    built = None

    def build(self, state):  # pragma: no cover - interface
        raise NotImplementedError


def _is_safe_key(key) -> bool:
    """Keys whose hashes a file cannot choose: str and bytes (hashing is
    salted per process), small ints, None, bools."""
    return key is None or key is True or key is False or type(key) in (
        str, bytes) or (type(key) is int and -_SMALL_INT < key < _SMALL_INT)


class _Reader:
    """``read``/``readline`` over a bounded window of a file, refusing any
    read past it before allocating."""

    def __init__(self, stream, end: int, where: str):
        self.stream, self.end, self.where = stream, end, where

    def read(self, n):
        left = self.end - self.stream.tell()
        if n > left:
            raise TruncatedError(
                f'{self.where} is truncated: ' + (
                    'its pickle ends before STOP' if left == 0 else
                    f'a value announces {n:,} bytes but only {left:,} '
                    'remain') + ' (an interrupted save or download?)')
        return self.stream.read(n)

    def readline(self):
        left = self.end - self.stream.tell()
        line = self.stream.readline(min(left, 1 << 20))
        if not line.endswith(b'\n'):
            raise MalformedPickleError(
                f'{self.where}: a text opcode has no end of line within '
                f'{len(line):,} bytes')
        return line


class _Memo:
    """The pickle's memo: a list while its keys come in order, as picklers
    write them (a dict of a million int keys costs ten times the memory),
    and a dict for any other key. A :class:`Pending` value is handed out
    as what it built."""
    __slots__ = ('dense', 'sparse')

    def __init__(self):
        self.dense, self.sparse = [], {}

    def __len__(self):
        return len(self.dense) + len(self.sparse)

    def __getitem__(self, key):
        value = self.dense[key] if 0 <= key < len(self.dense) else \
            self.sparse[key]
        return value.built if isinstance(value, Pending) and \
            value.built is not None else value

    def __setitem__(self, key, value):
        if key == len(self.dense):
            self.dense.append(value)
            self.sparse.pop(key, None)
        elif 0 <= key < len(self.dense):
            self.dense[key] = value
        else:
            self.sparse[key] = value


_FILLED = {pickle.APPEND: (list, 1), pickle.APPENDS: (list, None),
           pickle.SETITEM: (dict, 2), pickle.SETITEMS: (dict, None),
           pickle.ADDITEMS: (set, None)}
# opcodes never needed to rebuild plain data: INST, OBJ, EXT1/2/4,
# NEXT_BUFFER, READONLY_BUFFER (and anything newer: not in the table)
_REFUSED_OPS = (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2,
                pickle.EXT4, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER)


class Machine(pickle._Unpickler):
    """One pickle's run: ``Machine(vocabulary, persistent_load).load(...)``.

    ``vocabulary`` maps ``'module.name'`` to a :class:`Call`, a :class:`New`
    or a constant pushed as it is; ``persistent_load(pid)`` turns a
    persistent id (already plain data) into a value.
    """
    dispatch = {code: op for code, op in pickle._Unpickler.dispatch.items()
                if bytes([code]) not in _REFUSED_OPS}

    def __init__(self, vocabulary: Dict[str, object],
                 persistent_load: Optional[Callable] = None,
                 where: str = 'the checkpoint'):
        self.vocabulary, self.pid_loader = vocabulary, persistent_load
        self.where = where
        self.risky_keys = self.hashed_elements = 0

    def unsafe(self, what: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(f'{self.where}: refusing to load it: '
                                     f'{what}')

    def malformed(self, what: str) -> MalformedPickleError:
        return MalformedPickleError(f'{self.where}: malformed pickle '
                                    f'({what})')

    def costly(self, what: str) -> CheckpointTooCostlyError:
        return CheckpointTooCostlyError(
            f'{self.where}: {what}; no model checkpoint has such a pickle. '
            'Refusing to load it')

    def load(self, stream, end: int):
        """Run the pickle that starts at ``stream``'s position and must end
        by ``end``; return its value (whole, plain, acyclic)."""
        super().__init__(_Reader(stream, end, self.where), encoding='latin1')
        self.memo = _Memo()
        self._unframer = pickle._Unframer(self._file_read,
                                          self._file_readline)
        self.read, self.readline = self._unframer.read, self._unframer.readline
        self.stack, self.metastack = [], []
        self.append = self.stack.append
        try:
            for _ in range(MAX_PICKLE_OPS):
                code = self.read(1)[0]
                op = self.dispatch.get(code)
                if op is None:
                    name = pickletools.code2op.get(chr(code))
                    raise self.unsafe('the pickle opcode ' + (
                        name.name if name else f'{code:#04x}'))
                op(self)
            raise self.costly(f'the pickle has more than {MAX_PICKLE_OPS:,} '
                              'opcodes')
        except pickle._Stop as stop:
            if self.stack or self.metastack:
                raise self.malformed('values left on the stack') from None
            return self.finish(stop.value)
        except (UnsafeCheckpointError, MalformedPickleError,
                CheckpointTooCostlyError):
            raise
        except (pickle.UnpicklingError, ValueError, OverflowError,
                UnicodeError, IndexError, KeyError, TypeError, EOFError,
                AttributeError, struct.error) as err:
            raise self.malformed(
                'stack underflow or no MARK' if isinstance(err, IndexError)
                else f'{type(err).__name__}: {str(err)[:200]}') from None

    def find_class(self, module, name):
        full = f'{_PY2_MODULES.get(module, module)}.{name}'
        if full not in self.vocabulary:
            raise UnsafeCheckpointError(f'{self.where}: refusing to load '
                                        f'{full[:200]}: {_REFUSED_BY_NAME}')
        entry = self.vocabulary[full]
        if isinstance(entry, Refused):
            raise UnsafeCheckpointError(f'{self.where}: {entry.why}')
        return entry

    def persistent_load(self, pid):
        if self.pid_loader is None:
            raise self.unsafe('a persistent id outside a torch file')
        return self.pid_loader(pid)

    def check_key(self, key):
        """Count a dict key or set member whose hash the file can choose,
        then hash it."""
        if not _is_safe_key(key):
            self.risky_keys += 1
            if self.risky_keys > MAX_COMPOSITE_KEYS:
                raise self.costly(
                    f'the pickle inserts more than {MAX_COMPOSITE_KEYS:,} '
                    'dict keys or set members that are not strings or small '
                    'integers; such keys can be made to collide so that '
                    'loading takes hours')
            visits, depth = _hash_cost(key)
            if depth > MAX_DEPTH:
                raise self.costly(
                    'a dict key or set member whose values nest more than '
                    f'{MAX_DEPTH} levels deep (hashing it recurses)')
            self.hashed_elements += visits
            if self.hashed_elements > MAX_HASHED_ELEMENTS:
                raise self.costly(
                    'hashing its dict keys or set members would visit more '
                    f'than {MAX_HASHED_ELEMENTS:,} values (tuples that hold '
                    'other tuples many times over: hours of hashing in a '
                    'file of a few hundred bytes)')
        try:
            hash(key)
        except TypeError:
            raise self.malformed(f'a {type(key).__name__} used as a dict key '
                                 'or set member') from None

    def fill(self, target, kind, items):
        """Add ``items`` to ``target`` as APPEND(S), SETITEM(S) and
        ADDITEMS do (``kind``: list, dict or set); return it."""
        if not isinstance(target, kind):
            raise self.malformed(f'adding {kind.__name__} items to a '
                                 f'{type(target).__name__}')
        if kind is list:
            target.extend(items)
        elif kind is set:
            for item in items:
                self.check_key(item)
            target.update(items)
        elif len(items) % 2:
            raise self.malformed('odd dict items')
        else:
            for key, value in zip(items[::2], items[1::2]):
                self.check_key(key)
                target[key] = value  # one by one: a Counter's update counts
        return target

    def call(self, entry, args, opcode):
        if not isinstance(entry, Call) or \
                isinstance(entry, New) != (opcode == 'NEWOBJ'):
            name = getattr(entry, 'name', type(entry).__name__)
            raise self.unsafe(f'{opcode} on {name}')
        if type(args) is not tuple:
            raise self.malformed(f'{opcode} arguments are a '
                                 f'{type(args).__name__}, not a tuple')
        if any(isinstance(a, Pending) for a in args):
            raise self.unsafe('an unfinished object passed as an argument')
        try:
            for key in entry.hashed(args) if entry.hashed else ():
                self.check_key(key)
            return entry.func(*args)
        except TypeError as err:
            raise self.malformed(f'{entry.name}: {err}') from None
        except (UnsafeCheckpointError, ValueError, OverflowError,
                RuntimeError) as err:
            if isinstance(err, (CheckpointTooCostlyError,
                                MalformedPickleError)):
                raise
            # the builder would not build what the file asks for
            raise self.unsafe(f'{entry.name}: {err}') from None

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args, 'REDUCE')
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self, kwargs=None):
        args = self.stack.pop()
        if kwargs not in (None, {}):
            raise self.unsafe('NEWOBJ_EX with keyword arguments')
        self.stack[-1] = self.call(self.stack[-1], args, 'NEWOBJ')
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        self.load_newobj(self.stack.pop())
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self):
        """BUILD: a state dict's ``_metadata`` on an OrderedDict, or the
        state that finishes one of our :class:`Pending` values."""
        state, target = self.stack.pop(), self.stack[-1]
        if type(target) is OrderedDict:
            return self.set_metadata(target, state)
        if not isinstance(target, Pending) or target.built is not None:
            raise self.unsafe(f'BUILD (setting state) on a '
                              f'{type(target).__name__}')
        try:
            target.built = self.stack[-1] = target.build(state)
        except UnsafeCheckpointError as err:
            raise self.unsafe(str(err)) from None
        except TypeError as err:
            raise self.malformed(str(err)) from None
    dispatch[pickle.BUILD[0]] = load_build

    def load_filled(self, kind, count):
        items = self.pop_mark() if count is None else self.stack[-count:]
        if count is not None:
            del self.stack[-count:]
        self.fill(self.stack[-1], kind, items)

    def load_dict(self):
        items = self.pop_mark()  # before self.append: it changes it
        self.append(self.fill({}, dict, items))
    dispatch[pickle.DICT[0]] = load_dict

    def load_frozenset(self):
        items = self.pop_mark()
        self.append(frozenset(self.fill(set(), set, items)))
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def load_bytearray8(self):
        self.load_binbytes8()
        self.stack[-1] = bytearray(self.stack[-1])
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def set_metadata(self, target, state):
        """BUILD on an OrderedDict: only the ``_metadata`` of a module's
        state dict (module name -> {'version': int, ...}), which
        ``load_state_dict`` reads."""
        metadata = state.get('_metadata') if isinstance(state, dict) else None
        if not isinstance(state, dict) or set(state) != {'_metadata'} or \
                not isinstance(metadata, dict) or \
                not all(isinstance(k, str) and isinstance(v, dict) and all(
                    isinstance(n, str) and (x is None or type(x) in (
                        int, str, bool)) for n, x in v.items())
                        for k, v in metadata.items()):
            raise self.unsafe('BUILD (setting state) on an OrderedDict '
                              "beyond a state dict's _metadata")
        target._metadata = metadata

    def finish(self, value):
        """Refuse cycles, unfinished values and nesting past the bound, by
        an iterative walk (no recursion a file can exhaust) that visits each
        object once: a value whose containers share children many times
        over is walked in the time of its size in the file."""
        height: Dict[int, int] = {}  # finished containers: levels below
        path = set()
        todo = [(value, False)]
        while todo:
            node, leaving = todo.pop()
            if isinstance(node, Internal):
                raise self.unsafe(
                    'an object whose state was never set' if isinstance(
                        node, Pending) else 'a bare storage or global as a '
                    'value')
            if not isinstance(node, _CONTAINERS):
                continue
            key = id(node)
            if leaving:
                path.discard(key)
                below = max((height.get(id(c), 0) for c in _children(node)),
                            default=0)
                if below >= MAX_DEPTH:
                    raise self.costly(f'values nest more than {MAX_DEPTH} '
                                      'levels deep')
                height[key] = below + 1
            elif key not in height:
                if key in path:
                    raise self.malformed('a container that contains itself')
                path.add(key)
                todo.append((node, True))
                todo.extend((child, False) for child in _children(node))
        return value


Machine.dispatch.update({code[0]: functools.partial(
    Machine.load_filled, kind=kind, count=count)
    for code, (kind, count) in _FILLED.items()})
_CONTAINERS = (dict, list, tuple, set, frozenset, argparse.Namespace)


def _children(node):
    if isinstance(node, argparse.Namespace):
        node = vars(node)
    if isinstance(node, dict):
        yield from node.keys()
        yield from node.values()
    else:
        yield from node


def _hash_cost(key) -> Tuple[int, int]:
    """What hashing ``key`` costs: the values it visits (a tuple visits its
    items every time its hash is taken; anything else hashes once, a
    frozenset caching its hash) and how deep its tuples nest (the hash
    recurses; past :data:`MAX_DEPTH` the walk stops), in time linear in the
    number of tuples."""
    cost: Dict[int, Tuple[int, int]] = {}  # id -> (visits, depth)
    todo = [(key, False, 1)]
    while todo:
        node, leaving, level = todo.pop()
        if type(node) is not tuple or id(node) in cost:
            continue
        if leaving:
            below = [cost[id(c)] for c in node if type(c) is tuple]
            cost[id(node)] = (
                1 + sum(v for v, _ in below) + len(node) - len(below),
                1 + max((d for _, d in below), default=0))
            continue
        if level > MAX_DEPTH:
            return 1, level
        todo.append((node, True, level))
        todo.extend((c, False, level + 1) for c in node)
        if len(todo) > 4 * MAX_HASHED_ELEMENTS:
            return MAX_HASHED_ELEMENTS + 1, 0
    return cost.get(id(key), (1, 0))
