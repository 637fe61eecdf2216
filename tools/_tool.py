"""What every tool does before anything else: put the checkout on the
import path (the tools run from it, installed or not), and silence the one
warning every start printed; and the argument parser they share the shape
of (:func:`parser`). The warning: mmengine (and mmdeploy's backends) import
``pkg_resources``, which setuptools 80.9 - the release both our torch
(>= 77) and mmcv's build (< 81) accept - reports as deprecated."""
import argparse
import re
import sys
import warnings
from pathlib import Path

warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                        category=UserWarning)
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring, on one line."""
    text = ' '.join(doc.strip().split('\n\n')[0].split())
    end = re.search(r'\.(\s|$)', text)
    return text[:end.start() + 1] if end else text


def parser(doc: str, *examples: str) -> argparse.ArgumentParser:
    """A tool's argument parser: the first sentence of its docstring as the
    description, and ``examples`` (command lines) under ``--help``."""
    return argparse.ArgumentParser(
        description=first_sentence(doc),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='examples:\n' + '\n'.join(f'  {line}' for line in examples)
        if examples else None)
