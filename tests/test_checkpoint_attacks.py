"""The crafted files that got past the earlier loader, through every path
that loads a checkpoint: each is refused in one line or loads plain tensors,
without a crash, hang, traceback or side effect.

Cases that crashed the process are loaded in forked children
(``child_loader``) through the safe reader, mmengine's loader and a
ConvNeXt ``init_cfg`` in turn.
"""
import argparse
import io
import json
import pickle
import struct
import zipfile

import pytest
import torch
import torch.nn as nn
from mmengine.runner.checkpoint import (CheckpointLoader, _load_checkpoint,
                                        load_checkpoint)

import convnext_mm  # noqa: F401  (installs the safe loaders)
import crafted as C
from convnext_mm.checkpoints import (CheckpointFileError,
                                     CheckpointTooCostlyError, TruncatedError,
                                     UnsafeCheckpointError,
                                     read_file, safe_torch_load)
from convnext_mm.checkpoints import mmengine_hook

P = pickle
PATHS = ('read_file', 'mmengine', 'init_cfg')


def write(tmp_path, data: bytes, name='ckpt.pth'):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused_in_children(child_loader, path, match=None):
    for how in PATHS:
        result = child_loader.load(path, how)
        assert result['status'] == 'refused', (how, result)
        assert '\n' not in result['message']
        if match:
            assert match in result['message'], (how, result)


def _dtype(spec: str, state=None) -> bytes:
    """numpy.dtype(spec, False, True), then BUILD ``state`` if given."""
    out = C.glob('numpy', 'dtype') + C.text(spec) + P.NEWFALSE + \
        P.NEWTRUE + P.TUPLE3 + P.REDUCE
    if state is not None:
        out += state + P.BUILD
    return out


DTYPE_STATE = (P.MARK + P.BININT1 + b'\x03' + C.text('<') + P.NONE * 3 +
               C.long1(-1) + C.long1(-1) + P.BININT1 + b'\x00' + P.TUPLE)


def _array(dtype: bytes, data: bytes) -> bytes:
    """_reconstruct(ndarray, (0,), b'b') then BUILD (1, (2,), dtype, False,
    data): what numpy pickles, with a dtype and data the file chooses."""
    return (C.glob('numpy.core.multiarray', '_reconstruct') +
            C.glob('numpy', 'ndarray') + P.BININT1 + b'\x00' + P.TUPLE1 +
            P.SHORT_BINBYTES + b'\x01b' + P.TUPLE3 + P.REDUCE + P.MARK +
            P.BININT1 + b'\x01' + P.BININT1 + b'\x02' + P.TUPLE1 + dtype +
            P.NEWFALSE + data + P.TUPLE + P.BUILD)


@pytest.mark.parametrize('payload', [
    # an object array whose "objects" are pointers read from the file
    _array(_dtype('O8', DTYPE_STATE), P.SHORT_BINBYTES + b'\x10' + b'A' * 16),
    # the same, its object dtype inside a structured one
    _array(_dtype('V16', DTYPE_STATE), P.SHORT_BINBYTES + b'\x10' + b'A' * 16),
    # a scalar of an object dtype
    C.glob('numpy.core.multiarray', 'scalar') + _dtype('O8', DTYPE_STATE) +
    P.SHORT_BINBYTES + b'\x08' + b'A' * 8 + P.TUPLE2 + P.REDUCE,
    # a dtype accepted as f8, then BUILT to a 1 MiB item size
    _array(_dtype('f8', P.MARK + P.BININT1 + b'\x03' + C.text('<') +
                  P.NONE * 3 + C.long1(1 << 20) + C.long1(1) +
                  P.BININT1 + b'\x00' + P.TUPLE),
           P.SHORT_BINBYTES + b'\x10' + b'A' * 16),
    # BUILD twice on one dtype
    _array(_dtype('f8', DTYPE_STATE) + DTYPE_STATE + P.BUILD,
           P.SHORT_BINBYTES + b'\x10' + b'A' * 16),
], ids=['object', 'structured', 'object-scalar', 'itemsize', 'rebuild'])
def test_numpy_built_from_the_files_own_dtype_never_crashes(
        child_loader, tmp_path, payload):
    path = write(tmp_path, C.torch_zip(C.program(
        P.EMPTY_DICT + C.text('meta') + payload + P.SETITEM)))
    refused_in_children(child_loader, path)


