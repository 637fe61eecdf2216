"""tools/get_flops.py reproduces Table 3's params and FLOPs (T configs)."""
import re

import pytest

from convnext_mm.analysis.paper import COCO
from tool_utils import run_tool


def test_t_configs_match_table_3():
    _, out = run_tool('get_flops.py', 'configs/mask_rcnn_convnext_t_coco.py',
                      'configs/cascade_convnext_t_coco.py')
    rows = {}
    for line in out.splitlines():
        m = re.match(r'\| (\w+) \| 1280x800 \| ([\d.]+) \| \d+ \| ([\d.]+) '
                     r'\| \d+ \| [-+][\d.]+% \|$', line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    assert set(rows) == {'mask_rcnn_convnext_t_coco',
                         'cascade_convnext_t_coco'}, out
    for name, (params, gflops) in rows.items():
        paper = COCO[name]
        assert params == pytest.approx(paper['params'], abs=1.0)
        assert gflops == pytest.approx(paper['flops'], rel=0.02)
    # the convention matters: masks on the first 100 proposals only
    assert rows['cascade_convnext_t_coco'][1] == pytest.approx(740.7,
                                                               abs=0.2)


def test_shape_option_and_bad_config(tmp_path):
    _, out = run_tool('get_flops.py', 'configs/mask_rcnn_convnext_t_coco.py',
                      '--shape', '640', '400')
    assert '| mask_rcnn_convnext_t_coco | 640x400 |' in out
    code, out = run_tool('get_flops.py', str(tmp_path / 'missing.py'),
                         check=False)
    assert code != 0 and 'does not exist' in out


def test_upernet_t_matches_table_4():
    from convnext_mm.analysis.paper import ADE20K
    _, out = run_tool('get_flops.py', 'configs/upernet_convnext_t_ade20k.py')
    m = re.search(r'\| upernet_convnext_t_ade20k \| 2048x512 \| ([\d.]+) \| '
                  r'\d+ \| ([\d.]+) \|', out)
    assert m, out
    params, gflops = float(m.group(1)), float(m.group(2))
    assert params == pytest.approx(ADE20K['upernet_convnext_t_ade20k']
                                   ['params'], abs=1.0)
    assert gflops == pytest.approx(ADE20K['upernet_convnext_t_ade20k']
                                   ['flops'], rel=0.02)
