"""A pickle reader that builds plain data, never what a file names.

Unlike torch's weights-only unpickler (CPython's, with a filtered
``find_class``: what it admits is still called with the file's arguments),
this machine decodes opcodes with :func:`pickletools.genops`, which builds
nothing, every announced length checked against the bytes left; makes
containers, strings and numbers itself and every other value through a
vocabulary entry of ours chosen by name (no name is looked up in a module);
accepts BUILD only on our own :class:`Pending` values; and bounds opcodes,
nesting, hashing and chosen-hash keys in time linear in the pickle (shared
values are visited once). What is read, refused and bounded:
docs/security.md.
"""
import pickletools
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

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
    """A value that becomes whole on BUILD: ``build(state)`` returns it.
    One never built is refused when the pickle ends."""

    def build(self, state):  # pragma: no cover - interface
        raise NotImplementedError


def _is_safe_key(key) -> bool:
    """Keys whose hashes a file cannot choose: str and bytes (hashing is
    salted per process), small ints, None, bools."""
    return key is None or key is True or key is False or type(key) in (
        str, bytes) or (type(key) is int and -_SMALL_INT < key < _SMALL_INT)


class _Reader:
    """``read``/``readline`` over a bounded window of a file, refusing any
    read past it before allocating (pickletools reads what an opcode
    announces)."""

    def __init__(self, stream, end: int, where: str):
        self.stream, self.end, self.where = stream, end, where

    def read(self, n=-1):
        left = self.end - self.stream.tell()
        if n > left:
            raise TruncatedError(
                f'{self.where} is truncated: a value announces {n:,} bytes '
                f'but only {left:,} remain (an interrupted save or '
                'download?)')
        return self.stream.read(left if n < 0 else n)

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
    and a dict for any other key."""
    __slots__ = ('dense', 'sparse')

    def __init__(self):
        self.dense, self.sparse = [], {}

    def __len__(self):
        return len(self.dense) + len(self.sparse)

    def get(self, key, default=None):
        return self.dense[key] if 0 <= key < len(self.dense) else \
            self.sparse.get(key, default)

    def __setitem__(self, key, value):
        if key == len(self.dense):
            self.dense.append(value)
            self.sparse.pop(key, None)
        elif 0 <= key < len(self.dense):
            self.dense[key] = value
        else:
            self.sparse[key] = value


_MISSING = Internal()
_AS_IS = {'INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4',
          'FLOAT', 'BINFLOAT', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE',
          'BINUNICODE8', 'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8'}
_CONSTANTS = {'NONE': None, 'NEWTRUE': True, 'NEWFALSE': False}
_TEXT = {'STRING', 'BINSTRING', 'SHORT_BINSTRING'}  # protocol 0-2 str
_EMPTY = {'EMPTY_DICT': dict, 'EMPTY_LIST': list, 'EMPTY_TUPLE': tuple,
          'EMPTY_SET': set}
_FROM_MARK = {'TUPLE', 'LIST', 'FROZENSET', 'DICT'}
_MEMO_PUT = {'PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE'}
_MEMO_GET = {'GET', 'BINGET', 'LONG_BINGET'}
_ADD = {'APPEND': list, 'APPENDS': list, 'SETITEM': dict, 'SETITEMS': dict,
        'ADDITEMS': set}


class Machine:
    """One pickle's run: ``Machine(vocabulary, persistent_load).load(...)``.

    ``vocabulary`` maps ``'module.name'`` to a :class:`Call`, a :class:`New`
    or a constant pushed as it is; ``persistent_load(pid)`` turns a
    persistent id (already plain data) into a value.
    """

    def __init__(self, vocabulary: Dict[str, Any],
                 persistent_load: Optional[Callable] = None,
                 where: str = 'the checkpoint'):
        self.vocabulary = vocabulary
        self.persistent_load = persistent_load
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
        ADDITEMS do (``kind``: list, dict or set)."""
        if not isinstance(target, kind):
            raise self.malformed(f'adding {kind.__name__} items to a '
                                 f'{type(target).__name__}')
        if kind is list:
            target.extend(items)
        elif kind is set:
            for item in items:
                self.check_key(item)
                target.add(item)
        else:
            if len(items) % 2:
                raise self.malformed('odd dict items')
            for key, value in zip(items[::2], items[1::2]):
                if isinstance(key, Pending) or isinstance(value, Pending):
                    raise self.unsafe('an unfinished object used as a value')
                self.check_key(key)
                target[key] = value
        return target

    def resolve_global(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.malformed('STACK_GLOBAL of non-strings')
        full = f'{_PY2_MODULES.get(module, module)}.{name}'
        entry = self.vocabulary.get(full, _MISSING)
        if entry is _MISSING:
            raise UnsafeCheckpointError(f'{self.where}: refusing to load '
                                        f'{full[:200]}: {_REFUSED_BY_NAME}')
        if isinstance(entry, Refused):
            raise UnsafeCheckpointError(f'{self.where}: {entry.why}')
        return entry

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

    def build(self, stack, state, memo, pending_keys):
        """BUILD: a state dict's ``_metadata`` on an OrderedDict, or the
        state that finishes one of our :class:`Pending` values."""
        if stack and type(stack[-1]) is OrderedDict:
            self.set_metadata(stack[-1], state)
            return
        if not stack or not isinstance(stack[-1], Pending):
            target = type(stack[-1]).__name__ if stack else None
            raise self.unsafe(f'BUILD (setting state) on a {target}')
        pending = stack[-1]
        try:
            stack[-1] = pending.build(state)
        except UnsafeCheckpointError as err:
            raise self.unsafe(str(err)) from None
        except TypeError as err:
            raise self.malformed(str(err)) from None
        for key in pending_keys.pop(id(pending), ()):
            if memo.get(key) is pending:
                memo[key] = stack[-1]

    def load(self, stream, end: int):
        """Run the pickle that starts at ``stream``'s position and must end
        by ``end``; return its value (whole, plain, acyclic)."""
        stack, metastack, memo = [], [], _Memo()
        pending_keys: Dict[int, list] = {}  # memo keys holding a Pending

        def pop(n=None):
            if len(stack) < (n or 1):
                raise self.malformed('stack underflow')
            if n is None:
                return stack.pop()
            items = stack[len(stack) - n:]
            del stack[len(stack) - n:]
            return items

        def pop_mark():
            nonlocal stack
            if not metastack:
                raise self.malformed('no MARK')
            items, stack = stack, metastack.pop()
            return items

        try:
            ops = pickletools.genops(_Reader(stream, end, self.where))
            for count, (op, arg, _) in enumerate(ops):
                if count >= MAX_PICKLE_OPS:
                    raise self.costly(f'the pickle has more than '
                                      f'{MAX_PICKLE_OPS:,} opcodes')
                name = op.name
                if name in _AS_IS:
                    stack.append(arg)
                elif name in _MEMO_GET:
                    value = memo.get(int(arg), _MISSING)
                    if value is _MISSING:
                        raise self.malformed(f'memo {arg} was never set')
                    stack.append(value)
                elif name in _MEMO_PUT:
                    if not stack:
                        raise self.malformed('stack underflow')
                    key = len(memo) if name == 'MEMOIZE' else int(arg)
                    memo[key] = stack[-1]
                    if isinstance(stack[-1], Pending):
                        pending_keys.setdefault(id(stack[-1]), []).append(key)
                elif name in _CONSTANTS:
                    stack.append(_CONSTANTS[name])
                elif name in _TEXT:
                    stack.append(arg.decode('latin-1') if isinstance(
                        arg, bytes) else str(arg))
                elif name == 'BYTEARRAY8':
                    stack.append(bytearray(arg))
                elif name in _EMPTY:
                    stack.append(_EMPTY[name]())
                elif name in ('PROTO', 'FRAME'):
                    continue
                elif name == 'MARK':
                    metastack.append(stack)
                    stack = []
                elif name in _FROM_MARK or name in ('TUPLE1', 'TUPLE2',
                                                    'TUPLE3'):
                    items = pop_mark() if name in _FROM_MARK else \
                        pop(int(name[-1]))
                    if any(isinstance(i, Pending) for i in items):
                        raise self.unsafe('an unfinished object in a '
                                          'container')
                    if name in ('LIST', 'DICT'):
                        kind = list if name == 'LIST' else dict
                        stack.append(self.fill(kind(), kind, items))
                    elif name == 'FROZENSET':
                        stack.append(frozenset(self.fill(set(), set, items)))
                    else:
                        stack.append(tuple(items))
                elif name in _ADD:
                    items = pop_mark() if name.endswith('S') else pop(
                        1 if name == 'APPEND' else 2)
                    if not stack:
                        raise self.malformed('stack underflow')
                    self.fill(stack[-1], _ADD[name], items)
                elif name == 'POP':
                    if stack:
                        stack.pop()
                    else:
                        pop_mark()
                elif name == 'POP_MARK':
                    pop_mark()
                elif name == 'DUP':
                    stack.extend(pop(1) * 2)
                elif name == 'GLOBAL':
                    module, _, attr = arg.partition(' ')
                    stack.append(self.resolve_global(module, attr))
                elif name == 'STACK_GLOBAL':
                    module, attr = pop(2)
                    stack.append(self.resolve_global(module, attr))
                elif name in ('REDUCE', 'NEWOBJ'):
                    entry, args = pop(2)
                    stack.append(self.call(entry, args, name))
                elif name == 'NEWOBJ_EX':
                    entry, args, kwargs = pop(3)
                    if kwargs != {}:
                        raise self.unsafe('NEWOBJ_EX with keyword arguments')
                    stack.append(self.call(entry, args, 'NEWOBJ'))
                elif name == 'BUILD':
                    self.build(stack, pop(), memo, pending_keys)
                elif name in ('BINPERSID', 'PERSID'):
                    pid = pop() if name == 'BINPERSID' else arg
                    if self.persistent_load is None:
                        raise self.unsafe('a persistent id outside a '
                                          'torch file')
                    stack.append(self.persistent_load(pid))
                elif name == 'STOP':
                    value = pop()
                    if stack or metastack:
                        raise self.malformed('values left on the stack')
                    return self.finish(value)
                else:
                    # INST, OBJ, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER and
                    # anything newer: never needed to rebuild plain data
                    raise self.unsafe(f'the pickle opcode {name}')
            raise TruncatedError(f'{self.where} is truncated: its pickle '
                                 'ends before STOP')
        except (UnsafeCheckpointError, MalformedPickleError,
                CheckpointTooCostlyError):
            raise
        except (ValueError, OverflowError, UnicodeError, IndexError,
                KeyError) as err:
            text = str(err)
            if 'but only' in text or 'exhausted before' in text or \
                    'remain' in text:
                raise TruncatedError(
                    f'{self.where} is truncated: {text}') from None
            raise self.malformed(f'{type(err).__name__}: '
                                 f'{text[:200]}') from None

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
            if not isinstance(node, (dict, list, tuple, set, frozenset)):
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


def _children(node):
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
