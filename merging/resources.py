"""Where the shipped YAML lives: ``configs/`` beside the packages in a source checkout or an editable install, else
the copy a wheel installs under ``<prefix>/share/merging/configs`` (pyproject.toml, ``data-files``)."""
from __future__ import annotations

import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "configs"
INSTALLED = Path(sys.prefix) / "share" / "merging" / "configs"


def find_configs(source: Path = SOURCE, installed: Path = INSTALLED) -> Path:
    """The configs folder: the source checkout's when it has one, else the installed copy."""
    return source if source.is_dir() or not installed.is_dir() else installed


CONFIGS = find_configs()
