#!/usr/bin/env python
"""Parameters and FLOPs of configs, counted as the ConvNeXt paper counted.

    python tools/get_flops.py CONFIG [CONFIG ...] [--shape H W]

No dataset is needed. The input defaults to the paper's: 1280x800 for
detectors, 4 crop heights x crop width for segmentors (2048x512, 2560x640),
the test crop for classifiers. Where the paper reports the config's model,
its numbers are printed beside ours. FLOPs follow mmcv 1.x's counter (see
``convnext_mm/analysis/complexity.py``), on mmdet 2.x's dummy forward for
detectors (mask heads on the first 100 of 1000 proposals).
"""
import warnings

import _tool  # noqa: E402  (checkout on sys.path, warnings)
warnings.filterwarnings('ignore', category=UserWarning)

from mmengine.logging import MMLogger  # noqa: E402

from convnext_mm.analysis.measure import measure_config  # noqa: E402
from convnext_mm.errors import user_errors  # noqa: E402


def main(argv=None):
    parser = _tool.parser(__doc__)
    parser.add_argument('configs', nargs='+', help='config files')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default: the paper\'s)')
    args = parser.parse_args(argv)
    MMLogger.get_instance('get_flops', log_level='WARNING')
    print('| config | input (HxW) | params (M) | paper | GFLOPs | paper | '
          'FLOPs vs paper |')
    print('|---|---|---|---|---|---|---|')
    for config in args.configs:
        with user_errors():
            row = measure_config(config, args.shape)
        name, shape, params, gflops, paper = (row[k] for k in (
            'name', 'shape', 'params', 'gflops', 'paper'))
        if paper:
            deviation = f'{100 * (gflops / paper["flops"] - 1):+.2f}%'
            p_params, p_flops = f'{paper["params"] or "-"}', \
                f'{paper["flops"]}'
        else:
            deviation = p_params = p_flops = '-'
        print(f'| {name} | {shape[0]}x{shape[1]} | {params:.1f} | '
              f'{p_params} | {gflops:.1f} | {p_flops} | {deviation} |',
              flush=True)


if __name__ == '__main__':
    main()