def test_keys_and_values_nested_deep_are_refused(child_loader, tmp_path):
    def key(levels):
        return P.EMPTY_DICT + P.NONE + P.TUPLE1 * levels + P.NONE + P.SETITEM

    lists = P.EMPTY_LIST * 100_000 + P.APPEND * 99_999
    for body in (key(100_000), lists):
        path = write(tmp_path, C.torch_zip(C.program(body)))
        refused_in_children(child_loader, path, 'nest more than')


def test_nesting_inside_a_namespace_is_bounded(tmp_path):
    """The authors' training container keeps its command line in an
    ``argparse.Namespace``: its attributes are walked like a container's
    items (nesting bounded, no unfinished values)."""
    deep = []
    for _ in range(150):
        deep = [deep]
    data = pickle.dumps({'args': argparse.Namespace(x=deep)}, protocol=2)
    path = write(tmp_path, C.torch_zip(data))
    with pytest.raises(CheckpointTooCostlyError, match='nest more than'):
        safe_torch_load(path)
    shallow = pickle.dumps({'args': argparse.Namespace(x=[[1]])}, protocol=2)
    path = write(tmp_path, C.torch_zip(shallow))
    assert safe_torch_load(path)['args'].x == [[1]]


def test_a_file_reads_one_way_only(tmp_path):
    good = C.saved({'w': torch.ones(2)})
    bad = C.torch_zip(C.colliding_int_keys(50_000))
    legacy = io.BytesIO()
    torch.save({'w': torch.ones(2)}, legacy,
               _use_new_zipfile_serialization=False)
    duplicate = io.BytesIO()
    with zipfile.ZipFile(duplicate, 'w') as archive, \
            pytest.warns(UserWarning):
        archive.writestr('archive/data.pkl', C.program(P.NONE))
        archive.writestr('archive/data.pkl', C.colliding_int_keys(50_000))
    cases = {
        'zip after zip': good + bad,
        'legacy then zip': legacy.getvalue() + bad,
        'trailing data': good + b'junk',
        'duplicate records': duplicate.getvalue(),
        'a second directory': _second_directory(good, bad),
        'offsets zipfile corrects, torch does not': _shifted(good, 64),
    }
    for what, data in cases.items():
        path = write(tmp_path, data, 'c.pth')
        with pytest.raises((ValueError, UnsafeCheckpointError)) as err:
            safe_torch_load(path)
        assert 'two ways' in str(err.value) or 'follow' in str(
            err.value), (what, err.value)
    assert safe_torch_load(write(tmp_path, good))['w'].sum() == 2


def _shifted(data: bytes, by: int) -> bytes:
    """``data`` with every record offset its directory names, and the
    directory's own, moved ``by`` bytes on: zipfile takes the difference
    for a prefix and reads the records where they are; torch's reader
    looks where the offsets say."""
    data = bytearray(data)
    locator = len(data) - 22 - 20
    record = struct.unpack('<Q', data[locator + 8:locator + 16])[0]
    at = struct.unpack('<Q', data[record + 48:record + 56])[0]
    data[record + 48:record + 56] = struct.pack('<Q', at + by)
    while data[at:at + 4] == b'PK\x01\x02':
        offset = struct.unpack('<L', data[at + 42:at + 46])[0]
        data[at + 42:at + 46] = struct.pack('<L', offset + by)
        at += 46 + sum(struct.unpack('<3H', data[at + 28:at + 34]))
    return bytes(data)


def _second_directory(good: bytes, bad: bytes) -> bytes:
    """``good``'s records, then all of ``bad``: two directories, two end
    records, the last one ``bad``'s."""
    start = good.rfind(b'PK\x01\x02', 0, len(good))
    while good.rfind(b'PK\x01\x02', 0, start) != -1:
        start = good.rfind(b'PK\x01\x02', 0, start)
    return good[:start] + bad


