"""Inference with the libraries' own Inferencers, after our checks."""
from .inferencer import inferencer

__all__ = ['inferencer']
