"""The one door a checkpoint file comes in by: plain data and tensors, or
one line naming the file and what is wrong with it.

Three forms, recognised by content: torch files (:mod:`.torch_file`;
``torch.load`` is never called), safetensors files (the JSON header checked
here, then the ``safetensors`` library reads the tensors), and Hugging Face
``save_pretrained`` folders (a four-stage ConvNeXt, V2 or UperNet-with-
ConvNeXt ``config.json`` beside its weights, sharded or not). Every JSON
document is bounded in size and nesting before it is parsed.
"""
import json
import math
import os
import os.path as osp
import re
import struct
from collections import OrderedDict
from typing import Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import (CheckpointFileError, CheckpointTooCostlyError,
                      TruncatedError)
from . import torch_file
from .vocabulary import KIND_REFUSAL, MAX_DIMS

MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
MAX_CONFIG = 1 << 20
MAX_INDEX = 64 << 20
MAX_JSON_DEPTH = 32
_HF_WEIGHTS = ('model.safetensors', 'model.safetensors.index.json',
               'pytorch_model.bin', 'pytorch_model.bin.index.json')
# safetensors dtype codes that hold real floats, integers and bools
_SAFETENSORS_DTYPES = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8,
                       'I32': 4, 'I16': 2, 'I8': 1, 'U64': 8, 'U32': 4,
                       'U16': 2, 'U8': 1, 'BOOL': 1}
_JSON_SIGNIFICANT = re.compile(r'[\[\]{}"\\]')
_TRUNCATED = ('{} is a truncated safetensors file: its header {}, the file '
              'holds {:,} (an interrupted download or save?); fetch or save '
              'it again')


def _checked_path(path) -> str:
    path = osp.expanduser(os.fspath(path))
    if osp.isdir(path):
        raise IsADirectoryError(
            f'checkpoint {path} is a directory; give the checkpoint file '
            'inside it (.pth or .safetensors), or a Hugging Face '
            'save_pretrained folder (config.json + model.safetensors)')
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    return path


def safe_torch_load(file, map_location=None):
    """Read a torch checkpoint (a path or a seekable binary file) into
    tensors, plain containers, numpy values and mmengine training state.

    Raises:
        FileNotFoundError: ``file`` is a path that does not exist.
        UnsafeCheckpointError: the file asks for anything else (code, other
            classes), or is in torch's legacy ``.tar`` format.
        ValueError: not a torch checkpoint, truncated, malformed, or over a
            bound on the time or memory it may cost.
    """
    where = 'the checkpoint'
    if isinstance(file, (str, os.PathLike)):
        file = where = _checked_path(file)
    try:
        return torch_file.load(file, map_location, where)
    except MemoryError:
        raise CheckpointTooCostlyError(
            f'{where}: loading it needs more memory than this machine '
            'has') from None


def _check_nesting(text: str, where: str) -> None:
    """Refuse JSON nested past :data:`MAX_JSON_DEPTH` (the parser recurses),
    in one pass over the brackets, quotes and backslashes, keeping nothing
    but a count."""
    depth, in_string, escaped = 0, False, -1
    for match in _JSON_SIGNIFICANT.finditer(text):
        at, char = match.start(), match.group()
        if at == escaped:  # the character a backslash escapes
            continue
        if in_string:
            if char == '\\':
                escaped = at + 1
            in_string = char != '"'
        elif char == '"':
            in_string = True
        elif char in '[{':
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise CheckpointFileError(
                    f'{where} nests more than {MAX_JSON_DEPTH} levels deep; '
                    'no checkpoint metadata does')
        elif char in ']}':
            depth -= 1


def _parse_json(raw: bytes, where: str, what: str = 'a JSON object'):
    """``json.loads`` after checking the nesting; the value must be a
    dict."""
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as err:
        raise CheckpointFileError(f'{where} is not UTF-8 JSON ({err})') \
            from None
    _check_nesting(text, where)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CheckpointFileError(f'{where} is not valid JSON ({err})') \
            from None
    if not isinstance(value, dict):
        raise CheckpointFileError(f'{where} is not {what}')
    return value


def _read_json(path: str, limit: int, what: str, *shape):
    size = osp.getsize(path)
    if size > limit:
        raise CheckpointFileError(f'{path}: a {size:,}-byte {what}, over the '
                                  f'{limit:,} bytes any checkpoint needs')
    with open(path, 'rb') as f:
        return _parse_json(f.read(limit + 1), path, *shape)


# --- safetensors -------------------------------------------------------------

