"""convnext_mm: ConvNeXt for mmdet 3.x, mmsegmentation 1.x and mmpretrain 1.x."""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithMimFiles(build_py):
    """Ship ``model-index.yml`` and the configs inside the package under
    ``.mim/``, where ``mim search convnext_mm`` looks for them."""

    def run(self):
        super().run()
        mim = Path(self.build_lib) / 'convnext_mm' / '.mim'
        shutil.rmtree(mim, ignore_errors=True)
        mim.mkdir(parents=True)
        shutil.copy(ROOT / 'model-index.yml', mim / 'model-index.yml')
        shutil.copytree(ROOT / 'configs', mim / 'configs')

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
    install_requires=['mmengine>=0.10.0', 'numpy', 'safetensors'],
    extras_require={
        'det': ['mmdet>=3.0.0', 'pycocotools'],
        'seg': ['mmsegmentation>=1.0.0'],
        'cls': ['mmpretrain>=1.0.0'],
    },
    license='Apache-2.0',
    cmdclass={'build_py': BuildWithMimFiles},
)
