#!/usr/bin/env python
"""Throughput and peak memory of our ConvNeXt against mmpretrain's, in one run.

    python benchmarks/backbone.py                 # docs/benchmarks.md's table
    python benchmarks/backbone.py --archs tiny --sizes 800x1280 --iters 2

For each arch, input size and precision (float32, bf16 autocast) it times a
forward pass (eval, no grad) and a forward+backward pass (train) of both
implementations holding the same weights, and a training pass of ours with
``with_cp=True``. Every measurement runs in a fresh subprocess; peak memory
is the growth of the process's resident-set high-water mark over the run
(reset just before it), i.e. activations, gradients and workspace. Ratios are
ours / mmpretrain for throughput, and with_cp / without for memory.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(impl, arch, with_cp=False):
    import torch
    torch.manual_seed(0)
    if impl == 'ours':
        from convnext_mm import ConvNeXt
        return ConvNeXt(arch, with_cp=with_cp)
    from mmpretrain.models import ConvNeXt
    return ConvNeXt(arch, out_indices=(0, 1, 2, 3),
                    gap_before_final_norm=False, with_cp=with_cp)


def rss_mb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def worker(impl, arch, h, w, dtype, mode, with_cp, iters):
    """Time one configuration in this process; print a JSON line."""
    import torch
    net = build(impl, arch, with_cp)
    x = torch.randn(1, 3, h, w)
    net.train(mode == 'train')
    autocast = torch.autocast('cpu', dtype=torch.bfloat16,
                              enabled=dtype == 'bf16')

    def step():
        if mode == 'train':
            with autocast:
                loss = sum(o.float().mean() for o in net(x))
            loss.backward()
            net.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast:
                net(x)

    step()  # warm-up: allocator, oneDNN kernel selection
    base = rss_mb('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the high-water mark
    start = time.perf_counter()
    for _ in range(iters):
        step()
    seconds = (time.perf_counter() - start) / iters
    print(json.dumps(dict(seconds=seconds, peak_mb=rss_mb('VmHWM') - base)))


def _run_worker(args, env=None):
    cmd = [sys.executable, __file__, '--worker'] + [str(a) for a in args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-2000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(impl, arch, size, dtype, mode, with_cp, iters):
    """Seconds per pass from a timing run, peak MB from a memory run."""
    args = [impl, arch, size[0], size[1], dtype, mode, int(with_cp)]
    timing = _run_worker(args + [iters])
    # glibc keeps freed blocks mapped, so RSS would hide what the warm-up
    # freed; with a fixed mmap threshold every tensor is its own mapping,
    # returned on free, and the high-water mark tracks live memory. This
    # slows allocation, hence the separate timing run above.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    memory = _run_worker(args + [1], env=env)
    return dict(seconds=timing['seconds'], peak_mb=memory['peak_mb'])


def max_rel_err(arch):
    """Outputs of both implementations holding the same weights."""
    import torch
    from convnext_mm.checkpoints import to_convnext_mm
    ref, ours = build('mmpretrain', arch), build('ours', arch)
    ours.load_state_dict(to_convnext_mm({'state_dict': ref.state_dict()})[0])
    ref.eval()  # mmpretrain's train() returns None: no chaining
    ours.eval()
    x = torch.randn(1, 3, 224, 320)
    with torch.no_grad():
        return max(((a - b).abs().max() / b.abs().max()).item()
                   for a, b in zip(ours(x), ref(x)))


def cpu_features() -> str:
    """The CPU and the instruction sets the fast paths depend on, as torch
    reports them."""
    import torch

    from convnext_mm.models.cpu_fused import native_bf16
    caps = torch.cpu.get_capabilities()
    flags = [k for k in ('avx2', 'avx512_f', 'avx512_bf16', 'amx_bf16',
                         'avx512_fp16', 'bf16', 'sve') if caps.get(k)]
    bf16 = ('native: bf16 autocast takes the fused kernels' if native_bf16()
            else 'emulated: bf16 autocast runs the plain ops')
    return (f"{caps.get('cpu_name', 'unknown')} "
            f"({caps.get('num_physical_cores', '?')} cores), "
            f"{', '.join(flags) or 'no SIMD flags reported'}; bf16 {bf16}")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', nargs='+', default=['tiny', 'base'])
    parser.add_argument('--sizes', nargs='+', default=['800x1280', '512x2048'],
                        help='HxW')
    parser.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'])
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--worker', nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, arch, h, w, dtype, mode, cp, iters = args.worker
        return worker(impl, arch, int(h), int(w), dtype, mode, cp == '1',
                      int(iters))

    import torch
    print(f'# ConvNeXt backbone: convnext_mm vs mmpretrain '
          f'{__import__("mmpretrain").__version__}, torch {torch.__version__},'
          f' {torch.get_num_threads()} CPU threads, batch 1, '
          f'{args.iters} timed iterations after one warm-up\n')
    print(f'- CPU: {cpu_features()}')
    for arch in args.archs:
        print(f'- {arch}: max relative output difference, same weights: '
              f'{max_rel_err(arch):.1e}')
    print('\n| arch | input | precision | pass | ours img/s | mmpretrain img/s'
          ' | speed-up | ours peak MB | mmpretrain peak MB | ours with_cp '
          'peak MB | with_cp memory saving |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for arch in args.archs:
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.split('x'))
            for dtype in args.dtypes:
                for mode in ('forward', 'train'):
                    ours = measure('ours', arch, size, dtype, mode, False,
                                   args.iters)
                    ref = measure('mmpretrain', arch, size, dtype, mode,
                                  False, args.iters)
                    cp_cells = '- | -'
                    if mode == 'train':
                        cp = measure('ours', arch, size, dtype, mode, True,
                                     args.iters)
                        saving = 1 - cp['peak_mb'] / ours['peak_mb']
                        cp_cells = f'{cp["peak_mb"]:.0f} | {saving:.0%}'
                    print(f'| {arch} | {size_text} | {dtype} | {mode} | '
                          f'{1 / ours["seconds"]:.2f} | '
                          f'{1 / ref["seconds"]:.2f} | '
                          f'{ref["seconds"] / ours["seconds"]:.2f}x | '
                          f'{ours["peak_mb"]:.0f} | {ref["peak_mb"]:.0f} | '
                          f'{cp_cells} |', flush=True)


if __name__ == '__main__':
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    main()
