"""The released models in the mim way: model-index.yml and its metafiles
name every COCO/ADE20K config, the paper's numbers and the authors' weights;
`mim search convnext_mm` lists them from an installed package."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config

from convnext_mm.analysis.paper import ADE20K_V2, COCO, COCO_V2, paper_entry
from tool_utils import ROOT

DENSE = sorted(p.stem for p in (ROOT / 'configs').glob('*.py')
               if p.stem.startswith(('mask_rcnn', 'cascade', 'upernet')))


def models():
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    out = []
    for path in index['Import']:
        out += yaml.safe_load((ROOT / path).read_text())['Models']
    return out


def test_every_dense_config_is_listed_once():
    names = [m['Name'] for m in models()]
    assert sorted(names) == DENSE
    for model in models():
        assert model['Config'] == f"configs/{model['Name']}.py"
        assert (ROOT / model['Config']).is_file()


@pytest.mark.parametrize('model', models(), ids=lambda m: m['Name'])
def test_numbers_are_the_papers_and_weights_the_authors(model):
    name = model['Name']
    paper = paper_entry(name)
    cfg = Config.fromfile(str(ROOT / model['Config']))
    assert model['Metadata']['Pretrain'] == \
        cfg.model.backbone.init_cfg.checkpoint
    if paper is None:  # Mask R-CNN S/B: neither in the paper nor released
        assert 'Results' not in model and 'Weights' not in model
        return
    metrics = {k: v for r in model['Results'] for k, v in r['Metrics'].items()}
    if name in COCO_V2 or name in ADE20K_V2:  # no weights released
        assert 'Weights' not in model
        assert metrics == ({'box AP': paper['box_ap'],
                            'mask AP': paper['mask_ap']} if name in COCO_V2
                           else {'mIoU (ms)': paper['miou']})
        assert model['Metadata'].get('Parameters (M)') == paper['params']
        assert model['Metadata']['FLOPs (G)'] == paper['flops']
        assert cfg.model.backbone.use_grn
        return
    if name in COCO:
        assert metrics == {'box AP': paper['box_ap'],
                           'mask AP': paper['mask_ap']}
        assert model['Weights'].startswith(
            'https://dl.fbaipublicfiles.com/convnext/coco/')
    else:
        assert metrics == {'mIoU': paper['miou_ss'],
                           'mIoU (ms+flip)': paper['miou_ms']}
        assert model['Weights'].startswith(
            'https://dl.fbaipublicfiles.com/convnext/ade20k/')
    assert model['Metadata']['Parameters (M)'] == paper['params']
    assert model['Metadata']['FLOPs (G)'] == paper['flops']


def test_mim_search_lists_them(tmp_path):
    """mim reads an installed package's .mim/model-index.yml."""
    res = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
         '--no-build-isolation', '--target', str(tmp_path / 'site'),
         str(ROOT)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'site'),
               PYTHONWARNINGS='ignore')
    mim = str(Path(sys.executable).parent / 'mim')
    res = subprocess.run([mim, 'search', 'convnext_mm'], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = [line.split()[-1] for line in res.stdout.splitlines()
              if line.startswith('config id:')]
    assert sorted(listed) == DENSE
    blocks = {b.split('\n')[0]: b for b in res.stdout.split('config id: ')}
    assert re.search(r'coco/box_ap +50.4\n', blocks['cascade_convnext_t_coco'])
    assert re.search(r'ade20k/miou +46.0\n',
                     blocks['upernet_convnext_t_ade20k'])
