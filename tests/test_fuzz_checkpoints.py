"""Fuzzing the checkpoint readers: whatever bytes a file holds, loading it
ends in plain data or one refusal line, never a crash, hang, traceback,
changed global or written file.

Four generators (hypothesis strategies): pickle opcode programs in torch's
zip and legacy containers, mutations of real ``torch.save`` files (flips,
truncations, insertions, appended archives), safetensors headers, and Hugging
Face folders. Every case is loaded in a forked child under memory, CPU and
time limits (``child_loader.py``), through the safe reader and mmengine's
loader in turn.

The seed is fixed (``derandomize``). CI runs ``CONVNEXT_MM_FUZZ_EXAMPLES``
examples per generator (default 120, about a minute in all); set it higher
for a longer run, e.g. ``CONVNEXT_MM_FUZZ_EXAMPLES=5000 pytest
tests/test_fuzz_checkpoints.py``.
"""
import io
import json
import os
import pickle
import shutil
import struct
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmengine.logging import HistoryBuffer

import crafted as C
from convnext_mm.checkpoints.vocabulary import VOCABULARY

P = pickle
EXAMPLES = int(os.environ.get('CONVNEXT_MM_FUZZ_EXAMPLES', 120))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                database=None, suppress_health_check=list(HealthCheck))
GOOD = ('loaded', 'refused')

# every name we read, and some we must not
NAMES = sorted(VOCABULARY) + [
    'os.system', 'builtins.eval', 'builtins.getattr', 'builtins.object',
    'copyreg._reconstructor', 'copyreg.__newobj__', 'torch.load',
    'numpy.core.multiarray._reconstruct', 'numpy.dtype', 'torch.Tensor',
    'torch._utils._rebuild_qtensor', 'torch.Float8_e4m3fnStorage',
    'mmengine.logging.history_buffer.HistoryBuffer._statistics_methods',
    '__builtin__.set', 'collections.defaultdict', 'torch.nn.Module'
]
SIMPLE_OPS = [
    P.MARK, P.POP, P.POP_MARK, P.DUP, P.NONE, P.NEWTRUE, P.NEWFALSE,
    P.EMPTY_DICT, P.EMPTY_LIST, P.EMPTY_TUPLE, P.EMPTY_SET, P.TUPLE,
    P.TUPLE1, P.TUPLE2, P.TUPLE3, P.LIST, P.DICT, P.FROZENSET, P.APPEND,
    P.APPENDS, P.SETITEM, P.SETITEMS, P.ADDITEMS, P.REDUCE, P.NEWOBJ,
    P.NEWOBJ_EX, P.BUILD, P.BINPERSID, P.STACK_GLOBAL, P.MEMOIZE, P.OBJ,
    P.NEXT_BUFFER, P.STOP
]
HUGE = [
    P.BINUNICODE8 + struct.pack('<Q', 1 << 62) + b'xy',
    P.BINBYTES8 + struct.pack('<Q', (1 << 63) - 1),
    P.BINUNICODE + struct.pack('<I', (1 << 32) - 1) + b'a',
    P.LONG4 + struct.pack('<i', (1 << 31) - 1),
    P.BYTEARRAY8 + struct.pack('<Q', 1 << 40),
    P.LONG_BINGET + struct.pack('<I', 1 << 31),
    b'I' + b'9' * 5000 + b'\n',
    P.FRAME + struct.pack('<Q', 1 << 60),
]


def _glob(name: str) -> bytes:
    module, _, attr = name.rpartition('.')
    return C.glob(module, attr)


def _storage_pid(key: str, numel: int) -> bytes:
    return (P.MARK + C.text('storage') + C.glob('torch', 'FloatStorage') +
            C.text(key) + C.text('cpu') + C.long1(numel) + P.TUPLE +
            P.BINPERSID)


ATOMS = st.one_of(
    st.sampled_from(SIMPLE_OPS),
    st.integers(-(1 << 70), 1 << 70).map(C.long1),
    st.integers(0, 255).map(lambda i: P.BININT1 + bytes([i])),
    st.text(max_size=10).map(C.text),
    st.binary(max_size=12).map(
        lambda b: P.SHORT_BINBYTES + bytes([len(b)]) + b),
    st.floats(allow_nan=True).map(lambda f: P.BINFLOAT + struct.pack(
        '>d', f)),
    st.sampled_from(NAMES).map(_glob),
    st.integers(0, 6).map(lambda i: P.BINPUT + bytes([i])),
    st.integers(0, 6).map(lambda i: P.BINGET + bytes([i])),
    st.sampled_from(HUGE),
    st.integers(1, 400).map(lambda n: P.TUPLE1 * n),
    st.integers(0, 8).map(lambda n: _storage_pid('0', n)),
    st.sampled_from([b'f8', b'O8', b'V8', b'U2', b'S0']).map(
        lambda spec: C.glob('numpy', 'dtype') + C.text(spec.decode()) +
        P.NEWFALSE + P.NEWTRUE + P.TUPLE3 + P.REDUCE),
)


def _program(ops) -> bytes:
    return P.PROTO + b'\x02' + b''.join(ops) + P.STOP


def _base_checkpoint() -> dict:
    weights = {'w': torch.arange(6.).reshape(2, 3), 'v': torch.ones(2),
               'n': torch.tensor(3)}
    return dict(state_dict=weights, meta=dict(
        seed=1, f=np.float64(0.5), a=np.arange(3, dtype=np.int32),
        s=np.array(['x'])),
                message_hub=dict(log_scalars={
                    'loss': HistoryBuffer([1., 2.], [1, 1], max_length=4)}))


BASES = []


