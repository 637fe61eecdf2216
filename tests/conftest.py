"""The generated datasets and the trained tiny models that several test
modules share (end-to-end runs, deployment): made once per session."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from convnext_mm.synthetic import make_ade20k, make_coco_instances
from convnext_mm.synthetic.small_configs import (small_det_config,
                                                 small_seg_config)
from tool_utils import trained


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
    return trained(tmp_path_factory, 'mask_rcnn', small_det_config,
                   'mask_rcnn_convnext_t_coco', coco, max_iters=16,
                   ckpt_interval=8)


@pytest.fixture(scope='session')
def trained_cascade(coco, tmp_path_factory):
    # 20 iterations: after 10 no detection scores above 0.05 yet
    return trained(tmp_path_factory, 'cascade', small_det_config,
                   'cascade_convnext_t_coco', coco, max_iters=20,
                   ckpt_interval=20)


@pytest.fixture(scope='session')
def ade(tmp_path_factory):
    return make_ade20k(tmp_path_factory.mktemp('shapes_ade'))


@pytest.fixture(scope='session')
def trained_upernet(ade, tmp_path_factory):
    return trained(tmp_path_factory, 'upernet', small_seg_config,
                   'upernet_convnext_t_ade20k', ade, max_iters=20,
                   ckpt_interval=10)


class ChildLoader:
    """Loads checkpoints in forked children of one worker process (see
    child_loader.py): ``load(path, how)`` returns its status dict."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name('child_loader.py'))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == 'ready'

    def load(self, path, how='read_file', seconds=None) -> dict:
        request = dict(path=str(path), how=how)
        if seconds:
            request['seconds'] = seconds
        self.process.stdin.write(json.dumps(request) + '\n')
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope='session')
def child_loader():
    loader = ChildLoader()
    yield loader
    loader.close()
