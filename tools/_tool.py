"""What every tool does before anything else: put the checkout on the
import path (the tools run from it, installed or not), and silence the one
warning every start printed; and the argument parser they share the shape
of (:func:`parser`). The warning: mmengine (and mmdeploy's backends) import
``pkg_resources``, which setuptools 80.9 - the release both our torch
(>= 77) and mmcv's build (< 81) accept - reports as deprecated."""
import argparse
import sys
import warnings
from pathlib import Path

warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                        category=UserWarning)
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parser(doc: str, *examples: str) -> argparse.ArgumentParser:
    """A tool's argument parser: the first line of its docstring as the
    description, and ``examples`` (command lines) under ``--help``."""
    return argparse.ArgumentParser(
        description=doc.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='examples:\n' + '\n'.join(f'  {line}' for line in examples))
