"""Which model parts the export supports (those whose exported graph is
verified against PyTorch in our tests), checked before any work starts."""
from mmengine.config import Config

from ..errors import ConfigError

# (config path, supported types); a part the config does not have is fine
SUPPORTED = (
    ('model', ('MaskRCNN', 'CascadeRCNN', 'EncoderDecoder')),
    ('model.backbone', ('ConvNeXt', )),
    ('model.neck', ('FPN', )),
    ('model.rpn_head', ('RPNHead', )),
    ('model.roi_head', ('StandardRoIHead', 'CascadeRoIHead')),
    ('model.roi_head.bbox_head', ('Shared2FCBBoxHead', 'ConvFCBBoxHead')),
    ('model.roi_head.mask_head', ('FCNMaskHead', )),
    ('model.roi_head.bbox_roi_extractor', ('SingleRoIExtractor', )),
    ('model.roi_head.mask_roi_extractor', ('SingleRoIExtractor', )),
    ('model.decode_head', ('UPerHead', )),
)


def _type_name(part) -> str:
    kind = part.get('type') if isinstance(part, dict) else None
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '?')
    return name.split('.')[-1]


def _parts(cfg: Config, path: str):
    node = cfg
    for key in path.split('.'):
        node = node.get(key) if isinstance(node, (dict, Config)) else None
        if node is None:
            return []
    return node if isinstance(node, list) else [node]


def check_export_support(cfg: Config) -> None:
    """Refuse a config whose model has a part the export does not handle,
    naming the part and what is supported, or a test it cannot export
    exactly (:func:`check_nms`)."""
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ConfigError(
            f'tools/deploy.py exports detection (mmdet) and segmentation '
            f'(mmseg) configs; this one is {scope or "of no library"} (a '
            f'classifier exports with torch.onnx.export of its backbone)')
    for path, supported in SUPPORTED:
        for part in _parts(cfg, path):
            name = _type_name(part)
            if name not in supported:
                raise ConfigError(
                    f'{path} is {name}, which tools/deploy.py cannot export '
                    f'(supported: {", ".join(supported)})')
    check_nms(cfg)


def _nms_settings(cfg: Config):
    """(config path, nms dict) of every test-time NMS of a detector."""
    test_cfg = (cfg.get('model') or {}).get('test_cfg') or {}
    for stage in ('rpn', 'rcnn'):
        settings = test_cfg.get(stage) or {}
        for i, one in enumerate(settings if isinstance(settings, list)
                                else [settings]):
            nms = one.get('nms') if isinstance(one, dict) else None
            if isinstance(nms, dict):
                where = f'model.test_cfg.{stage}' + (
                    f'.{i}' if isinstance(settings, list) else '')
                yield f'{where}.nms.type', nms


def check_nms(cfg: Config) -> None:
    """Refuse a test-time NMS other than hard NMS: ONNX has only
    NonMaxSuppression, and exporting soft-NMS as it would give other boxes
    and scores than the config's test (the verification would fail only
    after the export)."""
    for where, nms in _nms_settings(cfg):
        kind = nms.get('type', 'nms')
        if kind != 'nms':
            raise ConfigError(
                f'{where} is {kind!r}: standard ONNX has hard NMS only '
                '(NonMaxSuppression), so this test cannot be exported '
                f'exactly. Export with hard NMS: --cfg-options {where}=nms '
                '(boxes that soft-NMS would keep with a lowered score are '
                'then removed)')
