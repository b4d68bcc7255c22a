"""Every YAML file under configs/ is loaded by the reader that the code uses for it, with all of its checks: a
config that a schema change broke fails here, not in a user's first run. A new kind of file needs a line in
LOADERS (the last test fails until it has one)."""
from fnmatch import fnmatch
from pathlib import Path

import pytest

from discriminative import data as text_data
from discriminative.pool import TextPool
from discriminative.pool import load_pool as load_text_pool
from generative import data as generative_data
from generative.pool import GenerativePool
from generative.pool import load_pool as load_generative_pool
from generative.run import check_method as check_generative
from merging.benchmark import experiment
from merging.benchmark.claims import load_claims
from merging.benchmark.variants import load_variants
from merging.config import load_config, read_mapping
from merging.errors import MergeError
from merging.io.pypi import model_wheels
from merging.registry import get_method
from vision import data as vision_data
from vision.pool import VisionPool
from vision.pool import load_pool as load_vision_pool

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*") if p.suffix in (".yaml", ".yml"))


def method_file(domain_pool):
    """configs/[<domain>/]methods/<method>.yaml: every point of its grid and every preset passes the method's
    schema on a pool of that domain."""

    def check(path: Path) -> None:
        method = path.stem
        experiment.check_method(domain_pool, method, {})
        for preset in experiment._method_yaml(domain_pool.domain.name, method).get("presets") or {}:
            experiment.check_method(domain_pool, method, {"preset": preset})

    return check


def vision_pool(path: Path) -> None:
    """A pool of hub data sets (the CLIP pools) is checked against its schema only: its task specs come from
    the hub, which this machine cannot reach; an offline pool gets every check of load_pool."""
    raw = read_mapping(path)
    if raw.get("data") == "hub":
        VisionPool.model_validate(raw)
    else:
        load_vision_pool(path)


def generative_method_file(path: Path) -> None:
    for kind in ("lora", "full"):
        pool = GenerativePool(name="g", base="b", kind=kind, tasks=["qa"])
        if kind == "full" and get_method(path.stem).kind != "per_tensor":
            continue  # LoRA-only methods (from_lora, frank_wolfe) on a full pool are refused by design
        check_generative(pool, path.stem, {"t": 0.5} if path.stem == "slerp" else {})


def bench_config(path: Path, tmp_path: Path) -> None:
    """scripts/bench_merge.sh replaces ${POOL} with the pool folder; the rest must be a valid mergekit YAML."""
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("${POOL}", "/pool"))
    load_config(copy)


PARITY_REFUSED: set[str] = set()  # configs that our CLI refuses (none since issue 20)


def parity_config(path: Path, tmp_path: Path) -> None:
    """configs/parity/: mergekit YAML (${POOL} replaced by scripts/parity_mergekit.sh) whose first line says what
    it checks; it loads, unless it is one of PARITY_REFUSED, which are refused with a MergeError."""
    assert path.read_text().startswith("# "), f"{path}: the first line must say what the config checks"
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("${POOL}", "/pool"))
    if path.stem in PARITY_REFUSED:
        with pytest.raises(MergeError):
            load_config(copy)
    else:
        load_config(copy)


def fw_variants(path: Path) -> None:
    """configs/fw_variants.yaml: each variant's method and flags (its preset, its grid) pass the method's checks
    in both domains that run the scaling protocols."""
    for variant in load_variants(path).variants:
        for pool in (TextPool(name="t", base="b", tasks=["a"]), VisionPool(name="v", base="b", tasks=["a"])):
            experiment.check_method(pool, variant.method, variant.flags)


LOADERS = [  # (pattern, loader): the first match reads the file
    ("configs/claims.yaml", load_claims),
    ("configs/fw_variants.yaml", fw_variants),
    ("configs/model_packages.yaml", model_wheels.__wrapped__),
    ("configs/bench/*.yaml", bench_config),
    ("configs/parity/*.yml", parity_config),
    ("configs/examples/*", load_config),
    ("configs/discriminative/tasks.yaml", text_data._read_entries),
    ("configs/vision/tasks.yaml", lambda path: vision_data._entries()),
    ("configs/generative/tasks.yaml", lambda path: generative_data.entries()),
    ("configs/methods/*", method_file(TextPool(name="t", base="b", tasks=["a"]))),
    ("configs/vision/methods/*", method_file(VisionPool(name="v", base="b", tasks=["a"]))),
    ("configs/discriminative/methods/*", method_file(TextPool(name="t", base="b", tasks=["a"]))),
    ("configs/generative/methods/*", generative_method_file),
    ("configs/discriminative/*", load_text_pool),
    ("configs/vision/*", vision_pool),
    ("configs/generative/*", load_generative_pool),
]


def loader_of(path: str):
    return next((loader for pattern, loader in LOADERS if fnmatch(path, pattern)), None)


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_loads_with_its_checks(path, tmp_path):
    loader = loader_of(path)
    assert loader is not None, f"{path}: no loader in LOADERS"
    if loader in (bench_config, parity_config):
        loader(ROOT / path, tmp_path)
    else:
        loader(ROOT / path)


def test_the_task_lists_read_are_the_shipped_files():
    assert vision_data.TASKS_YAML == ROOT / "configs/vision/tasks.yaml"
    assert generative_data.TASKS_YAML == ROOT / "configs/generative/tasks.yaml"


def test_every_config_has_a_loader():
    assert CONFIGS and [p for p in CONFIGS if loader_of(p) is None] == []
