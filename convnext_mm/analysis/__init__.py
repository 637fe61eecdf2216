"""Model analysis: parameters and FLOPs as the paper counted them."""
from .complexity import count_complexity

__all__ = ['count_complexity']