def is_safetensors(path: str) -> bool:
    """Whether ``path`` starts as a safetensors file does: a little-endian
    u64 header length, then the header's opening brace."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and \
        2 <= struct.unpack('<Q', head[:8])[0] <= MAX_HEADER


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU, in file order, once
    its header is checked: every entry a real dtype, a shape and offsets
    inside the file that its bytes fill."""
    size = osp.getsize(path)
    with open(path, 'rb') as f:
        length = struct.unpack('<Q', f.read(8))[0]
        if 8 + length > size:
            raise TruncatedError(_TRUNCATED.format(
                path, f'alone is {length:,} bytes', size))
        header = _parse_json(f.read(length), f'{path} (safetensors header)',
                             'a safetensors header: a JSON object')
    data = size - 8 - length
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        what = f'{path}: safetensors entry {name[:80]!r}'
        if not isinstance(entry, dict) or not isinstance(
                entry.get('dtype'), str) or not isinstance(
                    entry.get('shape'), list) or not isinstance(
                        entry.get('data_offsets'), list) or len(
                            entry['data_offsets']) != 2:
            raise CheckpointFileError(f'{what} is not a dtype, shape and '
                                      'data_offsets')
        if entry['dtype'] not in _SAFETENSORS_DTYPES:
            raise CheckpointFileError(f'{path}: {name[:80]} holds ' +
                                      KIND_REFUSAL.format(name=entry['dtype']))
        shape, (start, end) = entry['shape'], entry['data_offsets']
        if not all(type(n) is int and n >= 0 for n in shape + [start, end]) \
                or start > end or len(shape) > MAX_DIMS:
            raise CheckpointFileError(f'{what} has a malformed shape or '
                                      'data_offsets')
        if end > data:
            raise TruncatedError(_TRUNCATED.format(
                path, f'describes {end:,} bytes of tensor data', data))
        if math.prod(shape) * _SAFETENSORS_DTYPES[entry['dtype']] != \
                end - start:
            raise CheckpointFileError(f'{what} of shape {shape} does not '
                                      f'fill its {end - start:,} bytes')
    try:
        tensors = load_file(path, device='cpu')
    except (SafetensorError, ValueError, OverflowError, MemoryError) as err:
        raise CheckpointFileError(f'{path} is not a valid safetensors file '
                                  f'({err})') from None
    return OrderedDict((k, tensors[k]) for k in header if k in tensors)


# --- Hugging Face folders ----------------------------------------------------

def _check_hf_config(folder: str) -> None:
    """A ``save_pretrained`` config of a ConvNeXt (V1/V2), or of an UperNet
    with one, of four stages."""
    path = osp.join(folder, 'config.json')
    config = _read_json(path, MAX_CONFIG, 'config')
    model = config.get('backbone_config') if config.get(
        'model_type') == 'upernet' else config
    kind = model.get('model_type') if isinstance(model, dict) else None
    if kind not in ('convnext', 'convnextv2'):
        named = kind if isinstance(kind, str) else config.get('model_type')
        raise CheckpointFileError(
            f'{path} describes a {str(named)[:40]!r} model; convnext_mm '
            'reads Hugging Face ConvNext, ConvNextV2 and UperNet-with-'
            'ConvNext checkpoints')
    stages, depths = model.get('num_stages', 4), model.get('depths', [0] * 4)
    if type(stages) is not int or not isinstance(depths, list) or not all(
            type(d) is int for d in depths):
        raise CheckpointFileError(f'{path}: num_stages must be an int and '
                                  'depths a list of ints')
    if stages != 4 or len(depths) != 4:
        raise CheckpointFileError(
            f'{path} has num_stages={stages} (depths {depths}); the ConvNeXt '
            'of detection and segmentation has 4 stages: use a 4-stage '
            'ConvNeXt checkpoint')


def _shards(folder: str, index_path: str):
    what = 'an object whose weight_map maps tensor names to shard file names'
    weight_map = _read_json(index_path, MAX_INDEX, 'index', what).get(
        'weight_map')
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in weight_map.items()):
        raise CheckpointFileError(f'{index_path} is not {what}')
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if shard in ('', '.', '..') or osp.basename(shard) != shard or \
                '\\' in shard or '\0' in shard:
            raise CheckpointFileError(
                f'{index_path} names a shard that is not a file name inside '
                f'its folder: {shard[:80]!r}')
        if not osp.isfile(osp.join(folder, shard)):
            raise FileNotFoundError(f'{index_path} names shard {shard}, '
                                    f'which is not a file in {folder}')
    return [osp.join(folder, shard) for shard in shards]


def read_file(path, map_location=None, folders: bool = True):
    """Read a checkpoint file (or, with ``folders``, a Hugging Face folder)
    without running code.

    Returns what the file holds: a torch checkpoint object, or a dict of
    tensors for safetensors and Hugging Face folders.
    """
    path = osp.expanduser(os.fspath(path))
    if folders and osp.isfile(osp.join(path, 'config.json')):
        _check_hf_config(path)
        for name in _HF_WEIGHTS:
            weights = osp.join(path, name)
            if not osp.isfile(weights):
                continue
            if not name.endswith('.index.json'):
                return read_file(weights, map_location, folders=False)
            state = OrderedDict()
            for shard in _shards(path, weights):
                state.update(read_file(shard, map_location, folders=False))
            return state
        raise FileNotFoundError(f'{path} has a config.json but none of '
                                f'{", ".join(_HF_WEIGHTS)}')
    path = _checked_path(path)
    if not is_safetensors(path):
        return safe_torch_load(path, map_location=map_location)
    state = read_safetensors(path)
    if isinstance(map_location, (str, torch.device)):
        state = OrderedDict((k, v.to(map_location)) for k, v in state.items())
    return state
