"""The safe reader against ``torch.load`` on legitimate files: a generated
corpus (every dtype torch saves that the reader reads, views, shared
storages, pickle protocols 2-5, legacy and zip, an mmengine runner's
checkpoint with optimizer, scheduler, message hub and EMA, timm and
transformers saves, the ConvNeXt authors' training container) loaded through
each entry point and compared with torch's own load: values bitwise, dtype,
shape, strides and offset, storage sharing, Parameter or Tensor, container
types and key order."""
import argparse
import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

import convnext_mm  # noqa: F401  (installs the safe loaders)
from convnext_mm.checkpoints import read_file, safe_torch_load

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16,
          torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
          torch.uint16, torch.uint32, torch.uint64, torch.bool)
ENTRY_POINTS = {
    'read_file': read_file,
    'safe_torch_load': safe_torch_load,
    'mmengine': lambda path: _load_checkpoint(str(path), map_location='cpu'),
}


def _tensor(dtype, shape=(3, 4), seed=0):
    gen = torch.Generator().manual_seed(seed)
    if dtype is torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 100).to(dtype)
    return torch.randint(0, 100, shape, generator=gen).to(dtype)


def _views():
    base = torch.arange(24, dtype=torch.float32)
    grid = base.view(4, 6)
    return OrderedDict(
        base=base, grid=grid, transposed=grid.t(), sliced=grid[1:, 2:5],
        expanded=torch.ones(1, 5).expand(3, 5),
        zero_stride=torch.tensor(7.).expand(4),
        unfolded=base.unfold(0, 5, 2),
        strided=torch.as_strided(base, (3, 3), (5, 2), 1),
        parameter=torch.nn.Parameter(torch.ones(2, 3)),
        frozen=torch.nn.Parameter(torch.ones(2), requires_grad=False),
        dims64=torch.zeros((1, ) * 63 + (2, )),
        empty=torch.zeros(0, 3))


# torch's own legacy reader cannot read them back (their storage is untyped)
ZIP_ONLY = (torch.uint16, torch.uint32, torch.uint64)


def _plain_corpus(zip_format):
    """Name -> object: what torch.save writes for each kind of value."""
    tensors = OrderedDict((str(d).split('.')[1], _tensor(d, seed=i))
                          for i, d in enumerate(DTYPES)
                          if zip_format or d not in ZIP_ONLY)
    shared = torch.randn(10)
    return {
        'dtypes': tensors,
        'bare_dtypes': [torch.uint16, torch.uint32, torch.uint64,
                        torch.bfloat16, torch.bool],
        'views': _views(),
        'shared': {'a': shared, 'b': shared[2:5], 'c': [shared, shared]},
        'numpy': {'array': np.arange(6, dtype=np.int16).reshape(2, 3),
                  'fortran': np.asfortranarray(np.ones((2, 3))),
                  'scalar': np.float32(1.5), 'str': np.str_('abc'),
                  'empty_str': np.str_(''), 'empty_bytes': np.bytes_(b''),
                  'dtype': np.dtype('<u2')},
        'python': {'tuple': (1, 2.5, 'x', b'y', None, True), 'set': {1, 2},
                   'frozenset': frozenset({'a'}), 'nested': [[[1]]],
                   'big_int': 1 << 80, 'ordered': OrderedDict(b=1, a=2),
                   'device': torch.device('cpu'), 'size': torch.Size([2, 3])},
        'authors_training': {
            'model': {'stem.weight': torch.randn(4, 3, 2, 2)},
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1,
                                                         'params': [0]}]},
            'epoch': 3, 'scaler': {'scale': 65536.0, '_growth_tracker': 0},
            'args': argparse.Namespace(lr=4e-3, model='convnext_tiny',
                                       drop_path=0.1, input_size=224)},
    }


def _saved(obj, protocol, zip_format):
    out = io.BytesIO()
    torch.save(obj, out, pickle_protocol=protocol,
               _use_new_zipfile_serialization=zip_format)
    return out.getvalue()


def _bytes(storage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def assert_same(ours, theirs, where='', storages=None):
    """Equal as loaded objects: see the module docstring."""
    storages = {} if storages is None else storages
    assert type(ours) is type(theirs), (where, type(ours), type(theirs))
    if isinstance(theirs, torch.Tensor):
        assert (ours.dtype, ours.shape, ours.stride(),
                ours.storage_offset(), ours.requires_grad) == (
                    theirs.dtype, theirs.shape, theirs.stride(),
                    theirs.storage_offset(), theirs.requires_grad), where
        a, b = ours.untyped_storage(), theirs.untyped_storage()
        assert torch.equal(_bytes(a), _bytes(b)), where  # NaN included
        # the same storages are shared, and no others
        known = storages.setdefault(b.data_ptr(), a.data_ptr())
        assert known == a.data_ptr(), f'{where}: storage sharing differs'
        assert len(set(storages.values())) == len(storages), where
    elif isinstance(theirs, np.ndarray):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert ours.tobytes(order='A') == theirs.tobytes(order='A'), where
        assert ours.flags.f_contiguous == theirs.flags.f_contiguous, where
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs), f'{where}: keys or their order'
        for key in theirs:
            assert_same(ours[key], theirs[key], f'{where}/{key}', storages)
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f'{where}[{i}]', storages)
    elif isinstance(theirs, (argparse.Namespace, HistoryBuffer)):
        assert_same(vars(ours), vars(theirs), where, storages)
    else:
        assert ours == theirs or (ours != ours and theirs != theirs), where


