#!/usr/bin/env python
"""Tables 3 and 4 of the ConvNeXt paper beside this implementation, as
Markdown.

    python tools/reproduce_tables.py [--logs WORK_DIR ...] [--fps [--amp]]
                                     [--tables 3 4] [--out report.md]

Params and FLOPs are counted on every Table 3 and Table 4 config (see
tools/get_flops.py). FPS, with ``--fps`` on a CUDA machine, is measured as
the paper did: one image at a time through the test pipeline, on the
checkpoint found in the config's work dir if any (random weights run the
same layers but keep fewer boxes). Box/mask AP and mIoU come from the test
logs under the ``--logs`` work dirs of tools/test.py runs: a run whose
model was the TTA model (``--tta``, read from the config mmengine dumped for
that run) gives the multi-scale mIoU, any other the single-scale one (COCO
AP only from single-scale runs, as Table 3); each work dir is matched to its
config by the config file mmengine writes there, or named explicitly as
``NAME=DIR``.
"""
import json
import sys
import warnings
from pathlib import Path

import _tool  # noqa: E402  (checkout on sys.path, warnings)
from _tool import ROOT  # noqa: E402

warnings.filterwarnings('ignore', category=UserWarning)

from mmengine.config import Config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402

from convnext_mm.analysis.measure import (measure_config,  # noqa: E402
                                          measure_fps)
from convnext_mm.analysis.paper import ADE20K, COCO  # noqa: E402


def multi_scale(dumped: Path) -> bool:
    """Whether the test run that dumped this config ran the multi-scale +
    flip TTA model (every ADE20K config *defines* ``tta_model``; only a
    ``--tta`` run makes it the model)."""
    if not dumped.is_file():
        return False
    model = Config.fromfile(str(dumped)).get('model') or {}
    return str(model.get('type', '')).endswith('TTAModel')


def read_results(logs):
    """{config name: {metric: value}} from tools/test.py work dirs."""
    results = {}
    for spec in logs:
        name, _, path = spec.rpartition('=')
        work = Path(path)
        if not work.is_dir():
            sys.exit(f'error: --logs {spec}: {work} is not a directory')
        if not name:
            known = [p.stem for p in work.glob('*.py')
                     if p.stem in COCO or p.stem in ADE20K]
            if len(known) != 1:
                sys.exit(f'error: --logs {spec}: cannot tell which config '
                         f'{work} belongs to; pass NAME=DIR with NAME one of '
                         f'{", ".join(list(COCO) + list(ADE20K))}')
            name = known[0]
        found = results.setdefault(name, {})
        for log in sorted(work.glob('*/*.json')):
            metrics = json.loads(log.read_text().splitlines()[-1])
            tta = multi_scale(log.parent / 'vis_data' / 'config.py')
            if 'coco/bbox_mAP' in metrics and not tta:
                found['box_ap'] = 100 * metrics['coco/bbox_mAP']
                found['mask_ap'] = 100 * metrics.get('coco/segm_mAP', 0.)
            if 'mIoU' in metrics:
                found['miou_ms' if tta else 'miou_ss'] = metrics['mIoU']
        checkpoints = sorted(work.glob('*.pth'),
                             key=lambda p: p.stat().st_mtime)
        if checkpoints:
            found['checkpoint'] = str(checkpoints[-1])
    return results


def cell(paper, ours):
    """'paper / ours', the paper's value as printed there."""
    paper = '-' if paper is None else str(paper)
    ours = '-' if ours is None else f'{ours:.1f}'
    return f'{paper} / {ours}'


def main(argv=None):
    parser = _tool.parser(__doc__)
    parser.add_argument('--logs', nargs='*', default=[],
                        help='tools/test.py work dirs, optionally NAME=DIR')
    parser.add_argument('--fps', action='store_true',
                        help='measure FPS (needs CUDA)')
    parser.add_argument('--amp', action='store_true',
                        help='FPS under fp16 autocast')
    parser.add_argument('--fps-iters', type=int, default=50)
    parser.add_argument('--tables', nargs='+', default=['3', '4'],
                        choices=['3', '4'])
    parser.add_argument('--configs', nargs='*',
                        help='only these config names (default: all rows)')
    parser.add_argument('--out', help='also write the Markdown here')
    args = parser.parse_args(argv)
    MMLogger.get_instance('reproduce_tables', log_level='WARNING')
    import torch
    if args.fps and not torch.cuda.is_available():
        sys.exit('error: --fps needs a CUDA GPU; the paper measured FPS on '
                 'one A100')
    results = read_results(args.logs)
    wanted = set(args.configs or [])

    lines = []
    for table, paper_rows in (('3', COCO), ('4', ADE20K)):
        if table not in args.tables:
            continue
        if table == '3':
            lines += [
                '### Table 3: COCO (paper / convnext_mm; FLOPs at 1280x800)',
                '', '| config | params (M) | GFLOPs | FPS | box AP | '
                'mask AP |', '|---|---|---|---|---|---|'
            ]
        else:
            lines += [
                '', '### Table 4: ADE20K (paper / convnext_mm; FLOPs at '
                '2048x512 or 2560x640)', '', '| config | params (M) | '
                'GFLOPs | mIoU single-scale | mIoU multi-scale + flip |',
                '|---|---|---|---|---|'
            ]
        for name, paper in paper_rows.items():
            if wanted and name not in wanted:
                continue
            print(f'[reproduce_tables] measuring {name}', file=sys.stderr,
                  flush=True)
            config = str(ROOT / 'configs' / f'{name}.py')
            ours = measure_config(config)
            got = results.get(name, {})
            row = (f'| {name} | {cell(paper["params"], ours["params"])} | '
                   f'{cell(paper["flops"], ours["gflops"])} | ')
            if table == '3':
                fps = measure_fps(config, got.get('checkpoint'),
                                  args.fps_iters, args.amp) \
                    if args.fps else None
                row += (f'{cell(paper["fps"], fps)} | '
                        f'{cell(paper["box_ap"], got.get("box_ap"))} | '
                        f'{cell(paper["mask_ap"], got.get("mask_ap"))} |')
            else:
                row += (f'{cell(paper["miou_ss"], got.get("miou_ss"))} | '
                        f'{cell(paper["miou_ms"], got.get("miou_ms"))} |')
            lines.append(row)
        if table == '3':
            device = torch.cuda.get_device_name() if args.fps else None
            lines += [
                '', 'FPS: ' + (
                    f'measured on one {device}, one image at a time through '
                    'the test pipeline, mixed precision '
                    f'{"on" if args.amp else "off"}' if device else
                    'not measured (run with --fps on a CUDA GPU)') +
                '; the paper\'s on one A100.'
            ]
    text = '\n'.join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + '\n')


if __name__ == '__main__':
    main()
