"""mmengine's own training checkpoints load through the safe reader, and
anything outside its vocabulary is refused."""
import importlib
import os
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint

import convnext_mm  # noqa: F401  (installs the safe loaders)
from convnext_mm.checkpoints import UnsafeCheckpointError, safe_torch_load


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels, mode='tensor'):
        pred = self.linear(torch.stack(inputs))
        if mode == 'loss':
            return dict(loss=((pred - torch.stack(labels))**2).mean())
        return pred


class ToyDataset(torch.utils.data.Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = torch.tensor([float(i), 1.])
        return dict(inputs=x, labels=x.sum(0, keepdim=True))


def make_runner(work_dir, max_iters, **kwargs):
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=2,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        # a MultiStepLR keeps its milestones in a collections.Counter
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=2),
            dict(type='MultiStepLR', milestones=[3, 5], by_epoch=False)
        ],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=4,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        experiment_name=f'toy_{max_iters}_{os.path.basename(work_dir)}',
        **kwargs)


@pytest.fixture(scope='module')
def training_checkpoint(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('toy')
    make_runner(work_dir, max_iters=4).train()
    path = work_dir / 'iter_4.pth'
    assert path.is_file()
    return path


def test_torch_default_refuses_mmengine_checkpoints(training_checkpoint):
    # the trap this module exists for; if torch ever accepts these files by
    # default, the safe loader is no longer needed
    with pytest.raises(pickle.UnpicklingError):
        torch.load(training_checkpoint)


def test_training_checkpoint_loads_with_all_its_state(training_checkpoint):
    ckpt = safe_torch_load(training_checkpoint)
    assert set(ckpt) >= {'meta', 'state_dict', 'message_hub', 'optimizer',
                         'param_schedulers'}
    assert ckpt['meta']['iter'] == 4
    buffers = ckpt['message_hub']['log_scalars']
    assert 'train/loss' in buffers
    assert len(buffers['train/loss'].data[0]) == 4
    assert ckpt['optimizer']['state'][0]['step'].item() == 4
    milestones = ckpt['param_schedulers'][1]['milestones']
    assert dict(milestones) == {3: 1, 5: 1}


def test_loading_needs_and_changes_no_torch_allowlist(training_checkpoint,
                                                      monkeypatch):
    # our reader never calls torch.load: a torch without the scoped
    # safe_globals (2.4, the oldest --keep-torch accepts) reads the same
    monkeypatch.delattr(torch.serialization, 'safe_globals')
    # what torch itself allowlists once DTensor and dynamo are imported, as
    # in the full suite
    importlib.import_module('torch.distributed.tensor')
    before = torch.serialization.get_safe_globals()
    assert before
    ckpt = safe_torch_load(training_checkpoint)
    assert ckpt['meta']['iter'] == 4
    assert len(ckpt['message_hub']['log_scalars']['train/loss'].data[0]) == 4
    # the process-wide allowlist (a set: its order is not kept) is as it was
    assert set(torch.serialization.get_safe_globals()) == set(before)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(training_checkpoint)


def test_mmengine_load_checkpoint_and_resume(training_checkpoint, tmp_path):
    model = ToyModel()
    load_checkpoint(model, str(training_checkpoint))
    saved = safe_torch_load(training_checkpoint)['state_dict']
    assert torch.equal(model.linear.weight, saved['linear.weight'])

    runner = make_runner(tmp_path, max_iters=6, load_from=str(
        training_checkpoint), resume=True)
    runner.train()
    assert runner.iter == 6
    hub = runner.message_hub.get_scalar('train/loss')
    assert len(hub.data[0]) == 6  # 4 resumed + 2 new losses


def test_plain_state_dict_loads(tmp_path):
    path = tmp_path / 'plain.pth'
    state = ToyModel().state_dict()
    torch.save(state, path)
    loaded = safe_torch_load(path)
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


class Exploit:
    marker = None

    def __reduce__(self):
        return (os.makedirs, (self.marker, ))


def test_arbitrary_object_is_refused_and_never_runs(tmp_path):
    Exploit.marker = str(tmp_path / 'pwned')
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError, match='refusing to load '
                       'posix.makedirs|refusing to load os.makedirs'):
        safe_torch_load(path)
    # also through mmengine's loader, as Pretrained init and resume use it
    with pytest.raises(UnsafeCheckpointError, match='arbitrary code'):
        load_checkpoint(ToyModel(), str(path))
    assert not os.path.exists(Exploit.marker)


def test_unlisted_class_is_refused(tmp_path):
    path = tmp_path / 'odd.pth'
    torch.save({'meta': ToyDataset()}, path)
    with pytest.raises(UnsafeCheckpointError, match='ToyDataset'):
        safe_torch_load(path)


def test_missing_file_and_non_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        safe_torch_load(tmp_path / 'nope.pth')
    junk = tmp_path / 'notes.pth'
    junk.write_text('these are not weights')
    with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
        safe_torch_load(junk)
