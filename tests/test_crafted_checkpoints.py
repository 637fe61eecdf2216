"""Crafted checkpoints: loading one must write nothing, change nothing in the
process, and cost bounded time and memory, through every loading path.

Every payload here acted on the machine or the process through a loader
that filtered only ``find_class``; ``safe_torch_load`` (our own pickle
machine, see convnext_mm/checkpoints/unpickler.py) refuses each.
"""
import os
import pickle
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint

import convnext_mm  # noqa: F401  (installs the safe loaders)
from convnext_mm.checkpoints import (CheckpointTooCostlyError,
                                     UnsafeCheckpointError, safe_torch_load)
from convnext_mm.checkpoints.unpickler import MAX_COMPOSITE_KEYS
from convnext_mm.models import ConvNeXt

import crafted as C
from tool_utils import run_tool

P = pickle
REFUSED = (UnsafeCheckpointError, ValueError)


def _files(root):
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


@pytest.fixture
def guard(tmp_path, monkeypatch):
    """Runs in an empty working directory; afterwards checks that no file
    appeared there or under the payloads' target folder, and that no global
    changed."""
    work = tmp_path / 'cwd'
    target = tmp_path / 'target'
    work.mkdir()
    target.mkdir()
    monkeypatch.chdir(work)
    HistoryBuffer()  # registers the built-in statistics, once per process
    import torch._dynamo  # noqa: F401  (registers its safe globals on import)
    before = C.snapshot()
    yield target
    assert _files(work) == [] and _files(target) == []
    assert C.snapshot() == before


def write(tmp_path, data: bytes, name='ckpt.pth'):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refuse_everywhere(path, match=None):
    """safe_torch_load and mmengine's two loading entry points refuse it."""
    for load in (safe_torch_load, lambda p: _load_checkpoint(str(p)),
                 lambda p: load_checkpoint(nn.Linear(1, 1), str(p))):
        with pytest.raises(REFUSED, match=match):
            load(path)


def test_file_write_through_legacy_format_is_refused(tmp_path, guard):
    payload = C.file_write(str(guard / 'name'))
    for fmt, data in (('legacy', C.torch_legacy(payload)),
                      ('zip', C.torch_zip(payload))):
        refuse_everywhere(write(tmp_path, data, f'{fmt}.pth'))
    assert not (guard / 'name.patch').exists()


