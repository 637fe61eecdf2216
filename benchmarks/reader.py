#!/usr/bin/env python
"""The safe checkpoint reader against torch.load: time and peak memory.

    python benchmarks/reader.py [--work DIR] [--repeat 3]

Writes three files - a 785 MB state dict (ConvNeXt-L's 196M float32
weights), a 1.4 GB mmengine training checkpoint (ConvNeXt-B's weights, its
EMA copy and AdamW's two moments, the message hub) and a file of 100,000
small tensors - and reads each in a fresh process with
``convnext_mm.checkpoints.read_file`` and with ``torch.load`` (weights-only;
``weights_only=False`` for the training checkpoint, which torch's weights-only
reader refuses). Prints, per file, the median wall time of ``--repeat``
reads and the peak resident memory above the process's start, and their
ratios (ours / torch's), after the CPU's features. The files are read from
the page cache (each is read once before timing).
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from backbone import cpu_features  # noqa: E402  (benchmarks/backbone.py)
from tools._tool import first_sentence  # noqa: E402

# one read in a fresh process: seconds and the peak RSS above the start
CHILD = r'''
import json, sys, time
import torch
import convnext_mm
from convnext_mm.checkpoints import read_file
path, how = sys.argv[1], sys.argv[2]
def high_water():  # this process's peak RSS in KiB; ru_maxrss would
    # carry the parent's over the exec (one that just wrote 2 GB of files)
    with open('/proc/self/status') as status:
        return next(int(l.split()[1]) for l in status
                    if l.startswith('VmHWM:'))
start = high_water()
begin = time.perf_counter()
if how == 'ours':
    value = read_file(path)
else:
    value = torch.load(path, map_location='cpu', weights_only=how == 'torch')
seconds = time.perf_counter() - begin
peak = high_water() - start
print(json.dumps(dict(seconds=seconds, peak_mb=peak / 1024)))
'''


def make_files(work: Path) -> dict:
    """The three files (written once, kept in ``work``)."""
    import torch
    from convnext_mm import ConvNeXt
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    path = work / 'state_dict_785mb.pth'
    if not path.exists():
        torch.save(ConvNeXt('large').state_dict(), path)
    files['state dict (ConvNeXt-L, 785 MB)'] = (path, 'torch')
    path = work / 'training_1.4gb.pth'
    if not path.exists():
        from mmengine.logging import MessageHub
        weights = ConvNeXt('base').state_dict()
        params = [v for v in weights.values() if v.is_floating_point()]
        optimizer = {'state': {i: {'step': torch.tensor(100.),
                                   'exp_avg': torch.randn_like(p),
                                   'exp_avg_sq': torch.rand_like(p)}
                               for i, p in enumerate(params)},
                     'param_groups': [{'lr': 1e-4, 'betas': (0.9, 0.999),
                                       'weight_decay': 0.05,
                                       'params': list(range(len(params)))}]}
        hub = MessageHub.get_instance('benchmark')
        for step in range(100):
            hub.update_scalar('train/loss', 1. / (step + 1))
        torch.save({'meta': {'iter': 100, 'epoch': 1},
                    'state_dict': weights,
                    'ema_state_dict': {k: v.clone() for k, v in
                                       weights.items()},
                    'optimizer': optimizer,
                    'message_hub': hub.state_dict()}, path)
    files['mmengine training checkpoint (1.4 GB)'] = (path, 'torch_full')
    path = work / 'small_tensors_100k.pth'
    if not path.exists():
        torch.save({f't{i}': torch.randn(4) for i in range(100_000)}, path)
    files['100,000 small tensors'] = (path, 'torch')
    return files


def read(path: Path, how: str) -> dict:
    res = subprocess.run([sys.executable, '-c', CHILD, str(path), how],
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        sys.exit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument('--work', default='work_dirs/benchmark_reader')
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args()
    print(cpu_features())
    files = make_files(Path(args.work))
    print('| file | size | torch.load s | ours s | time ratio | torch.load '
          'peak MB | ours peak MB | memory ratio |')
    print('|---|---|---|---|---|---|---|---|')
    for name, (path, reference) in files.items():
        read(path, reference)  # into the page cache
        runs = {how: [read(path, how) for _ in range(args.repeat)]
                for how in (reference, 'ours')}
        seconds = {h: statistics.median(r['seconds'] for r in v)
                   for h, v in runs.items()}
        peak = {h: statistics.median(r['peak_mb'] for r in v)
                for h, v in runs.items()}
        print(f'| {name} | {path.stat().st_size / 1e6:,.0f} MB | '
              f'{seconds[reference]:.2f} | {seconds["ours"]:.2f} | '
              f'{seconds["ours"] / seconds[reference]:.2f}x | '
              f'{peak[reference]:,.0f} | {peak["ours"]:,.0f} | '
              f'{peak["ours"] / max(peak[reference], 1):.2f}x |',
              flush=True)


if __name__ == '__main__':
    main()
