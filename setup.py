"""convnext_mm: ConvNeXt for mmdet 3.x, mmsegmentation 1.x and mmpretrain 1.x."""
from setuptools import find_packages, setup

setup(
    name='convnext_mm',
    version='0.1.0',
    description='ConvNeXt backbone, checkpoint adapters and LR-decay optimizer '
    'constructor for OpenMMLab detection, segmentation and classification',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['convnext_mm', 'convnext_mm.*']),
    python_requires='>=3.9',
    # torch and mmcv are left to tools/setup_env.py: mmcv 2.1.0 must be
    # compiled against the exact torch in use.
    install_requires=['mmengine>=0.10.0', 'numpy'],
    extras_require={
        'det': ['mmdet>=3.0.0', 'pycocotools'],
        'seg': ['mmsegmentation>=1.0.0'],
        'cls': ['mmpretrain>=1.0.0'],
    },
    license='Apache-2.0',
)