def test_file_write_is_refused_by_init_cfg_and_the_tools(tmp_path, guard):
    path = write(tmp_path, C.torch_legacy(C.file_write(str(guard / 'n'))))
    backbone = ConvNeXt(
        'atto', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(UnsafeCheckpointError):
        backbone.init_weights()
    code, out = run_tool('convert_checkpoint.py', path, tmp_path / 'out.pth',
                         check=False)
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1, out
    assert lines[0].startswith('error: ') and 'refusing' in lines[0]
    assert not (tmp_path / 'out.pth').exists()


def test_tar_format_is_refused_with_how_to_resave(tmp_path, guard):
    path = write(tmp_path, C.torch_tar())
    with pytest.raises(UnsafeCheckpointError, match='legacy .tar format.*'
                       'convert_checkpoint.py --trusted'):
        safe_torch_load(path)


@pytest.mark.parametrize('module,name,state', [
    ('collections', 'Counter', C.dict_of(C.text('most_common'), P.NONE)),
    ('collections', 'OrderedDict', C.dict_of(C.text('keys'), P.NONE)),
    ('torch._utils', '_rebuild_tensor_v2',
     P.NONE + C.dict_of(C.text('__defaults__'), P.NONE) + P.TUPLE2),
    ('torch', 'UntypedStorage', C.dict_of(C.text('nbytes'), P.NONE)),
    ('torch', 'Tensor', C.dict_of(C.text('__add__'), P.NONE)),
])
def test_build_on_an_allowed_global_is_refused(tmp_path, guard, module, name,
                                               state):
    refuse_everywhere(
        write(tmp_path, C.torch_zip(C.build_on(module, name, state))))


def test_history_buffer_cannot_redefine_statistics(tmp_path, guard):
    swapped = C.history_buffer({'mean': HistoryBuffer.max})
    refuse_everywhere(write(tmp_path, swapped), match='statistics methods')
    assert HistoryBuffer._statistics_methods.get('mean',
                                               HistoryBuffer.mean) is \
        HistoryBuffer.mean
    added = C.history_buffer({'evil': HistoryBuffer.max})
    refuse_everywhere(write(tmp_path, added))
    odd = C.history_buffer({}, __class__=int)
    refuse_everywhere(write(tmp_path, odd))
    objects = C.history_buffer({}, _log_history=np.array([None, 1],
                                                         dtype=object))
    refuse_everywhere(write(tmp_path, objects))


def test_history_buffer_of_mmengine_still_loads(tmp_path, guard):
    buffer = HistoryBuffer([1., 2., 6.], [1, 1, 1], max_length=7)
    path = write(tmp_path, C.saved({'message_hub': {'b': buffer}}))
    loaded = safe_torch_load(path)['message_hub']['b']
    assert type(loaded) is HistoryBuffer and loaded.max_length == 7
    assert loaded.statistics('mean') == 3.0
    assert loaded.statistics('max') == 6.0


@pytest.mark.parametrize('owner,name', [
    ('mmengine.logging.history_buffer HistoryBuffer', '__init__'),
    ('mmengine.logging.history_buffer HistoryBuffer', '_statistics_methods'),
    ('torch Tensor', '__setattr__'),
    ('collections Counter', 'update'),
])
def test_getattr_is_limited_to_history_statistics(tmp_path, guard, owner,
                                                  name):
    module, cls = owner.split()
    data = C.program(C.glob('builtins', 'getattr') + C.glob(module, cls) +
                     C.text(name) + P.TUPLE2 + P.REDUCE)
    refuse_everywhere(write(tmp_path, C.torch_zip(data)))


class Exploit:
    marker = None

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.mark.parametrize('protocol', range(6))
def test_every_pickle_protocol_is_refused(tmp_path, guard, protocol):
    Exploit.marker = str(guard / 'pwned')
    data = pickle.dumps({'w': Exploit()}, protocol=protocol)
    for fmt, wrapped in (('zip', C.torch_zip(data)),
                         ('legacy', C.torch_legacy(data))):
        refuse_everywhere(write(tmp_path, wrapped, f'{fmt}.pth'))


@pytest.mark.parametrize('opcodes', [
    # INST: MARK args INST module name -> module.name(*args)
    lambda m: P.MARK + b"S'touch " + m + b"'\n" + P.INST + b'os\nsystem\n',
    # OBJ: MARK class args OBJ
    lambda m: P.MARK + C.glob('os', 'system') + b"S'touch " + m + b"'\n" +
    P.OBJ,
    # NEWOBJ_EX: class args kwargs
    lambda m: b'\x80\x04' + C.glob('collections', 'OrderedDict') +
    P.EMPTY_TUPLE + P.EMPTY_DICT + P.NEWOBJ_EX,
    # STACK_GLOBAL (protocol 4) of os.system
    lambda m: b'\x80\x04' + C.text('os') + C.text('system') +
    P.STACK_GLOBAL + C.text('touch ' + m.decode()) + P.TUPLE1 + P.REDUCE,
])
def test_object_building_opcodes_are_refused(tmp_path, guard, opcodes):
    data = opcodes(str(guard / 'pwned').encode()) + P.STOP
    refuse_everywhere(write(tmp_path, C.torch_zip(data)))


@pytest.mark.parametrize('pid', [
    P.MARK + C.text('module') + C.glob('torch._utils', '_rebuild_tensor') +
    C.text('a') + C.text('b') + P.TUPLE,
    P.MARK + C.text('storage') + C.glob('os', 'system') + C.text('0') +
    C.text('cpu') + P.BININT1 + b'\x04' + P.NONE + P.TUPLE,
    P.MARK + C.text('storage') + C.text('x') + C.text('0') + C.text('cpu') +
    P.BININT1 + b'\x04' + P.TUPLE,
    P.MARK + C.text('anything') + P.TUPLE,
    C.text('storage'),
    P.BININT1 + b'\x07',
    P.EMPTY_DICT,
])
def test_persistent_ids_of_any_kind(tmp_path, guard, pid):
    data = C.program(pid + P.BINPERSID)
    for wrapped in (C.torch_zip(data), C.torch_legacy(data)):
        refuse_everywhere(write(tmp_path, wrapped))
    data = b'P' + str(guard / 'x').encode() + b'\n.'  # PERSID, protocol 0
    refuse_everywhere(write(tmp_path, C.torch_zip(data)))


def test_list_containing_itself_is_refused_not_crashed(tmp_path, guard):
    # l = []; l.append(l); set(l): the cost scan must not recurse forever
    data = C.program(C.glob('builtins', 'set') + P.EMPTY_LIST + P.BINPUT +
                     b'\x00' + P.BINGET + b'\x00' + P.APPEND + P.TUPLE1 +
                     P.REDUCE)
    refuse_everywhere(write(tmp_path, C.torch_zip(data)))


def test_numpy_object_and_structured_arrays_are_refused(tmp_path, guard):
    for array in (np.array([1, 'x', None], dtype=object),
                  np.zeros(2, dtype=[('a', 'f4'), ('b', 'O')]),
                  np.zeros(2, dtype=[('a', 'f4'), ('b', 'i4')])):
        refuse_everywhere(write(tmp_path, C.saved({'meta': {'a': array}})))


def test_numpy_values_mmengine_writes_still_load(tmp_path, guard):
    meta = dict(f=np.float64(1.5), i=np.int64(3), b=np.bool_(True),
                a=np.arange(4, dtype=np.float32), s=np.array(['x', 'yz']))
    path = write(tmp_path, C.saved({'meta': meta}))
    loaded = safe_torch_load(path)['meta']
    assert loaded['f'] == 1.5 and loaded['i'] == 3 and loaded['b']
    assert loaded['a'].tolist() == [0., 1., 2., 3.]
    assert loaded['s'].tolist() == ['x', 'yz']


def _timed_refusal(path, limit_s=5.0):
    start = time.perf_counter()
    with pytest.raises(CheckpointTooCostlyError):
        safe_torch_load(path)
    elapsed = time.perf_counter() - start
    assert elapsed < limit_s, f'refusal took {elapsed:.1f} s'


def test_colliding_keys_are_refused_in_bounded_time(tmp_path, guard):
    # 100k keys that all hash to 0: minutes of CPU if inserted
    _timed_refusal(write(tmp_path, C.torch_zip(C.colliding_int_keys(100_000))))
    _timed_refusal(write(tmp_path, C.torch_zip(C.colliding_set(50_000))))
    _timed_refusal(write(tmp_path, C.torch_legacy(
        C.colliding_int_keys(50_000))))
    _timed_refusal(write(tmp_path, C.torch_zip(
        C.tuple_keys(MAX_COMPOSITE_KEYS + 1))))
    # under the limit the same kinds of keys still load
    small = safe_torch_load(write(tmp_path, C.torch_zip(C.tuple_keys(100))))
    assert len(small) == 100


def test_deflate_bomb_is_refused_before_inflating(tmp_path, guard):
    zeros = bytes(1 << 20)

    def bomb(member):
        for _ in range(200):
            member.write(zeros)

    import zipfile
    data = C.saved({'w': torch.zeros(4)})
    path = write(tmp_path, data)
    # re-pack torch's own file with one record deflated to 200 MB
    src = zipfile.ZipFile(path)
    out = tmp_path / 'bomb.pth'
    with zipfile.ZipFile(out, 'w') as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        info = zipfile.ZipInfo('archive/data/1')
        info.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(info, 'w', force_zip64=True) as member:
            bomb(member)
    assert out.stat().st_size < 1 << 20
    _timed_refusal(out, limit_s=2.0)


def test_self_nested_checkpoint_gives_one_line(tmp_path, guard):
    path = write(tmp_path, C.torch_zip(C.self_nested()))
    backbone = ConvNeXt(
        'atto', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match='contains itself'):
        backbone.init_weights()
    code, out = run_tool('convert_checkpoint.py', path, tmp_path / 'o.pth',
                         check=False)
    assert code == 2 and out.strip().count('\n') == 0, out
    assert 'contains itself' in out


def test_giant_pickles_are_refused(tmp_path, guard, monkeypatch):
    from convnext_mm.checkpoints import unpickler
    monkeypatch.setattr(unpickler, 'MAX_PICKLE_OPS', 1000)
    data = C.program(P.EMPTY_LIST + P.MARK + P.NONE * 2000 + P.APPENDS)
    with pytest.raises(CheckpointTooCostlyError, match='1,000 opcodes'):
        safe_torch_load(write(tmp_path, C.torch_zip(data)))


def test_legacy_checkpoint_of_weights_loads(tmp_path, guard):
    state = {'w': torch.arange(6.).reshape(2, 3), 'n': torch.tensor(3)}
    path = tmp_path / 'legacy.pth'
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = safe_torch_load(path)
    assert torch.equal(loaded['w'], state['w']) and loaded['n'].item() == 3


def test_unlisted_classes_cannot_be_built(tmp_path, guard):
    for module, name in (('crafted', 'Reduce'), ('os', 'system'),
                         ('builtins', 'eval'), ('numpy', 'load')):
        data = C.program(C.glob(module, name) + P.EMPTY_TUPLE + P.NEWOBJ)
        refuse_everywhere(write(tmp_path, C.torch_zip(data)))
