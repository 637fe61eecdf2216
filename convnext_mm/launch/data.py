"""Data pre-flight: a dataset that cannot give what the config asks for is
one ``error:`` line before the runner starts, not a traceback at image 3,
a silent loss of annotations, or ``need at least one array to concatenate``
after the first epoch's logs.

Checked for every dataset a run reads (wrappers unwrapped):

- the paths the config names exist (``data_root``, ``ann_file``, each
  ``data_prefix``), and folders are not empty;
- COCO-format annotations (mmdet): the file is COCO JSON with images (and,
  for training, annotations), every listed image file exists, every annotation's
  ``category_id`` is one of its categories (mmdet drops the others without
  a word), no polygon has fewer than 3 points, some boxes are ones mmdet
  keeps (how many it drops is logged), and the config's class names are
  categories of the file (else how to set ``metainfo``);
- ADE20K-format data (mmseg): every image has its label map, of its size,
  single-channel 8-bit, holding only class indices of the dataset's
  classes or the ignore index (the first ``LABEL_SAMPLE`` label maps are
  decoded; ``full``: all);
- class-list annotations (mmpretrain ``ann_file``): every listed image
  exists.

Only existence, file headers (each image's format and size) and JSON are
read (``benchmarks/preflight.py`` times it on a train2017-sized file);
``full=True`` (``--check-data full``) decodes every image and label map
too.
"""
import inspect
import json
import logging
import os
import os.path as osp
from typing import List, Optional, Tuple

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import DATASETS
from PIL import Image

MODES = ('quick', 'full', 'off')
# label maps whose values the quick check decodes (about 2 ms each): a
# dataset of other classes shows in its first ones
LABEL_SAMPLE = 16


def _datasets(cfg_dataset):
    """The leaf dataset configs of a possibly wrapped dataset config."""
    if cfg_dataset is None:
        return []
    if 'datasets' in cfg_dataset:
        return [d for sub in cfg_dataset['datasets'] for d in _datasets(sub)]
    if 'dataset' in cfg_dataset:
        return _datasets(cfg_dataset['dataset'])
    return [cfg_dataset]


def _dataset_class(dataset, scope: Optional[str]):
    name = dataset.get('type', '')
    if not isinstance(name, str):
        return name
    return DATASETS.get(f'{scope}.{name}' if scope and '.' not in name else
                        name)


def _defaults(cls) -> dict:
    if cls is None:
        return {}
    return {k: p.default
            for k, p in inspect.signature(cls.__init__).parameters.items()}


def check_data(cfg: Config, splits: List[str], mode: str = 'quick') -> None:
    """Run the checks of the module docstring on the datasets of
    ``splits`` ('train', 'val', 'test'); ``mode`` 'full' also decodes every
    image, 'off' checks nothing."""
    if mode == 'off':
        return
    scope = cfg.get('default_scope')
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader:
            continue
        for dataset in _datasets(loader.get('dataset')):
            where = f'{split}_dataloader.dataset'
            _check_paths(dataset, split)
            ann = dataset.get('ann_file')
            cls = _dataset_class(dataset, scope)
            if _prefix(dataset).get('seg_map_path'):
                check_label_maps(dataset, where, cls, mode == 'full')
            elif ann and scope == 'mmdet' and ann.endswith('.json'):
                _check_coco(dataset, where, split, cls, mode == 'full')
            elif ann and scope == 'mmpretrain':
                _check_list(dataset, where, mode == 'full')


def _prefix(dataset) -> dict:
    """The dataset's ``data_prefix`` as a dict (a plain string is the
    image folder, as mmpretrain reads it)."""
    prefix = dataset.get('data_prefix') or {}
    return dict(img_path=prefix) if isinstance(prefix, str) else prefix


def _join(root: str, path: str) -> str:
    return osp.join(root, path) if root else path


