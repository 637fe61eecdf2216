"""Build small versions of the released ImageNet configs for end-to-end
tests."""
import copy
from pathlib import Path

from mmengine.config import Config, ConfigDict

from tool_utils import ROOT, short_schedule, shrink_sizes

SCALE = 64 / 224  # 224 crops -> 64


def small_cls_config(leaf, data, work_dir, max_iters=10, ckpt_interval=10,
                     lr=1e-3):
    """The released ``configs/<leaf>.py`` with an atto backbone, the
    generated class folders and a few iterations; returns the dumped path."""
    cfg = Config.fromfile(str(ROOT / 'configs' / f'{leaf}.py'))
    classes = len(data['classes'])
    cfg.model.backbone.update(arch='atto', drop_path_rate=0.1)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.head.update(in_channels=320, num_classes=classes)
    cfg.model.data_preprocessor = dict(cfg.data_preprocessor,
                                       num_classes=classes)
    for split, loader in (('train', cfg.train_dataloader),
                          ('val', cfg.val_dataloader),
                          ('val', cfg.test_dataloader)):
        pipeline = shrink_sizes(copy.deepcopy(loader.dataset.pipeline),
                                SCALE)
        loader.update(batch_size=4, num_workers=0, persistent_workers=False)
        loader.dataset = ConfigDict(
            type='CustomDataset', data_root=data['data_root'],
            data_prefix=split, pipeline=pipeline)
    cfg.val_evaluator = cfg.test_evaluator = dict(type='Accuracy',
                                                  topk=(1, ))
    short_schedule(cfg, work_dir, max_iters, ckpt_interval, lr)
    path = Path(work_dir).parent / f'{Path(work_dir).name}_{leaf}.py'
    cfg.dump(str(path))
    return path
