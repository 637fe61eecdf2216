"""A pickle reader that builds plain data, never what a file names.

torch's weights-only unpickler is CPython's unpickler with a filtered
``find_class``: the callables it admits are still called with the file's own
arguments (numpy's array constructor with a dtype the file chooses), BUILD
still sets state on what they return, and nothing bounds nesting or the
lengths a file announces but the C stack and memory. This module is a pickle
machine of our own:

- opcodes are decoded by :func:`pickletools.genops`, which builds nothing;
  every length is checked against the bytes left before it is read;
- containers, strings and numbers are made here; every other value comes
  from a *vocabulary* entry (:class:`Call`, :class:`New` or a constant),
  chosen by the GLOBAL's name from a fixed table, whose function of ours
  checks the arguments and builds the value. No name is ever looked up in a
  module;
- BUILD is accepted only on our own :class:`Pending` values (a numpy array or
  dtype, an mmengine ``HistoryBuffer`` being assembled);
- bounded: opcodes, nesting depth (dict keys before they are hashed,
  everything once the pickle is read), the values hashing keys visits, and
  dict keys or set members whose hash a file can choose (tuples, floats, big
  integers: colliding ones make insertion quadratic). Cycles are refused.
  Each bound is checked in time linear in the pickle: shared values are
  visited once.

What a file can do wrong has three answers: :class:`UnsafeCheckpointError`
(it asks for something we do not build), :class:`CheckpointTooCostlyError`
(over a bound) and :class:`MalformedPickleError` (not a pickle; truncated
ones as :class:`TruncatedError`).
"""
import io
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


class Internal:
    """A value only the reader uses while it reads (vocabulary entries,
    markers, storages, unfinished objects); one left in the result is
    refused."""
    __slots__ = ()


class Call(Internal):
    """A vocabulary entry for REDUCE: ``func(*args)`` with our ``func``.

    ``hashed(args)``, when given, yields what ``func`` will hash (the items
    of a set, the keys of a dict), counted against the key bound first.
    """

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
    """A value that becomes whole on BUILD (numpy arrays and dtypes,
    ``HistoryBuffer``). ``build(state)`` returns the finished value; one that
    is never built is refused when the pickle ends."""

    def build(self, state):  # pragma: no cover - interface
        raise NotImplementedError


def _is_safe_key(key) -> bool:
    """Keys whose hashes a file cannot choose: str and bytes (hashing is
    salted per process), small ints, None, bools."""
    if key is None or key is True or key is False:
        return True
    if type(key) in (str, bytes):
        return True
    return type(key) is int and -_SMALL_INT < key < _SMALL_INT


