"""Model merging: FW-Merging and its baselines on tensors, state dicts and checkpoint folders."""
from .errors import MergeError

__all__ = ["MergeError"]
__version__ = "0.1.0"