def _check_paths(dataset, split: str) -> None:
    root = dataset.get('data_root') or ''
    paths = []
    if root:
        paths.append(('data_root', root))
    ann = dataset.get('ann_file')
    if ann:
        paths.append(('ann_file', _join(root, ann)))
    for key, sub in _prefix(dataset).items():
        if sub:
            paths.append((f'data_prefix.{key}', _join(root, sub)))
    for key, path in paths:
        if not osp.exists(path):
            raise FileNotFoundError(
                f'{split}_dataloader.dataset.{key}: {path} does not '
                'exist. Point the config at your data, e.g. '
                f'--cfg-options {split}_dataloader.dataset.'
                'data_root=/path/to/dataset/')
        if key != 'data_root' and _is_empty_dir(path):
            raise FileNotFoundError(
                f'{split}_dataloader.dataset.{key}: {path} is empty')


def _is_empty_dir(path: str) -> bool:
    if not osp.isdir(path):
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _reads(path: str, full: bool) -> bool:
    """The file is an image (see :func:`_header`)."""
    try:
        _header(path, full, '')
        return True
    except ValueError:
        return False


def _header(path: str, full: bool, where: str):
    """An image's (size, PIL mode), read from its header (``full``: the
    image decoded too); a file that is not one is one line."""
    try:
        with Image.open(path) as img:
            if full:
                img.load()
            return img.size, img.mode
    except Exception:  # noqa: BLE001  whatever a broken file raises
        raise ValueError(f'{where}: {_unreadable(path, full)}; replace or '
                         'remove it') from None


def _unreadable(path: str, full: bool) -> str:
    """How a file that is not an image is named in the error line."""
    return f'{path} cannot be decoded' if full else \
        f'{path} is not an image (no image format in its header)'


def _first_missing(paths: List[str], full: bool, where: str) -> None:
    missing = [p for p in paths if not osp.isfile(p)]
    if missing:
        more = f' (and {len(missing) - 1} more of {len(paths)})' if len(
            missing) > 1 else ''
        raise FileNotFoundError(f'{where}: image {missing[0]} does not '
                                f'exist{more}')
    broken = [p for p in paths if not _reads(p, full)]
    if broken:
        more = f' (and {len(broken) - 1} more)' if len(broken) > 1 else ''
        raise ValueError(f'{where}: image {_unreadable(broken[0], full)}'
                         f'{more}; replace or remove it')


def _classes(dataset, cls) -> Tuple[str, ...]:
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None:
        classes = getattr(cls, 'METAINFO', {}).get('classes', ())
    return tuple(classes)


def _check_coco(dataset, where: str, split: str, cls, full: bool) -> None:
    root = dataset.get('data_root') or ''
    ann = _join(root, dataset['ann_file'])
    try:
        with open(ann, 'rb') as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f'{where}.ann_file: {ann} is not JSON ({err})') \
            from None
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list)
            for k in ('images', 'annotations', 'categories')):
        raise ValueError(f'{where}.ann_file: {ann} is not COCO-format '
                         'annotations (a JSON object with "images", '
                         '"annotations" and "categories" lists)')
    training = split == 'train'
    if not data['images']:
        raise ValueError(f'{where}.ann_file: {ann} lists no images; a COCO '
                         'file needs at least one')
    if training and not data['annotations']:
        raise ValueError(f'{where}.ann_file: {ann} lists no annotations; '
                         'training needs at least one')
    categories = {c.get('id'): c.get('name') for c in data['categories']
                  if isinstance(c, dict)}
    names = set(categories.values())
    classes = _classes(dataset, cls)
    if classes and not set(classes) <= names:
        unknown = [c for c in classes if c not in names]
        shown = ', '.join(map(str, unknown[:5])) + (
            f' and {len(unknown) - 5} more' if len(unknown) > 5 else '')
        ours = ','.join(str(categories[k]) for k in sorted(
            categories, key=str))
        raise ValueError(
            f"{where}: the config's classes {shown} are not categories of "
            f'{ann} (its categories: {", ".join(sorted(map(str, names)))});'
            f' set the dataset\'s metainfo to its classes, e.g. '
            f"--cfg-options {split}_dataloader.dataset.metainfo.classes="
            f"'[{ours}]' (and the heads' num_classes to match)")
    stray = sorted({a.get('category_id') for a in data['annotations']
                    if isinstance(a, dict) and
                    a.get('category_id') not in categories}, key=str)
    if stray:
        count = sum(1 for a in data['annotations'] if isinstance(a, dict)
                    and a.get('category_id') in stray)
        raise ValueError(
            f'{where}: {count} annotation(s) in {ann} have category_id '
            f'{", ".join(map(str, stray[:5]))}, which is not among its '
            f'categories ({", ".join(map(str, sorted(categories, key=str)))})'
            '; mmdet would drop them without a word: fix the file')
    _check_instances(data, where, ann, training)
    prefix = dataset.get('data_prefix') or {}
    img_dir = _join(root, prefix.get('img', '') if isinstance(
        prefix, dict) else prefix)
    files = [osp.join(img_dir, str(img.get('file_name', '')))
             for img in data['images'] if isinstance(img, dict)]
    _first_missing(files, full, where)