def _check_all_entry_points(path):
    theirs = torch.load(path, map_location='cpu', weights_only=False)
    for name, load in ENTRY_POINTS.items():
        assert_same(load(path), theirs, name)


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_generated_corpus_reads_as_torch_reads_it(tmp_path, protocol,
                                                  zip_format):
    for name, obj in _plain_corpus(zip_format).items():
        path = tmp_path / f'{name}.pth'
        path.write_bytes(_saved(obj, protocol, zip_format))
        _check_all_entry_points(path)


def test_a_runner_checkpoint_reads_as_torch_reads_it(trained_classifier):
    """mmengine's own save: optimizer, parameter schedulers, message hub
    (HistoryBuffers), EMA (the classifier config keeps one)."""
    _, work, _ = trained_classifier
    path = sorted(work.glob('iter_*.pth'))[-1]
    checkpoint = torch.load(path, weights_only=False)
    assert {'optimizer', 'param_schedulers', 'message_hub', 'ema_state_dict'
            } <= set(checkpoint), sorted(checkpoint)
    _check_all_entry_points(path)


def test_timm_and_transformers_saves_read_as_torch_reads_them(tmp_path):
    import timm
    from transformers import ConvNextConfig, ConvNextModel
    model = timm.create_model('convnext_atto', pretrained=False)
    torch.save(model.state_dict(), tmp_path / 'timm.pth')
    _check_all_entry_points(tmp_path / 'timm.pth')
    hf = ConvNextModel(ConvNextConfig(depths=[1, 1, 1, 1],
                                      hidden_sizes=[8, 16, 24, 32]))
    hf.save_pretrained(tmp_path / 'hf', safe_serialization=False)
    _check_all_entry_points(tmp_path / 'hf' / 'pytorch_model.bin')


def test_sharded_transformers_bin_folder_reads_whole(tmp_path):
    """``save_pretrained(..., safe_serialization=False)`` with shards: the
    ``pytorch_model.bin.index.json`` form."""
    from transformers import ConvNextConfig, ConvNextModel
    hf = ConvNextModel(ConvNextConfig(depths=[1, 1, 1, 1],
                                      hidden_sizes=[8, 16, 24, 32]))
    hf.save_pretrained(tmp_path, safe_serialization=False,
                       max_shard_size='20KB')
    assert (tmp_path / 'pytorch_model.bin.index.json').is_file()
    state = read_file(tmp_path)
    expected = hf.state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_unsigned_safetensors_read(tmp_path):
    from safetensors.torch import save_file
    tensors = {str(d): _tensor(d) for d in (torch.uint16, torch.uint32,
                                            torch.uint64)}
    save_file(tensors, tmp_path / 'u.safetensors')
    state = read_file(tmp_path / 'u.safetensors')
    for key, value in tensors.items():
        assert state[key].dtype == value.dtype and torch.equal(
            state[key], value)


def test_a_zip_with_compressed_records_reads_as_torch_reads_it(tmp_path):
    """torch never compresses, but reads a deflated copy; so do we."""
    import zipfile
    original = io.BytesIO(_saved(_plain_corpus(True)['dtypes'], 2, True))
    path = tmp_path / 'deflated.pth'
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(
            path, 'w', zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    _check_all_entry_points(path)


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_map_location_places_every_tensor_as_torch_does(legacy):
    """Storages are placed by ``map_location`` as torch.load places them,
    tensors inside tuples too, sharing kept (legacy files are filled on the
    CPU first, then read again onto the target)."""
    t = torch.arange(12.).reshape(3, 4)
    buf = io.BytesIO()
    torch.save({'a': t, 'b': (t[1], [t.t()]), 'c': torch.ones(2).long()},
               buf, _use_new_zipfile_serialization=not legacy)
    for where in ('meta', {'cpu': 'meta'}, lambda storage, _: storage):
        ours, ref = (load(io.BytesIO(buf.getvalue()), map_location=where)
                     for load in (safe_torch_load, torch.load))
        pairs = [(o['a'], o['b'][0], o['b'][1][0], o['c'])
                 for o in (ours, ref)]
        for x, y in zip(*pairs):
            assert (x.device, x.shape, x.stride()) == (y.device, y.shape,
                                                        y.stride())
            assert x.is_meta or torch.equal(x, y)
        assert pairs[0][0].is_meta or pairs[0][0].untyped_storage(
        ).data_ptr() == pairs[0][1].untyped_storage().data_ptr()
