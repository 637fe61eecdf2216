#!/usr/bin/env python
"""Convert a ConvNeXt checkpoint of any known layout to convnext_mm's, offline.

    python tools/convert_checkpoint.py SRC DST [--format pth|safetensors]
                                       [--force] [--trusted]

SRC may be the authors' classification or detection/segmentation release
(V1 or V2), an mmpretrain/mmcls, timm, torchvision or Hugging Face
transformers checkpoint, as a torch or safetensors file or a Hugging Face
``save_pretrained`` folder. DST holds the backbone tensors under
``backbone.<name>``: a torch file ``{'state_dict': ..., 'meta': ...}``, or a
safetensors file (no pickle; the format is chosen by ``--format``, else by
DST's extension) with the same information as string metadata. A
classifier's final norm is kept as ``backbone.norm.*``, so loading DST starts
where loading SRC does. ``init_cfg=dict(type='Pretrained', checkpoint=DST)``
and mmengine's ``load_checkpoint(..., revise_keys=...)`` both read it.
Loading needs no conversion (init_cfg recognises every layout); converting
once saves work
when the same weights are loaded many times, or strips a large file down to
its backbone.

SRC is read as untrusted input (see convnext_mm.checkpoints.safe_load) and
its weights are checked (no NaN/Inf, integer or meta tensors) before DST is
written; DST appears only when complete. ``--trusted`` reads a file the safe
reader refuses (torch's legacy ``.tar`` format, objects of other classes)
with ``torch.load(weights_only=False)``, which runs the file's pickle: only
for a file you made or vouch for; DST is then a file every tool reads.
"""
from pathlib import Path

import torch

import _tool  # noqa: E402  (first: checkout on sys.path, warnings)

from convnext_mm.arch import find_arch  # noqa: E402
from convnext_mm.checkpoints import (LAYOUTS, infer_arch,  # noqa: E402
                                     read_checkpoint, to_convnext_mm)
from convnext_mm.checkpoints.report import bad_weight  # noqa: E402
from convnext_mm.checkpoints.saving import (atomic_file,  # noqa: E402
                                            write_safetensors)
from convnext_mm.errors import user_errors  # noqa: E402


def convert(src: str, dst: Path, force: bool = False,
            fmt: str = None, trusted: bool = False) -> None:
    if dst.is_dir():
        raise IsADirectoryError(f'{dst} is a directory; give the output '
                                f'file path, e.g. {dst}/converted.pth')
    if dst.exists() and not force:
        raise FileExistsError(f'{dst} exists; pass --force to overwrite it')
    if trusted:  # the user vouches for SRC: its pickle runs
        checkpoint = torch.load(src, map_location='cpu', weights_only=False)
    else:
        checkpoint = read_checkpoint(src)  # its errors name the file
    try:
        state, dropped, layout = to_convnext_mm(checkpoint)
    except ValueError as err:
        raise ValueError(f'{src}: {err}') from None
    for name, value in state.items():
        why = bad_weight(name, value)
        if why:
            raise ValueError(f'{src}: {why}; refusing to convert it')
    depths, channels = infer_arch(state)
    arch = find_arch(depths, channels) or \
        f'custom (depths {list(depths)}, channels {list(channels)})'
    fmt = fmt or ('safetensors' if dst.suffix == '.safetensors' else 'pth')
    weights = {f'backbone.{k}': v for k, v in state.items()}
    meta = dict(source=str(src), source_layout=layout, arch=arch,
                use_grn=any('.grn.' in k for k in state))
    # a crash never leaves a half-written DST, and a DST that appeared while
    # SRC was read is not overwritten without --force
    with atomic_file(dst, overwrite=force) as out:
        if fmt == 'safetensors':
            write_safetensors(weights, out, metadata=meta)
        else:
            torch.save(dict(state_dict=weights, meta=meta), out)
    print(f'{src}: {LAYOUTS[layout].description}, ConvNeXt arch {arch}')
    print(f'wrote {len(state)} backbone tensors to {dst}; left out '
          f'{len(dropped)} others (heads, necks)')


def main(argv=None):
    parser = _tool.parser(
        __doc__, 'python tools/convert_checkpoint.py convnext_tiny_1k_224.pth '
        'convnext_t.safetensors',
        'python tools/convert_checkpoint.py ./convnext-tiny-224/ '
        'convnext_t_from_hf.pth   # a transformers folder')
    parser.add_argument('src', help='checkpoint file, Hugging Face folder or '
                        'http(s) URL')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument('--format', choices=['pth', 'safetensors'],
                        help='output format (default: from the extension '
                        'of DST, .safetensors or else pth)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    parser.add_argument('--trusted', action='store_true',
                        help='read SRC with torch.load(weights_only=False), '
                        'which runs its pickle: only for a file you trust '
                        'that the safe reader refuses')
    args = parser.parse_args(argv)
    with user_errors():
        convert(args.src, Path(args.dst), args.force, args.format,
                args.trusted)


if __name__ == '__main__':
    main()