def _short_polygon(ann: dict) -> bool:
    """A polygon of fewer than 3 points (pycocotools fails on it when the
    metric turns it into a mask)."""
    polygons = ann.get('segmentation')
    return isinstance(polygons, list) and any(
        not isinstance(p, list) or len(p) < 6 for p in polygons)


def _dropped_box(ann: dict, size) -> bool:
    """A box mmdet's CocoDataset leaves out, as its ``parse_data_info``
    decides: no overlap with its image (``size``: width, height), width or
    height under 1 pixel, or no area."""
    box = ann.get('bbox')
    if not isinstance(box, list) or len(box) != 4 or not all(
            isinstance(v, (int, float)) for v in box):
        return True
    x1, y1, w, h = box
    width, height = size if size and all(
        isinstance(v, (int, float)) for v in size) else (float('inf'),) * 2
    inside = (min(x1 + w, width) - max(x1, 0)) > 0 and \
        (min(y1 + h, height) - max(y1, 0)) > 0
    area = ann.get('area', 0)
    return not (inside and isinstance(area, (int, float)) and area > 0
                and w >= 1 and h >= 1)


def _check_instances(data: dict, where: str, ann: str,
                     training: bool) -> None:
    """Polygons that would crash the metric are refused; boxes mmdet would
    drop are reported, and refused for training when they are all there
    is."""
    sizes = {img.get('id'): (img.get('width'), img.get('height'))
             for img in data['images'] if isinstance(img, dict)}
    anns = [a for a in data['annotations'] if isinstance(a, dict)]
    short = [a for a in anns if _short_polygon(a)]
    if short:
        raise ValueError(
            f'{where}: {len(short)} annotation(s) in {ann} have a '
            'segmentation polygon of fewer than 3 points (the first: '
            f'annotation id {short[0].get("id")}); the mask metric fails on '
            'them: fix or remove them')
    kept = [a for a in anns if not a.get('ignore') and
            not _dropped_box(a, sizes.get(a.get('image_id')))]
    dropped = len(anns) - len(kept)
    if training and not kept:
        raise ValueError(
            f'{where}: none of the {len(anns)} annotation(s) in {ann} has a '
            'box mmdet keeps (bbox [x, y, w, h] inside its image, w and h '
            'at least 1 pixel, area above 0): there is nothing to learn from')
    if dropped:
        print_log(f'{where}: mmdet leaves out {dropped} of the {len(anns)} '
                  f'annotation(s) in {ann} (ignored, outside their image, '
                  'under 1 pixel wide or high, or of no area)',
                  logger='current', level=logging.WARNING)


