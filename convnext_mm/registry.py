"""convnext_mm's registries, children of mmengine's root registries.

mmengine resolves ``type='convnext_mm.X'`` by importing this module, so a
config can name our classes with the ``convnext_mm.`` scope from any
downstream library (mmdet, mmseg, mmpretrain) without ``custom_imports``.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='convnext_mm',
    locations=['convnext_mm.models', 'convnext_mm.tta'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='convnext_mm',
    locations=['convnext_mm.optim'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='convnext_mm',
                 locations=['convnext_mm.training'])
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, scope='convnext_mm',
                   locations=['convnext_mm.launch'])


def register_everywhere(scoped, root, name):
    """Register a class in our scoped registry and in mmengine's root one.

    The root registration is what lets a plain ``type=name`` resolve from
    mmdet's and mmseg's registries (they fall back to their parent, the root)
    while mmpretrain's own registry keeps finding its own class first.
    """

    def decorator(cls):
        scoped.register_module(name=name, module=cls)
        root.register_module(name=name, module=cls)
        return cls

    return decorator
