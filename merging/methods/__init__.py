"""Merge methods; importing this package registers every one of them."""
from . import average, dare, from_, from_lora, slerp, task_arithmetic, ties  # noqa: F401