def test_every_mmengine_scheme_reads_through_the_safe_door():
    for prefix, loader in CheckpointLoader._schemes.items():
        assert loader in mmengine_hook.OURS, prefix
    assert CheckpointLoader._get_checkpoint_loader('pavi://x') is \
        mmengine_hook.load_from_refused
    with pytest.raises(ValueError, match='pavi://x: this scheme is not read'):
        _load_checkpoint('pavi://x')


def test_a_scheme_registered_later_is_refused(monkeypatch):
    schemes = dict(CheckpointLoader._schemes)
    monkeypatch.setattr(CheckpointLoader, '_schemes', schemes)
    CheckpointLoader.register_scheme('later://', lambda f, m=None: 'unsafe')
    with pytest.raises(ValueError, match='this scheme is not read by'):
        _load_checkpoint('later://model.pth')


def test_open_mmlab_names_go_through_the_safe_door(tmp_path, monkeypatch):
    """mmengine maps open-mmlab:// names to URLs or files under its home
    (from ``open_mmlab.json`` there): both kinds are read safely."""
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path))
    write(tmp_path, C.torch_zip(C.colliding_int_keys(50_000)), 'evil.pth')
    write(tmp_path, C.saved({'state_dict': {'w': torch.ones(3)}}), 'ok.pth')
    (tmp_path / 'open_mmlab.json').write_text(
        json.dumps({'evil': 'evil.pth', 'ok': 'ok.pth'}))
    assert _load_checkpoint('open-mmlab://ok')['state_dict']['w'].sum() == 3
    for name in ('open-mmlab://evil', 'openmmlab://evil'):
        with pytest.raises(ValueError, match='collide'):
            _load_checkpoint(name)
    with pytest.raises(KeyError, match='no open-mmlab:// model named'):
        _load_checkpoint('open-mmlab://missing')


def test_history_buffer_only_through_its_checked_state(tmp_path):
    module = 'mmengine.logging.history_buffer'
    for body in (
            # its constructor with the file's arguments
            C.glob(module, 'HistoryBuffer') + P.EMPTY_LIST + P.EMPTY_LIST +
            P.BININT1 + b'\x05' + P.TUPLE3 + P.REDUCE,
            C.glob(module, 'HistoryBuffer') + P.EMPTY_LIST + P.TUPLE1 +
            P.NEWOBJ,
            # never built: an instance without its state
            C.glob(module, 'HistoryBuffer') + P.EMPTY_TUPLE + P.NEWOBJ):
        path = write(tmp_path, C.torch_zip(C.program(body)))
        with pytest.raises(UnsafeCheckpointError):
            safe_torch_load(path)


@pytest.mark.parametrize('dtype', [torch.float8_e4m3fn, torch.complex64])
def test_float8_and_complex_weights_are_named(tmp_path, dtype):
    path = write(tmp_path, C.saved({'w': torch.zeros(2, dtype=dtype)}))
    name = 'float8_e4m3fn' if dtype.is_floating_point else 'ComplexFloat'
    with pytest.raises(UnsafeCheckpointError, match=f'holds {name} tensors'):
        safe_torch_load(path)
    from safetensors.torch import save
    st_path = write(tmp_path, save({'w': torch.zeros(2, dtype=dtype)}),
                    'w.safetensors')
    with pytest.raises(ValueError, match='holds (F8_E4M3|C64) tensors'):
        read_file(st_path)