def _bases():
    if not BASES:
        value = _base_checkpoint()
        legacy = io.BytesIO()
        torch.save(value, legacy, _use_new_zipfile_serialization=False)
        from safetensors.torch import save
        BASES.extend([C.saved(value), legacy.getvalue(),
                      save(value['state_dict'])])
    return BASES


MUTATION = st.one_of(
    st.tuples(st.just('flip'), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just('truncate'), st.integers(0, 1 << 20)),
    st.tuples(st.just('insert'), st.integers(0, 1 << 20),
              st.binary(min_size=1, max_size=32)),
    st.tuples(st.just('delete'), st.integers(0, 1 << 20),
              st.integers(1, 64)),
    st.tuples(st.just('append'), st.sampled_from([b'x', b'\0' * 100, None])),
)


def _mutate(data: bytes, mutation) -> bytes:
    kind, *args = mutation
    data = bytearray(data)
    at = args[0] % max(len(data), 1) if kind != 'append' else 0
    if kind == 'flip':
        if data:  # nothing to flip in an emptied file
            data[at] ^= args[1]
    elif kind == 'truncate':
        del data[at:]
    elif kind == 'insert':
        data[at:at] = args[1]
    elif kind == 'delete':
        del data[at:at + args[1]]
    else:  # a whole second archive after the first
        data += args[0] if args[0] is not None else C.saved({'x': 1})
    return bytes(data)


class Case:
    """A temporary folder for one example's files."""

    def __enter__(self):
        self.root = tempfile.mkdtemp(prefix='fuzz-')
        return self

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.root, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def __exit__(self, *exc):
        shutil.rmtree(self.root, ignore_errors=True)


def _check(child_loader, path, how):
    result = child_loader.load(path, how)
    assert result['status'] in GOOD, result
    if result['status'] == 'refused':
        assert '\n' not in result['message'], result


@FUZZ
@given(ops=st.lists(ATOMS, max_size=40), legacy=st.booleans(),
       how=st.sampled_from(['read_file', 'mmengine']))
def test_pickle_programs(child_loader, ops, legacy, how):
    program = _program(ops)
    data = C.torch_legacy(program) if legacy else C.torch_zip(
        program, storages={'0': bytes(16)})
    with Case() as case:
        _check(child_loader, case.write('c.pth', data), how)


@FUZZ
@given(base=st.integers(0, 2), mutations=st.lists(MUTATION, min_size=1,
                                                  max_size=3),
       how=st.sampled_from(['read_file', 'mmengine']))
def test_mutated_real_files(child_loader, base, mutations, how):
    data = _bases()[base]
    for mutation in mutations:
        data = _mutate(data, mutation)
    with Case() as case:
        _check(child_loader, case.write('c.pth', data), how)


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 40), 1 << 40) |
    st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=4), inner, max_size=3), max_leaves=8)
ENTRY = st.fixed_dictionaries({
    'dtype': st.sampled_from(['F32', 'F16', 'I64', 'BOOL', 'F8_E4M3', 'C64',
                              'X']),
    'shape': st.lists(st.integers(-2, 1 << 40), max_size=4),
    'data_offsets': st.lists(st.integers(-5, 1 << 40), max_size=3),
}) | JSON_VALUE


@FUZZ
@given(header=st.dictionaries(st.text(max_size=6), ENTRY, max_size=4),
       nesting=st.integers(0, 3000), body=st.binary(max_size=64))
def test_safetensors_headers(child_loader, header, nesting, body):
    text = json.dumps(header)
    if nesting:
        text = '{"a": ' + '[' * nesting + ']' * nesting + '}'
    raw = text.encode()
    data = struct.pack('<Q', len(raw)) + raw + body
    with Case() as case:
        _check(child_loader, case.write('c.safetensors', data), 'read_file')


SHARDS = ['model-1.safetensors', '.', '..', '../model-1.safetensors',
          '/etc/hostname', 'a/b', '', 'missing.safetensors', 'config.json']


@FUZZ
@given(model_type=st.sampled_from(['convnext', 'convnextv2', 'upernet', 'vit',
                                   None]),
       depths=JSON_VALUE | st.just([1, 1, 1, 1]),
       index=st.one_of(
           st.dictionaries(st.text(max_size=5),
                           st.sampled_from(SHARDS), max_size=3).map(
                               lambda m: {'weight_map': m}),
           JSON_VALUE),
       sharded=st.booleans(), how=st.sampled_from(['read_file', 'mmengine']))
def test_hugging_face_folders(child_loader, model_type, depths, index,
                              sharded, how):
    from safetensors.torch import save
    config = {'model_type': model_type, 'depths': depths}
    if model_type == 'upernet':
        config['backbone_config'] = {'model_type': 'convnext'}
    with Case() as case:
        case.write('config.json', json.dumps(config).encode())
        shard = save({'embeddings.patch_embeddings.weight': torch.ones(2)})
        if sharded:
            case.write('model.safetensors.index.json',
                       json.dumps(index).encode())
            case.write('model-1.safetensors', shard)
        else:
            case.write('model.safetensors', shard)
        _check(child_loader, case.root, how)


@pytest.mark.parametrize('status', ['crash', 'hang', 'traceback'])
def test_the_child_reports_what_goes_wrong(child_loader, tmp_path, status):
    """The harness itself: a case that does crash, hang or raise is seen."""
    crash = {'crash': 'import ctypes; ctypes.string_at(0)',
             'hang': 'while True: pass',
             'traceback': 'raise RuntimeError("boom")'}[status]
    path = tmp_path / 'case.py'
    path.write_text(crash)
    result = child_loader.load(path, how='exec', seconds=2)
    assert result['status'] == status, result
