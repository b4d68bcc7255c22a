"""The documentation's generated blocks are rebuilt from the rows (merging/benchmark/docs.py)."""
import json

import pytest

from merging.benchmark.docs import main, refresh
from merging.benchmark.results import append_row
from merging.errors import MergeError

PAGE = """# Results

<!-- generated: include outs/pool_claims.md -->
stale claims
<!-- end generated -->

Prose between blocks stays.

<!-- generated: pivot outs/pool_irrelevance/results.csv extra normalized -->
stale table
<!-- end generated -->

<!-- generated: include outs/not_run.md -->
kept as it is
<!-- end generated -->
"""


def test_blocks_are_rebuilt_from_their_sources_and_missing_ones_are_kept(tmp_path):
    (tmp_path / "outs").mkdir()
    (tmp_path / "outs" / "pool_claims.md").write_text("# Title\n\n| claim | verdict |\n|---|---|\n| main | yes |\n")
    for seed, value in ((0, 50.0), (1, 54.0)):
        append_row(tmp_path / "outs/pool_irrelevance/results.csv",
                   {"method": "ties", "normalized": value, "extra": 16, "pool_seed": seed, "overrides": ""})
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    assert refresh(page, tmp_path) == ["include outs/not_run.md"]
    text = page.read_text()
    assert "stale" not in text and "Title" not in text and "| main | yes |" in text
    assert "| ties | 52.00 ± 2.83 |" in text  # the mean ± sample std over the two seeds
    assert "Prose between blocks stays." in text and "kept as it is" in text
    assert refresh(page, tmp_path) == ["include outs/not_run.md"] and page.read_text() == text  # idempotent


def test_an_unknown_directive_is_an_error_naming_the_file(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: table x.csv -->\n<!-- end generated -->\n")
    with pytest.raises(MergeError, match="page.md.*'table x.csv'"):
        refresh(page, tmp_path)
    assert main([str(page), "--root", str(tmp_path)]) == 2 and "error:" in capsys.readouterr().err


def test_an_empty_directive_and_a_title_only_include_are_handled(tmp_path):
    (tmp_path / "title_only.md").write_text("# Title")
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: include title_only.md -->\nold\n<!-- end generated -->\n")
    assert refresh(page, tmp_path) == [] and "old" not in page.read_text()
    page.write_text("<!-- generated:  -->\n<!-- end generated -->\n")
    with pytest.raises(MergeError, match="expected 'include FILE'"):
        refresh(page, tmp_path)


def test_a_summary_block_lists_the_methods_asked_for_in_their_order(tmp_path):
    for seed, (ties, tsv) in enumerate(((50.0, 55.0), (54.0, 57.0))):
        for method, value in (("ties", ties), ("tsv_m", tsv), ("average", 40.0)):
            append_row(tmp_path / "outs/pool/results.csv",
                       {"method": method, "normalized": value, "seconds": 10 + seed, "pool_seed": seed, "overrides": ""})
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: summary outs/pool/results.csv methods=tsv_m,ties normalized seconds -->\n"
                    "<!-- end generated -->\n")
    assert refresh(page, tmp_path) == []
    lines = [line for line in page.read_text().splitlines() if line.startswith("| ")]
    assert lines == ["| method | n | normalized | seconds |", "| tsv_m | 2 | 56.00 ± 1.41 | 10.50 ± 0.71 |",
                     "| ties | 2 | 52.00 ± 2.83 | 10.50 ± 0.71 |"]


def test_blocks_name_a_frank_wolfe_variant_by_its_name_and_other_overrides_as_flags(tmp_path):
    hull = {"preset": "irrelevance", "oracle": "linear", "ada_init": 0.0, "ada_lr": 0.01, "ada_simplex": True,
            "monotone": True, "vertex_scale": "tasks"}  # soft_hull_scaled in configs/fw_variants.yaml
    for extra, value in ((0, 70.0), (16, 69.0)):
        for overrides in (hull, {"iterations": 2}):
            append_row(tmp_path / "outs/pool_irrelevance/results.csv",
                       {"method": "frank_wolfe_soft", "normalized": value, "extra": extra, "pool_seed": 0,
                        "overrides": json.dumps(overrides)})
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: pivot outs/pool_irrelevance/results.csv extra normalized -->\n"
                    "<!-- end generated -->\n")
    assert refresh(page, tmp_path) == []
    lines = [line.split(" | ")[0] for line in page.read_text().splitlines() if line.startswith("| frank")]
    assert lines == ["| frank_wolfe_soft (soft_hull_scaled)", "| frank_wolfe_soft --iterations 2"]