def test_truncated_files_are_named_truncated(tmp_path):
    whole = C.saved({'state_dict': {'w': torch.ones(1000)}})
    for cut in (10, len(whole) // 2, len(whole) - 5):
        path = write(tmp_path, whole[:cut])
        with pytest.raises(TruncatedError, match='is truncated'):
            safe_torch_load(path)
    legacy = io.BytesIO()
    torch.save({'w': torch.ones(1000)}, legacy,
               _use_new_zipfile_serialization=False)
    path = write(tmp_path, legacy.getvalue()[:-100])
    with pytest.raises(TruncatedError, match='is truncated'):
        safe_torch_load(path)
    # 27 bytes that announce a 2**62-byte string
    tiny = C.torch_legacy(b'')[:0] + P.PROTO + b'\x02' + P.BINUNICODE8 + \
        struct.pack('<Q', 1 << 62) + b'abc' + P.STOP
    path = write(tmp_path, tiny)
    assert len(tiny) < 27
    with pytest.raises(TruncatedError, match='announces'):
        safe_torch_load(path)


def test_a_zip64_locator_pointing_past_the_file_is_named(tmp_path):
    """The zip64 end locator's record offset with a high bit set (what the
    5,000-example fuzz run found: an OSError from seek, not one line)."""
    whole = bytearray(C.saved({'state_dict': {'w': torch.ones(10)}}))
    locator = whole.rindex(b'PK\x06\x07')
    for offset in (1 << 63, 1 << 40, len(whole)):
        whole[locator + 8:locator + 16] = struct.pack('<Q', offset)
        path = write(tmp_path, bytes(whole))
        with pytest.raises(CheckpointFileError, match="a damaged zip64 end "
                           'record'):
            safe_torch_load(path)


@pytest.mark.parametrize('field,value,match', [
    (6, 64, 'a damaged zip checkpoint'),  # needs zip version 6.4
    (10, 99, 'is damaged'),  # an unknown compression method
    (8, 1, 'is damaged'),  # encrypted
])
def test_zip_records_zipfile_cannot_read_are_named(tmp_path, field, value,
                                                   match):
    """A central directory entry's version, method or flags that zipfile
    answers with NotImplementedError or RuntimeError (the fuzz run found
    the version): one line, not a traceback."""
    whole = bytearray(C.saved({'state_dict': {'w': torch.ones(10)}}))
    entry = whole.index(b'PK\x01\x02')  # the first record's, data.pkl
    if field == 8:  # a flag bit beside those the file has
        value |= struct.unpack('<H', whole[entry + 8:entry + 10])[0]
    whole[entry + field:entry + field + 2] = struct.pack('<H', value)
    if field in (8, 10):  # the local header's copy (at 0) says the same
        whole[field - 2:field] = struct.pack('<H', value)
    path = write(tmp_path, bytes(whole))
    with pytest.raises(CheckpointFileError, match=match):
        safe_torch_load(path)


@pytest.mark.parametrize('index,match', [
    ({'weight_map': {'w': '.'}}, 'not a file name inside its folder'),
    ({'weight_map': {'w': '..'}}, 'not a file name inside its folder'),
    ({'weight_map': {'w': '../x.safetensors'}}, 'not a file name'),
    ({'weight_map': ['model.safetensors']}, 'weight_map maps tensor names'),
    (['model.safetensors'], 'weight_map maps tensor names'),
    ({'weight_map': {'w': 3}}, 'weight_map maps tensor names'),
])
def test_hugging_face_index_is_checked(tmp_path, index, match):
    (tmp_path / 'config.json').write_text(json.dumps(
        {'model_type': 'convnext', 'depths': [1, 1, 1, 1]}))
    (tmp_path / 'model.safetensors.index.json').write_text(json.dumps(index))
    with pytest.raises(ValueError, match=match):
        read_file(tmp_path)


@pytest.mark.parametrize('config,match', [
    ('{"model_type": "convnext", "x": ' + '[' * 100_000 + ']' * 100_000 +
     '}', 'nests more than'),
    ('{"model_type": "convnext", "depths": 4}', 'depths a list of ints'),
    ('{"model_type": "convnext", "num_stages": "4"}', 'num_stages must be'),
    ('{"model_type": ["convnext"]}', "describes a"),
    ('[1, 2]', 'not a JSON object'),
])
def test_hugging_face_config_is_checked(tmp_path, config, match):
    (tmp_path / 'config.json').write_text(config)
    with pytest.raises(ValueError, match=match):
        read_file(tmp_path)


def test_mmengine_checkpoints_keep_their_metadata(tmp_path):
    """A module's state dict keeps its ``_metadata`` (versions that
    ``load_state_dict`` reads), and nothing else can be set on a dict."""
    model = nn.BatchNorm2d(3)
    path = write(tmp_path, C.saved({'state_dict': model.state_dict()}))
    loaded = safe_torch_load(path)['state_dict']
    assert loaded._metadata == model.state_dict()._metadata
    evil = C.glob('collections', 'OrderedDict') + P.EMPTY_TUPLE + P.REDUCE + \
        C.dict_of(C.text('keys'), P.NONE) + P.BUILD
    with pytest.raises(UnsafeCheckpointError, match='_metadata'):
        safe_torch_load(write(tmp_path, C.torch_zip(C.program(evil)),
                              'evil.pth'))
    load_checkpoint(nn.BatchNorm2d(3), str(path))


def test_tensors_cannot_reach_past_their_storage(tmp_path):
    storage = P.MARK + C.text('storage') + C.glob('torch', 'FloatStorage') + \
        C.text('0') + C.text('cpu') + P.BININT1 + b'\x04' + P.TUPLE + \
        P.BINPERSID
    for offset, size, stride in ((0, 5, 1), (3, 2, 1), (0, 1 << 40, 0),
                                 (0, 2, -1)):
        body = (C.glob('torch._utils', '_rebuild_tensor_v2') + P.MARK +
                storage + C.long1(offset) + C.long1(size) + P.TUPLE1 +
                C.long1(stride) + P.TUPLE1 + P.NEWFALSE +
                C.glob('collections', 'OrderedDict') + P.EMPTY_TUPLE +
                P.REDUCE + P.TUPLE + P.REDUCE)
        path = write(tmp_path, C.torch_zip(C.program(body),
                                           storages={'0': bytes(16)}))
        with pytest.raises(UnsafeCheckpointError, match='storage|strides'):
            safe_torch_load(path)


def _shared_levels(levels, width, kind=list):
    """``levels`` containers each holding the one below ``width`` times:
    a few hundred bytes whose tree has width**levels leaves."""
    value = kind([0])
    for _ in range(levels):
        value = kind([value] * width)
    return value


def test_shared_references_are_walked_once(child_loader, tmp_path):
    """Lists 26 levels deep, each level referencing the previous three
    times (3**26 paths: hours for a walk that follows each), load in the
    child's 20 s; a tuple key built the same way, whose hash alone would
    visit 2**26 values, is refused before hashing."""
    lists = write(tmp_path, C.saved({'x': _shared_levels(26, 3)}), 'l.pth')
    for how in PATHS:
        result = child_loader.load(lists, how)
        assert result['status'] in ('loaded', 'refused'), (how, result)
        if result['status'] == 'refused':  # not a state dict, in one line
            assert 'nest' not in result['message'], result
    key = write(tmp_path, C.saved({_shared_levels(26, 2, tuple): 1}),
                'k.pth')
    refused_in_children(child_loader, key, 'hashing its dict keys')


def _legacy_announcing(nbytes: int) -> bytes:
    """A legacy file whose one tensor's storage announces ``nbytes`` (as
    float32 elements) and holds 16."""
    out = io.BytesIO()
    torch.save({'w': torch.zeros(4)}, out,
               _use_new_zipfile_serialization=False)
    data = out.getvalue()
    at = data.index(b'cpu') + 5  # BININT1 4: the storage's numel
    assert data[at:at + 2] == b'K\x04'
    return data[:at] + P.BININT + struct.pack('<i', nbytes // 4) + \
        data[at + 2:]


def _zip_record_announcing(nbytes: int) -> bytes:
    """A zip checkpoint whose stored storage record announces ``nbytes``
    in its headers and holds 16."""
    data = bytearray(C.torch_zip(
        C.program(C.glob('collections', 'OrderedDict') + P.EMPTY_TUPLE +
                  P.REDUCE), storages={'0': bytes(16)}))
    for signature, size_at, name_at in ((b'PK\x03\x04', 22, 26),
                                        (b'PK\x01\x02', 24, 28)):
        at = -1
        while True:
            at = data.index(signature, at + 1)
            length = struct.unpack('<H', data[at + name_at:at + name_at + 2])
            start = at + (30 if signature == b'PK\x03\x04' else 46)
            if data[start:start + length[0]] == b'archive/data/0':
                data[at + size_at:at + size_at + 4] = struct.pack('<L', nbytes)
                break
    return bytes(data)


def test_nothing_is_allocated_before_the_bytes_exist(tmp_path):
    """A 368-byte legacy file announcing a 1 GiB storage and a zip whose
    stored record claims 2 GiB are refused with no allocation of that
    size (today's peak: the file's size)."""
    import tracemalloc
    for name, data, match in (
            ('legacy.pth', _legacy_announcing(1 << 30), 'announce'),
            ('zip.pth', _zip_record_announcing(1 << 31), 'announces')):
        path = write(tmp_path, data, name)
        tracemalloc.start()
        try:
            with pytest.raises(CheckpointFileError, match=match):
                safe_torch_load(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, (name, peak)


def test_json_nesting_is_checked_in_constant_memory():
    """The nesting check over a 10 MiB safetensors-like header keeps a
    count, not a copy (it cost ~120 bytes per header byte)."""
    import tracemalloc
    from convnext_mm.checkpoints.safe_load import _check_nesting
    header = json.dumps({f'blocks.{i}.weight': {
        'dtype': 'F32', 'shape': [3, 3], 'data_offsets': [0, 36]}
        for i in range(110_000)})
    tracemalloc.start()
    try:
        _check_nesting(header, 'header')
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    for text, deep in (('[' * 33 + ']' * 33, True), ('"' + '[' * 40 + '"', False),
                       ('["\\"' + '[' * 40 + '"]', False)):
        if deep:
            with pytest.raises(CheckpointFileError, match='nests more than'):
                _check_nesting(text, 'header')
        else:
            _check_nesting(text, 'header')


def _rebuilt(entry: bytes, args: bytes) -> bytes:
    return C.program(C.dict_of(C.text('x'), entry + args + P.REDUCE))


@pytest.mark.parametrize('body,match', [
    (_rebuilt(C.glob('torch', 'device'), C.text('abcd') + P.TUPLE1),
     'not a device type'),
    (_rebuilt(C.glob('torch', 'device'),
              C.text('cuda') + P.BININT + struct.pack('<i', -1) + P.TUPLE2),
     'torch.device index -1'),
    (_rebuilt(C.glob('torch', 'device'), C.text('cuda:300') + P.TUPLE1),
     'torch.device index 300'),
    (_rebuilt(C.glob('torch._utils', '_rebuild_meta_tensor_no_storage'),
              C.glob('torch', 'float32') + C.long1(1 << 61) +
              C.long1(1 << 61) + P.TUPLE2 + P.BININT1 + b'\x01' +
              P.BININT1 + b'\x01' + P.TUPLE2 + P.TUPLE3), 'meta tensor'),
    (C.program(C.glob('collections', 'OrderedDict') + P.EMPTY_TUPLE +
               P.REDUCE + P.BININT1 + b'\x07' + P.BUILD),
     'BUILD .setting state. on an OrderedDict'),
], ids=['device-type', 'device-index', 'device-index-in-name',
        'meta-sizes-overflow', 'build-on-ordereddict'])
def test_odd_values_are_one_line_naming_the_file(tmp_path, body, match):
    path = write(tmp_path, C.torch_zip(body))
    with pytest.raises(UnsafeCheckpointError, match=match) as err:
        safe_torch_load(path)
    message = str(err.value)
    assert str(path) in message and '\n' not in message, message


def test_a_record_name_with_a_nul_byte_is_refused(tmp_path):
    """zipfile cuts a name at NUL, torch's reader does not: they would
    read different records."""
    data = bytearray(C.saved({'w': torch.ones(2)}))
    name = b'archive/data/0'
    for _ in range(2):  # local header and directory entry
        at = data.index(name)
        data[at + len(name) - 1:at + len(name)] = b'\x00'
    path = write(tmp_path, bytes(data))
    with pytest.raises(CheckpointFileError, match='NUL byte'):
        safe_torch_load(path)
