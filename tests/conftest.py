"""The generated datasets and the trained tiny models that several test
modules share (end-to-end runs, deployment): made once per session."""
import pytest

from convnext_mm.synthetic import make_ade20k, make_coco_instances
from convnext_mm.synthetic.small_configs import (small_det_config,
                                                 small_seg_config)
from tool_utils import dumped, run_tool


@pytest.fixture(scope='session')
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes_coco')
    return dict(train=make_coco_instances(root, num_images=16, split='train'),
                val=make_coco_instances(root,
                                        num_images=6,
                                        seed=1,
                                        split='val'))


@pytest.fixture(scope='session')
def trained_mask_rcnn(coco, tmp_path_factory):
    work = tmp_path_factory.mktemp('runs') / 'mask_rcnn'
    cfg = dumped(small_det_config,
                 'mask_rcnn_convnext_t_coco',
                 coco,
                 work,
                 max_iters=16,
                 ckpt_interval=8)
    _, out = run_tool('train.py', cfg)
    return cfg, work, out


@pytest.fixture(scope='session')
def trained_cascade(coco, tmp_path_factory):
    # 20 iterations: after 10 no detection scores above 0.05 yet
    work = tmp_path_factory.mktemp('runs') / 'cascade'
    cfg = dumped(small_det_config,
                 'cascade_convnext_t_coco',
                 coco,
                 work,
                 max_iters=20,
                 ckpt_interval=20)
    _, out = run_tool('train.py', cfg)
    return cfg, work, out


@pytest.fixture(scope='session')
def ade(tmp_path_factory):
    return make_ade20k(tmp_path_factory.mktemp('shapes_ade'))


@pytest.fixture(scope='session')
def trained_upernet(ade, tmp_path_factory):
    work = tmp_path_factory.mktemp('runs') / 'upernet'
    cfg = dumped(small_seg_config,
                 'upernet_convnext_t_ade20k',
                 ade,
                 work,
                 max_iters=20,
                 ckpt_interval=10)
    _, out = run_tool('train.py', cfg)
    return cfg, work, out
