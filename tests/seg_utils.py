"""Build small versions of the released ADE20K configs for end-to-end tests."""
import copy
from pathlib import Path

from mmengine.config import Config

from tool_utils import ROOT, short_schedule, shrink_sizes

SCALE = 1 / 8  # 512 crops -> 64, the 2048x512 test scale -> 256x64


def small_seg_config(leaf, data, work_dir, max_iters=20, ckpt_interval=10,
                     lr=6e-3):
    """The released ``configs/<leaf>.py`` with an atto backbone, slim heads,
    the generated ADE20K-format data and a few iterations; returns the
    dumped config path."""
    cfg = Config.fromfile(str(ROOT / 'configs' / f'{leaf}.py'))
    model = cfg.model
    classes = len(data['metainfo']['classes'])
    model.backbone.update(arch='atto', drop_path_rate=0.1, init_cfg=None)
    model.decode_head.update(in_channels=[40, 80, 160, 320], channels=64,
                             num_classes=classes)
    model.auxiliary_head.update(in_channels=160, channels=32,
                                num_classes=classes)
    crop = tuple(int(v * SCALE) for v in cfg.crop_size)
    model.data_preprocessor.size = crop
    model.test_cfg.update(crop_size=crop,
                          stride=tuple(int(v * SCALE)
                                       for v in model.test_cfg.stride))
    for loader in (cfg.train_dataloader, cfg.val_dataloader,
                   cfg.test_dataloader):
        loader.update(num_workers=0, persistent_workers=False)
        # ADE20KDataset only admits its own 150 class names; BaseSegDataset
        # reads the same layout with the generated classes
        loader.dataset.update(
            type='BaseSegDataset', img_suffix='.jpg', seg_map_suffix='.png',
            reduce_zero_label=True, data_root=data['data_root'],
            metainfo=data['metainfo'],
            pipeline=shrink_sizes(copy.deepcopy(loader.dataset.pipeline),
                                  SCALE))
    cfg.tta_pipeline = shrink_sizes(copy.deepcopy(cfg.tta_pipeline), SCALE)
    short_schedule(cfg, work_dir, max_iters, ckpt_interval, lr)
    path = Path(work_dir).parent / f'{Path(work_dir).name}_{leaf}.py'
    cfg.dump(str(path))
    return path