def _check_list(dataset, where: str, full: bool) -> None:
    """mmpretrain's annotation list: one 'relative/path label' a line."""
    root = dataset.get('data_root') or ''
    ann = _join(root, dataset['ann_file'])
    if not osp.isfile(ann) or ann.endswith('.json'):
        return  # a folder or OpenMMLab's JSON format: the dataset checks it
    prefix = dataset.get('data_prefix') or ''
    img_dir = _join(root, prefix.get('img_path', '') if isinstance(
        prefix, dict) else prefix)
    with open(ann) as f:
        files = [osp.join(img_dir, line.rsplit(maxsplit=1)[0])
                 for line in f if line.strip()]
    _first_missing(files, full, where)


def check_label_maps(dataset, where: str, cls=None,
                     full: bool = False) -> None:
    """Every image has a label map of its size, stored as single-channel
    8-bit class indices. Only file headers are read (``full``: every
    image and label map is decoded too)."""
    root = dataset.get('data_root') or ''
    prefix = dataset['data_prefix']
    img_dir = _join(root, prefix.get('img_path', ''))
    seg_dir = _join(root, prefix['seg_map_path'])
    defaults = _defaults(cls)
    img_suffix = dataset.get('img_suffix',
                             defaults.get('img_suffix', '.jpg'))
    seg_suffix = dataset.get('seg_map_suffix',
                             defaults.get('seg_map_suffix', '.png'))
    valid = _label_values(dataset, cls, defaults)
    names = [n for n in sorted(os.listdir(img_dir)) if n.endswith(img_suffix)]
    for index, name in enumerate(names):
        stem = name[:-len(img_suffix)]
        label_path = osp.join(seg_dir, stem + seg_suffix)
        if not osp.isfile(label_path):
            raise FileNotFoundError(
                f'{where}: image {name} has no label map {label_path}')
        image_path = osp.join(img_dir, name)
        (size, _), (label_size, mode) = (_header(path, full, where)
                                         for path in (image_path, label_path))
        if mode not in ('L', 'P'):
            raise ValueError(
                f'{where}: label map {label_path} has PIL mode {mode!r}; '
                'label maps must be single-channel 8-bit PNGs (mode L or P) '
                'of class indices, 0 = "other" (ignored with '
                'reduce_zero_label)')
        if label_size != size:
            raise ValueError(
                f'{where}: label map {label_path} is {label_size[0]}x'
                f'{label_size[1]} but its image {name} is {size[0]}x'
                f"{size[1]}; a label map must have its image's size")
        if full or index < LABEL_SAMPLE:
            _check_label_values(label_path, where, valid)


def _label_values(dataset, cls, defaults) -> Tuple[int, str, int]:
    """The values a label map may hold: those below ``count`` and
    ``ignore``; ``(count, what, ignore)``, ``what`` saying so."""
    classes = len(_classes(dataset, cls))
    reduce_zero = dataset.get('reduce_zero_label',
                              defaults.get('reduce_zero_label', False))
    ignore = dataset.get('ignore_index', 255)
    # reduce_zero_label: 0 ("other") is ignored, v is class v - 1
    count = classes + 1 if reduce_zero and classes else classes
    what = (f'0..{count - 1} for {classes} classes'
            f'{" with reduce_zero_label (0 is ignored)" if reduce_zero else ""}'
            f', or {ignore} (ignored)')
    return count, what, ignore


def _check_label_values(path: str, where: str, valid) -> None:
    count, what, ignore = valid
    with Image.open(path) as img:
        histogram = img.histogram()[:256]
    wrong = [v for v, n in enumerate(histogram)
             if n and v >= count and v != ignore]
    if wrong and count:  # (no class list: nothing to check against)
        raise ValueError(
            f'{where}: label map {path} holds class index '
            f'{", ".join(map(str, wrong[:5]))}; the values must be {what} '
            '(a label map of another dataset, or the classes in metainfo '
            'do not match it)')
