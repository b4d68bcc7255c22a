"""Merge methods; importing this package registers every one of them (merging/registry.py)."""
from . import (  # noqa: F401
               adamerging,
               average,
               dare,
               fisher,
               frank_wolfe,
               frank_wolfe_soft,
               from_,
               from_lora,
               greedy_soup,
               passthrough,
               regmean,
               slerp,
               task_arithmetic,
               ties,
)
