#!/usr/bin/env python
"""Convert a ConvNeXt checkpoint of any known layout to convnext_mm's, offline.

    python tools/convert_checkpoint.py SRC DST [--force]

SRC may be the authors' classification or detection/segmentation release, an
mmpretrain/mmcls, timm or torchvision checkpoint. DST holds
``{'state_dict': {'backbone.<name>': tensor}, 'meta': {...}}``, which
``init_cfg=dict(type='Pretrained', checkpoint=DST)`` and mmengine's
``load_checkpoint(..., revise_keys=...)`` both read. Loading needs no
conversion (init_cfg recognises every layout); converting once saves work
when the same weights are loaded many times, or strips a large file down to
its backbone.
"""
import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convnext_mm.checkpoints import (LAYOUT_DESCRIPTIONS,  # noqa: E402
                                     infer_arch, read_checkpoint,
                                     to_convnext_mm)
from convnext_mm.models import find_arch  # noqa: E402


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='checkpoint path or http(s) URL')
    parser.add_argument('dst', help='output .pth path')
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    args = parser.parse_args()
    dst = Path(args.dst)
    if dst.exists() and not args.force:
        sys.exit(f'error: {dst} exists; pass --force to overwrite it')
    try:
        state, dropped, layout = to_convnext_mm(read_checkpoint(args.src))
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {args.src}: {err}')
    depths, channels = infer_arch(state)
    arch = find_arch(depths, channels) or \
        f'custom (depths {list(depths)}, channels {list(channels)})'
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + '.partial')
    torch.save(
        dict(
            state_dict={f'backbone.{k}': v
                        for k, v in state.items()},
            meta=dict(
                source=str(args.src),
                source_layout=layout,
                arch=arch,
                use_grn=any('.grn.' in k for k in state))), tmp)
    os.replace(tmp, dst)  # a crash never leaves a half-written DST
    print(f'{args.src}: {LAYOUT_DESCRIPTIONS[layout]}, ConvNeXt arch {arch}')
    print(f'wrote {len(state)} backbone tensors to {dst}; left out '
          f'{len(dropped)} others (heads, necks)')


if __name__ == '__main__':
    main()
