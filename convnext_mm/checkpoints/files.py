"""Read and write checkpoint files, recognising the format by content.

Three forms are read: torch files (zip or legacy pickle, through the
weights-only loader of :mod:`.safe_load`), safetensors files (no pickle at
all: a JSON header and raw tensor bytes, as timm and Hugging Face publish
them, whatever the file is called), and Hugging Face ``save_pretrained``
directories (``config.json`` beside ``model.safetensors``, its sharded
index, or ``pytorch_model.bin``).
"""
import json
import os
import os.path as osp
import struct
from collections import OrderedDict
from typing import Dict, Optional

import torch

# the safetensors format's own limit on the JSON header
_MAX_HEADER = 100 * 1024 * 1024
_HF_WEIGHTS = ('model.safetensors', 'model.safetensors.index.json',
               'pytorch_model.bin')


def is_safetensors(path: str) -> bool:
    """Whether ``path`` starts as a safetensors file does: a little-endian
    u64 header length, then the header's opening brace."""
    with open(path, 'rb') as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b'{':
        return False
    return 2 <= struct.unpack('<Q', head[:8])[0] <= _MAX_HEADER


def _safetensors_header(path: str) -> dict:
    """The parsed header; ValueError for a truncated or malformed file."""
    size = osp.getsize(path)
    with open(path, 'rb') as f:
        length = struct.unpack('<Q', f.read(8))[0]
        if 8 + length > size:
            raise ValueError(
                f'{path} is a truncated safetensors file: its header alone '
                f'is {length} bytes, the file holds {size} (an interrupted '
                'download or save?); fetch or save it again')
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise ValueError(f'{path} looks like a safetensors file but its '
                         f'header is not valid JSON ({err})') from None
    if not isinstance(header, dict):
        raise ValueError(f'{path}: a safetensors header must be a JSON '
                         'object')
    ends = [
        v['data_offsets'][1] for k, v in header.items()
        if k != '__metadata__' and isinstance(v, dict)
        and isinstance(v.get('data_offsets'), list)
        and len(v['data_offsets']) == 2
    ]
    data = size - 8 - length
    if ends and max(ends) > data:
        raise ValueError(
            f'{path} is a truncated safetensors file: its header describes '
            f'{max(ends)} bytes of tensor data, the file holds {data} (an '
            'interrupted download or save?); fetch or save it again')
    return header


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU, in file order."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    header = _safetensors_header(path)
    try:
        tensors = load_file(path, device='cpu')
    except SafetensorError as err:
        raise ValueError(f'{path} is not a valid safetensors file '
                         f'({err})') from None
    order = [k for k in header if k != '__metadata__']
    return OrderedDict((k, tensors[k]) for k in order if k in tensors)


def write_safetensors(state: Dict[str, torch.Tensor], out,
                      metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``state`` to the open binary file ``out`` as safetensors.

    Tensors are stored contiguous and unshared (the format keeps no views).
    """
    from safetensors.torch import save
    out.write(
        save({k: v.detach().contiguous().clone()
              for k, v in state.items()},
             metadata={k: str(v)
                       for k, v in (metadata or {}).items()}))


def _hf_config(folder: str) -> dict:
    """Check a ``save_pretrained`` config: a ConvNeXt (V1/V2) or an UperNet
    with one, of four stages."""
    path = osp.join(folder, 'config.json')
    try:
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} is not a readable JSON config '
                         f'({err})') from None
    if not isinstance(config, dict):
        raise ValueError(f'{path} is not a JSON object')
    model = config.get('backbone_config') if config.get(
        'model_type') == 'upernet' else config
    kind = model.get('model_type') if isinstance(model, dict) else None
    if kind not in ('convnext', 'convnextv2'):
        raise ValueError(
            f'{path} describes a {kind or config.get("model_type")!r} model;'
            ' convnext_mm reads Hugging Face ConvNext, ConvNextV2 and '
            'UperNet-with-ConvNext checkpoints')
    stages = model.get('num_stages', 4)
    if stages != 4 or len(model.get('depths', [0] * 4)) != 4:
        raise ValueError(
            f'{path} has num_stages={stages} (depths '
            f'{model.get("depths")}); the ConvNeXt of detection and '
            'segmentation has 4 stages: use a 4-stage ConvNeXt checkpoint')
    return config


def _read_hf_folder(folder: str, map_location) -> Dict[str, torch.Tensor]:
    _hf_config(folder)
    for name in _HF_WEIGHTS:
        path = osp.join(folder, name)
        if not osp.isfile(path):
            continue
        if name.endswith('.index.json'):
            with open(path, encoding='utf-8') as f:
                weight_map = json.load(f).get('weight_map', {})
            state = OrderedDict()
            for shard in sorted(set(weight_map.values())):
                if osp.basename(shard) != shard:
                    raise ValueError(f'{path} names a shard outside its '
                                     f'folder: {shard!r}')
                state.update(read_file(osp.join(folder, shard), map_location))
            return state
        return read_file(path, map_location)
    raise FileNotFoundError(
        f'{folder} has a config.json but none of {", ".join(_HF_WEIGHTS)}')


def read_file(path: str, map_location=None):
    """Read a checkpoint file or Hugging Face folder without running code.

    Returns what the file holds: a torch checkpoint object, or a dict of
    tensors for safetensors and Hugging Face folders.
    """
    from .safe_load import safe_torch_load
    path = osp.expanduser(os.fspath(path))
    if osp.isdir(path):
        if osp.isfile(osp.join(path, 'config.json')):
            return _read_hf_folder(path, map_location)
        raise IsADirectoryError(
            f'checkpoint {path} is a directory; give the checkpoint file '
            'inside it (.pth or .safetensors), or a Hugging Face '
            'save_pretrained folder (config.json + model.safetensors)')
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if not is_safetensors(path):
        return safe_torch_load(path, map_location=map_location)
    state = read_safetensors(path)
    if isinstance(map_location, (str, torch.device)):
        state = OrderedDict(
            (k, v.to(map_location)) for k, v in state.items())
    return state


def read_for_mmengine(path: str, map_location=None):
    """:func:`read_file` for mmengine's checkpoint loaders: a whole Hugging
    Face UperNet comes back under mmseg's names, so ``load_from`` and
    ``tools/test.py`` take it as it is."""
    from mmengine.logging import print_log

    from .transformers_layouts import is_transformers_upernet, upernet_to_mmseg
    checkpoint = read_file(path, map_location=map_location)
    if isinstance(checkpoint, dict) and is_transformers_upernet(checkpoint):
        try:
            state = upernet_to_mmseg(checkpoint)
        except ValueError as err:
            raise ValueError(f'{path}: {err}') from None
        print_log(f'{path}: layout Hugging Face UperNetForSemanticSegmentation'
                  f'; {len(state)} tensors read under mmseg\'s names',
                  logger='current')
        checkpoint = dict(state_dict=state)
    return checkpoint
