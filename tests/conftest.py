"""The generated datasets and the trained tiny models the test modules
share (end-to-end runs, deployment, pre-flight refusals): each dataset is
generated and each model family trained once per session, in this process
(tools/train.py's ``main``)."""
import argparse
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from convnext_mm import ConvNeXt
from convnext_mm.synthetic import (make_ade20k, make_coco_instances,
                                   make_image_folder)
from convnext_mm.synthetic.small_configs import (small_cls_config,
                                                 small_det_config,
                                                 small_seg_config)
from helpers import randomise_, sparse_fcmae
from tool_utils import trained

V2_DET, V2_SEG = 'mask_rcnn_convnextv2_b_fcmae_coco', \
    'upernet_convnextv2_b_ade20k'


@pytest.fixture(scope='session', autouse=True)
def configs_unformatted():
    """mmengine formats every config it logs or dumps with yapf: seconds per
    run for a detector's config, twice a run, the suite's largest fixed
    cost. In this process configs are logged and dumped as mmengine writes
    them before formatting (the same Python, other line breaks); the tools'
    real processes (first start, distributed, mim, kills) format them."""
    with mock.patch('mmengine.config.config.FormatCode',
                    lambda text, **kwargs: (text, None)):
        yield


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
    # heads 64 wide (three stages of them cost most of an iteration) at a
    # higher lr: 20 iterations give detections scored above 0.05
    return trained(tmp_path_factory, 'cascade', small_det_config,
                   'cascade_convnext_t_coco', coco, max_iters=20,
                   ckpt_interval=20, width=64, lr=6e-3)


@pytest.fixture(scope='session')
def ade(tmp_path_factory):
    return make_ade20k(tmp_path_factory.mktemp('shapes_ade'))


@pytest.fixture(scope='session')
def trained_upernet(ade, tmp_path_factory):
    return trained(tmp_path_factory, 'upernet', small_seg_config,
                   'upernet_convnext_t_ade20k', ade, max_iters=20,
                   ckpt_interval=10)


@pytest.fixture(scope='session')
def folders(tmp_path_factory):
    """ImageNet-style class folders."""
    return make_image_folder(tmp_path_factory.mktemp('shapes_folders'))


@pytest.fixture(scope='session')
def trained_classifier(folders, tmp_path_factory):
    return trained(tmp_path_factory, 'cls', small_cls_config,
                   'convnext_t_in1k', folders, max_iters=10, ckpt_interval=2)


@pytest.fixture(scope='session')
def fcmae_atto(tmp_path_factory):
    """An atto FCMAE pre-training checkpoint as the V2 authors' save_model
    writes it: model, optimizer, epoch, scaler and the command line as an
    argparse.Namespace."""
    path = tmp_path_factory.mktemp('fcmae') / 'convnextv2_atto_fcmae.pt'
    dense = randomise_(ConvNeXt('atto', use_grn=True,
                                layer_scale_init_value=0.)).state_dict()
    torch.save({'model': sparse_fcmae(dense),
                'optimizer': {'state': {}, 'param_groups': []},
                'epoch': 1599, 'scaler': {'scale': 65536.0},
                'args': argparse.Namespace(model='convnextv2_atto',
                                           mask_ratio=0.6, epochs=1600)},
               path)
    return path


@pytest.fixture(scope='session')
def trained_v2_mask_rcnn(coco, fcmae_atto, tmp_path_factory):
    """V2 Mask R-CNN (LSJ, soft-NMS test) started from the sparse FCMAE
    file."""
    return trained(tmp_path_factory, 'v2_det', small_det_config, V2_DET,
                   coco, pretrained=fcmae_atto, max_iters=16,
                   ckpt_interval=16)


@pytest.fixture(scope='session')
def trained_v2_upernet(ade, tmp_path_factory):
    return trained(tmp_path_factory, 'v2_seg', small_seg_config, V2_SEG, ade,
                   max_iters=10, ckpt_interval=10)


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