class _Reader:
    """``read``/``readline`` over a bounded window of a file, refusing any
    read past it before allocating (pickletools reads what an opcode
    announces)."""

    def __init__(self, stream, end: int, where: str):
        self.stream, self.end, self.where = stream, end, where

    def tell(self):
        return self.stream.tell()

    def read(self, n=-1):
        left = self.end - self.stream.tell()
        if n < 0:
            n = left
        if n > left:
            raise TruncatedError(
                f'{self.where} is truncated: a value announces {n:,} bytes '
                f'but only {left:,} remain (an interrupted save or '
                'download?)')
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
    and a dict for any other key."""
    __slots__ = ('dense', 'sparse')

    def __init__(self):
        self.dense, self.sparse = [], {}

    def __len__(self):
        return len(self.dense) + len(self.sparse)

    def __contains__(self, key):
        return 0 <= key < len(self.dense) or key in self.sparse

    def __getitem__(self, key):
        return self.dense[key] if 0 <= key < len(self.dense) else \
            self.sparse[key]

    def get(self, key):
        return self[key] if key in self else None

    def __setitem__(self, key, value):
        if 0 <= key < len(self.dense):
            self.dense[key] = value
        elif key == len(self.dense):
            self.dense.append(value)
            self.sparse.pop(key, None)
        else:
            self.sparse[key] = value


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
        self.risky_keys = 0
        self.hashed_elements = 0

    # --- refusals -----------------------------------------------------------
    def unsafe(self, what: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(f'{self.where}: refusing to load it: '
                                     f'{what}')

    def malformed(self, what: str) -> MalformedPickleError:
        return MalformedPickleError(f'{self.where}: malformed pickle '
                                    f'({what})')

    # --- bounded containers -------------------------------------------------
    def check_key(self, key):
        if not _is_safe_key(key):
            self.risky_keys += 1
            if self.risky_keys > MAX_COMPOSITE_KEYS:
                raise CheckpointTooCostlyError(
                    f'{self.where}: the pickle inserts more than '
                    f'{MAX_COMPOSITE_KEYS:,} dict keys or set members that '
                    'are not strings or small integers; such keys can be '
                    'made to collide so that loading takes hours, and no '
                    'model checkpoint has them. Refusing to load it')
            visits, depth = _hash_cost(key)
            if depth > MAX_DEPTH:
                raise CheckpointTooCostlyError(
                    f'{self.where}: a dict key or set member whose values '
                    f'nest more than {MAX_DEPTH} levels deep, beyond any '
                    'checkpoint (hashing it recurses). Refusing to load it')
            self.hashed_elements += visits
            if self.hashed_elements > MAX_HASHED_ELEMENTS:
                raise CheckpointTooCostlyError(
                    f'{self.where}: hashing its dict keys or set members '
                    f'would visit more than {MAX_HASHED_ELEMENTS:,} values '
                    '(tuples that hold other tuples many times over: hours '
                    'of hashing in a file of a few hundred bytes); no model '
                    'checkpoint has such keys. Refusing to load it')
        try:
            hash(key)
        except TypeError:
            raise self.malformed(
                f'a {type(key).__name__} used as a dict key or set '
                'member') from None

    def setitem(self, target, key, value):
        if not isinstance(target, dict):
            raise self.malformed(
                f'SETITEM on a {type(target).__name__}')
        if isinstance(key, Pending) or isinstance(value, Pending):
            raise self.unsafe('an unfinished object used as a value')
        self.check_key(key)
        target[key] = value

    def add(self, target, item):
        if not isinstance(target, set):
            raise self.malformed(f'ADDITEMS on a {type(target).__name__}')
        self.check_key(item)
        target.add(item)

    def append(self, target, item):
        if not isinstance(target, list):
            raise self.malformed(f'APPEND on a {type(target).__name__}')
        target.append(item)

    # --- the machine --------------------------------------------------------
    def resolve_global(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.malformed('STACK_GLOBAL of non-strings')
        module = _PY2_MODULES.get(module, module)
        full = f'{module}.{name}'
        if full not in self.vocabulary:
            raise UnsafeCheckpointError(
                f'{self.where}: refusing to load {full[:200]}: the checkpoint '
                'names it, and it is neither tensors, plain Python '
                'containers, numpy arrays nor mmengine training state; '
                'building it could run arbitrary code')
        entry = self.vocabulary[full]
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
            value = entry.func(*args)
        except TypeError as err:
            raise self.malformed(f'{entry.name}: {err}') from None
        except UnsafeCheckpointError as err:
            raise self.unsafe(f'{entry.name}: {err}') from None
        except (ValueError, OverflowError, RuntimeError) as err:
            if isinstance(err, (CheckpointTooCostlyError,
                                MalformedPickleError)):
                raise
            # the builder would not build what the file asks for
            raise self.unsafe(f'{entry.name}: {err}') from None
        return value

    def load(self, stream, end: int):
        """Run the pickle that starts at ``stream``'s position and must end
        by ``end``; return its value (whole, plain, acyclic)."""
        reader = _Reader(stream, end, self.where)
        stack, metastack, memo = [], [], _Memo()
        pending_keys: Dict[int, list] = {}  # memo keys holding a Pending

        def top():
            if not stack:
                raise self.malformed('stack underflow')
            return stack[-1]

        def pop():
            top()
            return stack.pop()

        def pop_mark():
            nonlocal stack
            if not metastack:
                raise self.malformed('no MARK')
            items, stack = stack, metastack.pop()
            return items

        try:
            ops = pickletools.genops(reader)
            for count, (op, arg, _) in enumerate(ops):
                if count >= MAX_PICKLE_OPS:
                    raise CheckpointTooCostlyError(
                        f'{self.where}: the pickle has more than '
                        f'{MAX_PICKLE_OPS:,} opcodes, beyond any model '
                        'checkpoint; refusing to load it')
                name = op.name
                if name in ('PROTO', 'FRAME'):
                    continue
                if name == 'STOP':
                    value = pop()
                    if stack or metastack:
                        raise self.malformed('values left on the stack')
                    return self.finish(value)
                if name == 'MARK':
                    metastack.append(stack)
                    stack = []
                elif name in _CONSTANTS:
                    stack.append(_CONSTANTS[name](arg))
                elif name in _CONTAINERS:
                    stack.append(_CONTAINERS[name]())
                elif name in ('TUPLE', 'TUPLE1', 'TUPLE2', 'TUPLE3', 'LIST',
                              'FROZENSET', 'DICT'):
                    if name in ('TUPLE', 'LIST', 'FROZENSET', 'DICT'):
                        items = pop_mark()
                    else:
                        n = int(name[-1])
                        if n > len(stack):
                            raise self.malformed('stack underflow')
                        items = stack[len(stack) - n:]
                        del stack[len(stack) - n:]
                    if any(isinstance(i, Pending) for i in items):
                        raise self.unsafe('an unfinished object in a '
                                          'container')
                    if name == 'LIST':
                        value = []
                        for item in items:
                            self.append(value, item)
                    elif name == 'DICT':
                        if len(items) % 2:
                            raise self.malformed('odd DICT items')
                        value = {}
                        for i in range(0, len(items), 2):
                            self.setitem(value, items[i], items[i + 1])
                    else:
                        if name == 'FROZENSET':
                            for item in items:
                                self.check_key(item)
                        value = (frozenset if name == 'FROZENSET' else
                                 tuple)(items)
                    stack.append(value)
                elif name == 'APPEND':
                    item = pop()
                    self.append(top(), item)
                elif name == 'APPENDS':
                    items = pop_mark()
                    target = top()
                    for item in items:
                        self.append(target, item)
                elif name == 'SETITEM':
                    value, key = pop(), pop()
                    self.setitem(top(), key, value)
                elif name == 'SETITEMS':
                    items = pop_mark()
                    target = top()
                    if len(items) % 2:
                        raise self.malformed('odd SETITEMS items')
                    for i in range(0, len(items), 2):
                        self.setitem(target, items[i], items[i + 1])
                elif name == 'ADDITEMS':
                    items = pop_mark()
                    target = top()
                    for item in items:
                        self.add(target, item)
                elif name == 'POP':
                    if stack:
                        stack.pop()
                    else:
                        pop_mark()
                elif name == 'POP_MARK':
                    pop_mark()
                elif name == 'DUP':
                    stack.append(top())
                elif name in ('PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE'):
                    top()
                    key = len(memo) if name == 'MEMOIZE' else arg
                    if isinstance(key, str):
                        key = int(key)
                    memo[key] = stack[-1]
                    if isinstance(stack[-1], Pending):
                        pending_keys.setdefault(id(stack[-1]), []).append(key)
                elif name in ('GET', 'BINGET', 'LONG_BINGET'):
                    key = int(arg) if isinstance(arg, str) else arg
                    if key not in memo:
                        raise self.malformed(f'memo {key} was never set')
                    stack.append(memo[key])
                elif name == 'GLOBAL':
                    module, _, attr = arg.partition(' ')
                    stack.append(self.resolve_global(module, attr))
                elif name == 'STACK_GLOBAL':
                    attr, module = pop(), pop()
                    stack.append(self.resolve_global(module, attr))
                elif name == 'REDUCE':
                    args, entry = pop(), pop()
                    stack.append(self.call(entry, args, 'REDUCE'))
                elif name == 'NEWOBJ':
                    args, entry = pop(), pop()
                    stack.append(self.call(entry, args, 'NEWOBJ'))
                elif name == 'NEWOBJ_EX':
                    kwargs, args, entry = pop(), pop(), pop()
                    if kwargs != {}:
                        raise self.unsafe('NEWOBJ_EX with keyword arguments')
                    stack.append(self.call(entry, args, 'NEWOBJ'))
                elif name == 'BUILD':
                    state = pop()
                    if stack and type(stack[-1]) is OrderedDict:
                        self.set_metadata(stack[-1], state)
                        continue
                    if not stack or not isinstance(stack[-1], Pending):
                        target = type(stack[-1]).__name__ if stack else None
                        raise self.unsafe(f'BUILD (setting state) on a '
                                          f'{target}')
                    pending = stack[-1]
                    try:
                        built = pending.build(state)
                    except UnsafeCheckpointError as err:
                        raise self.unsafe(str(err)) from None
                    except TypeError as err:
                        raise self.malformed(str(err)) from None
                    stack[-1] = built
                    for key in pending_keys.pop(id(pending), ()):
                        if memo.get(key) is pending:
                            memo[key] = built
                elif name in ('BINPERSID', 'PERSID'):
                    pid = pop() if name == 'BINPERSID' else arg
                    if self.persistent_load is None:
                        raise self.unsafe('a persistent id outside a '
                                          'torch file')
                    stack.append(self.persistent_load(pid))
                else:
                    # INST, OBJ, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER and
                    # anything newer: never needed to rebuild plain data
                    raise self.unsafe(f'the pickle opcode {name}')
            raise TruncatedError(f'{self.where} is truncated: its pickle '
                                 'ends before STOP')
        except (UnsafeCheckpointError, CheckpointTooCostlyError,
                MalformedPickleError):
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
            if not isinstance(node, _WALKED):
                continue
            key = id(node)
            if leaving:
                path.discard(key)
                below = max((height.get(id(c), 0) for c in _children(node)),
                            default=0)
                if below >= MAX_DEPTH:
                    raise CheckpointTooCostlyError(
                        f'{self.where}: values nest more than {MAX_DEPTH} '
                        'levels deep, beyond any checkpoint. Refusing to '
                        'load it')
                height[key] = below + 1
                continue
            if key in height:
                continue
            if key in path:
                raise self.malformed('a container that contains itself')
            path.add(key)
            todo.append((node, True))
            todo.extend((child, False) for child in _children(node))
        return value


_WALKED = (dict, list, tuple, set, frozenset)


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


def _text(arg):
    return arg.decode('latin-1') if isinstance(arg, bytes) else str(arg)


_CONSTANTS = {
    'NONE': lambda arg: None,
    'NEWTRUE': lambda arg: True,
    'NEWFALSE': lambda arg: False,
    'INT': lambda arg: arg, 'BININT': lambda arg: arg,
    'BININT1': lambda arg: arg, 'BININT2': lambda arg: arg,
    'LONG': lambda arg: arg, 'LONG1': lambda arg: arg,
    'LONG4': lambda arg: arg,
    'FLOAT': lambda arg: arg, 'BINFLOAT': lambda arg: arg,
    'STRING': _text, 'BINSTRING': _text, 'SHORT_BINSTRING': _text,
    'UNICODE': str, 'BINUNICODE': str, 'SHORT_BINUNICODE': str,
    'BINUNICODE8': str,
    'BINBYTES': bytes, 'SHORT_BINBYTES': bytes, 'BINBYTES8': bytes,
    'BYTEARRAY8': bytearray,
}
_CONTAINERS = {
    'EMPTY_DICT': dict, 'EMPTY_LIST': list, 'EMPTY_TUPLE': tuple,
    'EMPTY_SET': set,
}


def loads(data: bytes, vocabulary, persistent_load=None,
          where='the checkpoint'):
    """Read one pickle from ``data`` (which it must fill exactly)."""
    stream = io.BytesIO(data)
    value = Machine(vocabulary, persistent_load, where).load(
        stream, len(data))
    if stream.tell() != len(data):
        raise MalformedPickleError(
            f'{where}: {len(data) - stream.tell():,} bytes follow the '
            'pickle')
    return value
