"""The installed stack: compiled mmcv ops compute, libraries import together,
and convnext_mm itself needs neither mmpretrain nor torchvision."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def pinned(name):
    for line in (ROOT / 'requirements.txt').read_text().splitlines():
        if line.startswith(name + '=='):
            return line.split('==')[1].strip()
    raise KeyError(name)


def test_mmcv_nms_known_answer():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.],
                          [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(box0, box1) = 81 / 119 = 0.68 > 0.5: box1 is suppressed
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.9, 0.7]))
    _, keep = nms(boxes, scores, iou_threshold=0.7)
    assert keep.tolist() == [0, 1, 2]


def test_mmcv_roi_align_known_answer():
    from mmcv.ops import RoIAlign
    # f(x, y) = 4y + x on a 4x4 grid; bilinear sampling of a linear function
    # is exact, so each 1x1 bin averages to f at its centre
    feat = torch.arange(16.).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0., 1., 1., 3., 3.]])
    align = RoIAlign((2, 2), spatial_scale=1., sampling_ratio=2,
                     aligned=True)
    out = align(feat, rois)
    assert out.shape == (1, 1, 2, 2)
    assert torch.allclose(out[0, 0], torch.tensor([[5., 6.], [9., 10.]]))


def test_mmcv_is_the_compiled_full_package():
    import mmcv
    from mmcv.utils import ext_loader
    ext = ext_loader.load_ext('_ext', ['nms', 'roi_align_forward'])
    assert mmcv.__version__ == pinned('mmcv')
    assert callable(ext.nms)


def test_openmmlab_libraries_import_together():
    import mmcv
    import mmdet
    import mmdet.models  # noqa: F401
    import mmengine
    import mmpretrain
    import mmpretrain.models  # noqa: F401
    import mmseg
    import mmseg.models  # noqa: F401
    import torchvision
    assert mmengine.__version__ == pinned('mmengine')
    assert mmdet.__version__ == pinned('mmdet')
    assert mmseg.__version__ == pinned('mmsegmentation')
    assert mmpretrain.__version__ == pinned('mmpretrain')
    assert torchvision.__version__.split('+')[0] == pinned('torchvision')
    assert mmcv.__version__ == pinned('mmcv')


BLOCKED_IMPORT = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('mmpretrain', 'torchvision'):
            raise ImportError(f'{name} is blocked for this test')
sys.meta_path.insert(0, Block())
import torch
import convnext_mm
from mmengine.registry import MODELS
net = MODELS.build(dict(type='ConvNeXt', arch='atto'))
outs = net(torch.rand(1, 3, 64, 64))
print([tuple(o.shape) for o in outs])
'''


def test_convnext_mm_needs_neither_mmpretrain_nor_torchvision():
    res = subprocess.run([sys.executable, '-c', BLOCKED_IMPORT],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ('[(1, 40, 16, 16), (1, 80, 8, 8), '
                                  '(1, 160, 4, 4), (1, 320, 2, 2)]')


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_plain_convnext_resolves_to_ours_in_mmdet_and_mmseg(scope):
    import convnext_mm
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    assert registry.get('ConvNeXt') is convnext_mm.ConvNeXt


def test_mmpretrain_keeps_its_own_convnext_and_ours_has_a_scope():
    import convnext_mm
    from mmpretrain.models import ConvNeXt as PretrainConvNeXt
    from mmpretrain.registry import MODELS
    assert MODELS.get('ConvNeXt') is PretrainConvNeXt
    assert MODELS.get('convnext_mm.ConvNeXt') is convnext_mm.ConvNeXt


def test_coco_results_load_without_info_entry(tmp_path):
    # pycocotools >= 2.0.9 requires 'info' in loadRes, which custom
    # COCO-style files often lack; the pinned version must not
    import json

    from mmdet.datasets.api_wrappers import COCO
    ann = dict(images=[dict(id=1, width=10, height=10, file_name='a.jpg')],
               annotations=[dict(id=1, image_id=1, category_id=1, iscrowd=0,
                                 bbox=[1, 1, 4, 4], area=16.)],
               categories=[dict(id=1, name='thing')])
    (tmp_path / 'ann.json').write_text(json.dumps(ann))
    coco = COCO(str(tmp_path / 'ann.json'))
    res = coco.loadRes([dict(image_id=1, category_id=1, bbox=[1, 1, 4, 4],
                             score=0.9)])
    assert len(res.getAnnIds()) == 1
