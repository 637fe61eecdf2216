"""Small generated datasets in the standard on-disk formats, for tests and the
demo: COCO instances, ADE20K-style semantic maps, ImageNet-style folders."""
from .coco import SHAPE_CLASSES, make_coco_instances

__all__ = ['SHAPE_CLASSES', 'make_coco_instances']
