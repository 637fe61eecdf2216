"""One read, one report: the pre-flight check and the load read a checkpoint
once, and say the same thing about it."""
import torch

from convnext_mm.checkpoints import (examine, load_pretrained, prepare,
                                     sources)
from convnext_mm.models import ConvNeXt
from helpers import captured_log, randomise_


class Counted:
    """Counts the files read through the safe door."""

    def __init__(self, monkeypatch):
        self.paths = []
        real = sources.read_file

        def counted(path, *args, **kwargs):
            self.paths.append(str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(sources, 'read_file', counted)


def _checkpoint(tmp_path, **arch):
    source = randomise_(ConvNeXt('atto', **arch))
    path = tmp_path / 'atto.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in
                               source.state_dict().items()}}, path)
    return source, path


def test_preflight_and_load_read_once_and_report_alike(tmp_path,
                                                       monkeypatch):
    reads = Counted(monkeypatch)
    source, path = _checkpoint(tmp_path)
    with torch.device('meta'):
        shapes_only = ConvNeXt('atto')
    report = prepare(shapes_only, str(path))
    model = ConvNeXt('atto')
    with captured_log() as log:
        result = load_pretrained(model, str(path))
    assert reads.paths == [str(path)]
    assert '\n'.join(report.lines()) in log
    assert result['loaded'] == report.loaded and not result['fresh']
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_changed_file_is_read_again(tmp_path, monkeypatch):
    reads = Counted(monkeypatch)
    _, path = _checkpoint(tmp_path)
    prepare(ConvNeXt('atto'), str(path))
    _checkpoint(tmp_path)  # rewritten between the check and the load
    load_pretrained(ConvNeXt('atto'), str(path))
    assert reads.paths == [str(path)] * 2


def test_a_whole_model_checkpoint_is_read_once(tmp_path, monkeypatch):
    from mmengine.runner.checkpoint import load_checkpoint

    class Whole(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.backbone = ConvNeXt('atto')
            self.head = torch.nn.Linear(320, 3)

    reads = Counted(monkeypatch)
    trained = randomise_(Whole())
    path = tmp_path / 'whole.pth'
    torch.save({'state_dict': trained.state_dict(), 'meta': {}}, path)
    report = prepare(Whole(), str(path))
    assert not report.fresh and not report.left_out
    model = Whole()
    load_checkpoint(model, str(path), map_location='cpu')
    assert reads.paths == [str(path)]
    assert torch.equal(model.head.weight, trained.head.weight)


def test_the_report_names_what_loads_stays_fresh_and_is_left_out(tmp_path):
    source, _ = _checkpoint(tmp_path)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()
             if not k.startswith('norm')}
    state['head.fc.weight'] = torch.zeros(2, 2)
    report = examine(ConvNeXt('atto'), {'state_dict': state}, 'mine.pth')
    assert report.fresh == [f'norm{i}.{p}' for i in range(4)
                            for p in ('weight', 'bias')]
    assert report.left_out == ['head.fc.weight'] and not report.problems
    lines = report.lines()
    assert lines[0].startswith('ConvNeXt: mine.pth: layout')
    assert 'fresh (not in the checkpoint): norm0 (2), norm1 (2)' in lines[2]
    assert 'left out (not part of this backbone): head (1)' in lines[3]
    state['backbone.stages.0.0.gamma'] = torch.full((40, ), float('nan'))
    report = examine(ConvNeXt('atto'), {'state_dict': state}, 'mine.pth')
    assert report.problems and 'NaN' in report.problems[0]
