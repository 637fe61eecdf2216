"""Small generated datasets in the standard on-disk formats, for tests and the
demo: COCO instances, ADE20K-style semantic label maps and ImageNet-style
class folders."""
from .ade20k import ADE_CLASSES, make_ade20k
from .coco import make_coco_instances
from .image_folder import make_image_folder
from .shapes import SHAPE_CLASSES

__all__ = ['ADE_CLASSES', 'SHAPE_CLASSES', 'make_ade20k',
           'make_coco_instances', 'make_image_folder']
