"""generative/objective.py and generative/merge.py: the FW objective is the answer-token loss, and the CLI trains
two adapters on a tiny Llama, merges them (data-free and FW in both spaces), scores the merges through
lm-eval, and writes an adapter and a full model that reload."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny_lm import tiny_byte_llama

from generative import data
from generative.__main__ import main
from generative.finetune import batch_of
from generative.objective import CausalLMObjective
from generative.pool import CONFIGS, load_pool
from generative.run import merged_dir
from merging.benchmark.experiment import method_config
from merging.benchmark.results import read_rows
from merging.errors import MergeError


def test_the_objective_is_the_models_own_answer_token_loss(suite):
    model, tokenizer = tiny_byte_llama()
    tasks = data.local_tasks("proxy", ["yesno"])
    objective = CausalLMObjective(model, tokenizer, tasks, "product", per_task=5, batch_size=2)
    batches = list(objective.batches("yesno", "proxy"))
    assert [len(b["input_ids"]) for b in batches] == [2, 2, 1]
    batch = batch_of(tokenizer, tasks[0], tasks[0].examples[:2])
    names = ["model.layers.0.self_attn.q_proj.weight"]
    zero = {n: torch.zeros_like(dict(model.named_parameters())[n]) for n in names}
    ours = objective.loss("yesno", objective.logits("yesno", zero, batch), batch)
    assert float(ours) == pytest.approx(float(model(**batch).loss), rel=1e-5)  # transformers' shifted CE
    delta = {n: torch.full_like(t, 0.1, requires_grad=True) for n, t in zero.items()}
    objective.loss("yesno", objective.logits("yesno", delta, batch), batch).backward()
    assert float(delta[names[0]].grad.abs().sum()) > 0  # the gradient reaches the merged update
    with pytest.raises(MergeError, match="only the proxy split"):
        next(objective.batches("yesno", "test"))


def test_cli_trains_merges_scores_and_saves_reloadable_outputs(tiny_pool, tmp_path, capsys):
    common = ["--pool", str(tiny_pool()), "--outs", str(tmp_path / "outs"), "--limit", "4"]
    assert main(["run", "--method", "task_arithmetic", *common, "--limit-validation", "4", "--lambda", "0.5"]) == 0
    assert "2 checkpoint(s) missing (qa-seed0, yesno-seed0): fine-tuning them first" in capsys.readouterr().err
    main(["run", "--method", "finetuned", *common])
    for settings in (["--iterations", "2", "--proxy-examples", "4"],
                     ["--iterations", "2", "--proxy-examples", "4", "--space", "product"]):
        main(["run", "--method", "frank_wolfe", *common, "--limit-validation", "4", *settings])
    assert "missing" not in capsys.readouterr().err  # trained once, cached
    rows = read_rows(tmp_path / "outs" / "tiny_lora" / "results.csv")
    assert [(r["method"], r["overrides"]) for r in rows] == [
        ("task_arithmetic", '{"lambda": 0.5}'), ("finetuned", ""),
        ("frank_wolfe", '{"iterations": 2, "proxy_examples": 4}'),
        ("frank_wolfe", '{"iterations": 2, "proxy_examples": 4, "space": "product"}')]
    assert float(rows[1]["normalized"]) == 100 and rows[0]["pool_seed"] == "0" and rows[0]["seed"] == "0"
    assert json.loads(rows[0]["params"])["lambda"] == 0.5 and float(rows[0]["peak_rss_gb"]) > 0
    logs = sorted((tmp_path / "outs" / "tiny_lora" / "logs").iterdir())  # FW's log, as the other domains write it
    assert len(logs) == 2 and len(json.loads(logs[0].read_text())["log"]["history"]) == 2
    assert (tmp_path / "outs" / "tiny_lora" / "lm_eval" / "task_arithmetic_lambda_0.5-seed0-test.json").is_file()

    pool = load_pool(tiny_pool())
    out = merged_dir(pool, "frank_wolfe iterations=2 proxy_examples=4", 0)  # factor space: the adapters' r, α
    info = json.loads((out / "merge.json").read_text())
    assert info["space"] == "factors" and len(info["history"]) == 2
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16)
    _assert_outputs_agree(out, tmp_path / "tiny")


def test_finetune_deals_the_missing_adapters_to_workers(tiny_pool, monkeypatch):
    """--workers 2: the (task, seed) pairs without a finished adapter go, costliest first, to two worker
    processes `python -m generative finetune … --only TASK:SEED…` of cores / 2 threads; each trains its share."""
    from generative.finetune import cost
    from merging.benchmark import parallel

    pool_file = tiny_pool()
    pool = load_pool(pool_file)
    main(["finetune", "--pool", str(pool_file), "--tasks", "qa", "--epochs", "1"])  # qa, seed 0: not dealt
    launched = []

    class InProcessWorker:  # runs the worker's command line here (the fixtures' suite is not in a subprocess)
        def __init__(self, cmd, env):
            launched.append((cmd, env["OMP_NUM_THREADS"]))
            assert cmd[1:4] == ["-m", "generative", "finetune"]
            main(cmd[3:])

        def wait(self):
            return 0
    monkeypatch.setattr(parallel.subprocess, "Popen", InProcessWorker)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 4)
    main(["finetune", "--pool", str(pool_file), "--seeds", "0", "1", "--workers", "2", "--epochs", "1"])
    shares = [cmd[cmd.index("--only") + 1:] for cmd, _ in launched]
    assert all(cmd[cmd.index("--epochs") + 1] == "1" for cmd, _ in launched)
    assert {threads for _, threads in launched} == {"2"}  # 4 cores / 2 workers
    qa, yesno = data.local_tasks("train", ["qa", "yesno"])
    assert cost(yesno) > cost(qa)  # longer texts ("passage 7" + " Yes." against "q7" + " 20")
    # costliest first, each to the least-loaded worker: yesno:0 -> A, yesno:1 -> B, qa:1 -> A
    assert shares == [["yesno:0", "qa:1"], ["yesno:1"]]
    for task in ("qa", "yesno"):
        for seed in (0, 1):
            log = json.loads((pool.folder(task, seed) / "finetune.json").read_text())
            assert (log["task"], log["seed"]) == (task, seed)


def _assert_outputs_agree(out, base):
    """out/model (full) and base + out/adapter (peft) give the same logits, which differ from the base's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 6, 7, 8]])
    full = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, with_adapter(ids).logits, atol=1e-4)
        assert not torch.allclose(full(ids).logits, AutoModelForCausalLM.from_pretrained(base)(ids).logits,
                                  atol=1e-4)  # the merge changed the model


def test_full_fine_tunes_merge_through_the_engine_with_dare_from(tiny_pool, tmp_path):
    from transformers import AutoModelForCausalLM

    common = ["--pool", str(tiny_pool("full")), "--outs", str(tmp_path / "outs"), "--limit", "4"]
    main(["finetune", *common])
    main(["run", "--method", "from", *common, "--limit-validation", "4", "--drop-rate", "0.5"])
    row, = read_rows(tmp_path / "outs" / "tiny_full" / "results.csv")
    assert (row["method"], row["overrides"]) == ("from", '{"drop_rate": 0.5}')
    out = merged_dir(load_pool(tiny_pool("full")), "from drop_rate=0.5", 0)
    info = json.loads((out / "merge.json").read_text())
    grid = method_config("generative", "from", {})[1]["alpha"]
    assert info["parameters"]["drop_rate"] == 0.5 and info["parameters"]["alpha"] in grid
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 16


def test_a_pool_of_given_adapters_merges_with_the_official_proxy_file(tiny_pool, tmp_path):
    """The paper's pool shape: named adapters (here local folders), FW on a proxy_300.json-style file, no
    suite tasks: the merge is written, not scored."""
    trained = tiny_pool()
    main(["finetune", "--pool", str(trained)])
    folders = load_pool(trained).candidates(0)
    proxy = tmp_path / "proxy.json"
    proxy.write_text(json.dumps({"code": {"input": ["def f(", "x = "], "output": ["):", "1"]},
                                 "piqa": {"input": ["Goal: boil water"], "output": ["use a kettle"]}}))
    given = tiny_pool(tasks=[], checkpoints={"code": str(folders["qa"]), "piqa": str(folders["yesno"])},
                      proxy=str(proxy), name="given")
    main(["run", "--method", "frank_wolfe", "--pool", str(given), "--iterations", "2"])
    out = merged_dir(load_pool(given), "frank_wolfe iterations=2", 0)
    info = json.loads((out / "merge.json").read_text())
    assert info["checkpoints"] == {"code": str(folders["qa"]), "piqa": str(folders["yesno"])}
    assert info["history"][0]["objective"] > 0
    _assert_outputs_agree(out, tmp_path / "tiny")
    assert main(["run", "--method", "ties", "--pool", str(given)]) == 2  # a grid to choose, but no tasks


def test_the_paper_configs_name_the_official_checkpoints():
    lora = load_pool(CONFIGS / "llama2_16_lora.yaml")
    assert (lora.base, lora.kind, len(lora.checkpoints)) == ("meta-llama/Llama-2-7b-hf", "lora", 16)
    assert lora.checkpoints["code"] == "arnavgrg/codealpaca-qlora" and lora.proxy and not lora.tasks
    full = load_pool(CONFIGS / "llama2_3_full_from.yaml")
    assert (full.kind, sorted(full.checkpoints)) == ("full", ["code", "instruction", "math"])
    offline = load_pool(CONFIGS / "smollm2_16_lora.yaml")
    assert len(offline.tasks) == 16 and offline.training_config().r == 8 and offline.training_config().alpha == 16
    assert set(offline.tasks) == {name for name, entry in data.entries().items() if "bigbench" in entry}
    default = load_pool(CONFIGS / "smollm2_12_lora_v2.yaml")  # the default pool builds without the withdrawn sdist
    assert "_DEFAULT_POOL=configs/generative/smollm2_12_lora_v2.yaml" in (CONFIGS.parent.parent / "scripts" /
                                                                           "generative.sh").read_text()
    assert len(default.tasks) == 12 and not any("bigbench" in data.entries()[t] for t in default.tasks)
    candidates = load_pool(CONFIGS / "smollm2_candidates.yaml")  # v2's candidates: none reads the withdrawn sdist
    assert set(candidates.tasks) <= set(data.entries()) and not any("bigbench" in data.entries()[t]
                                                                    for t in candidates.tasks)


def test_lora_adapters_merge_by_fw_from_the_merge_cli_on_prompt_answer_files(tiny_pool, tmp_path, capsys):
    """``python -m merging merge`` with ``data.kind: causal_lm``: the same adapter merge and objective as the
    benchmark, on the user's JSONL; a bad file or a method that cannot merge adapters is refused first."""
    from merging.cli import main as merge_main

    trained = tiny_pool()
    main(["finetune", "--pool", str(trained)])
    folders = load_pool(trained).candidates(0)
    files = {}
    for task, rows in {"qa": [("Q: capital of France?", "Paris"), ("Q: 2 + 2?", "4")],
                       "yesno": [("Is the sky blue?", "yes"), ("Is fire cold?", "no")]}.items():
        files[task] = tmp_path / f"{task}.jsonl"
        files[task].write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    config = {"method": "frank_wolfe", "base": str(tmp_path / "tiny"), "parameters": {"iterations": 2},
              "models": [{"model": str(folders[t]), "task": t} for t in files],
              "data": {"kind": "causal_lm", "tasks": {t: {"proxy": str(f)} for t, f in files.items()}}}

    def merge(name: str, **changes) -> int:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, **changes}))
        return merge_main(["merge", str(path), "--out", str(tmp_path / name), "--quiet"])

    assert merge("fw") == 0
    info = json.loads((tmp_path / "fw" / "merge_info.json").read_text())
    assert len(info["log"]["history"]) == 2 and info["log"]["history"][0]["objective"] > 0
    assert "library_name: peft" in (tmp_path / "fw" / "README.md").read_text()
    assert (tmp_path / "fw" / "merge_config.yaml").is_file()
    _assert_outputs_agree(tmp_path / "fw", tmp_path / "tiny")
    capsys.readouterr()
    files["qa"].write_text(json.dumps({"question": "Q?", "answer": "A"}) + "\n")
    assert merge("no_prompt") == 2
    assert "qa.jsonl: row 1 has no column 'prompt'" in capsys.readouterr().err
    assert merge("regmean", method="regmean", parameters={}) == 2
    assert "regmean does not merge LoRA adapters" in capsys.readouterr().err
    assert not (tmp_path / "no_prompt").exists() and not (tmp_path / "regmean").exists()


@pytest.mark.parametrize("method", ["frank_wolfe", "regmean"])
def test_full_causal_lm_fine_tunes_merge_from_the_merge_cli_on_prompt_answer_files(tiny_pool, tmp_path, method):
    """Full fine-tunes (every parameter merged), the same answer-token objective in weights space."""
    from transformers import AutoModelForCausalLM

    from merging.cli import main as merge_main

    trained = tiny_pool("full")
    main(["finetune", "--pool", str(trained)])
    folders = load_pool(trained).candidates(0)
    for task in folders:
        (tmp_path / f"{task}.jsonl").write_text(json.dumps({"prompt": f"{task}?", "answer": "yes"}) + "\n")
    config = {"method": method, "base": str(tmp_path / "tiny"), "parameters": {"iterations": 2} if method ==
              "frank_wolfe" else {}, "models": [{"model": str(f), "task": t} for t, f in folders.items()],
              "data": {"kind": "causal_lm", "tasks": {t: {"proxy": str(tmp_path / f"{t}.jsonl")} for t in folders}}}
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(config))
    assert merge_main(["merge", str(tmp_path / "full.yaml"), "--out", str(tmp_path / "merged"), "--quiet"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")(ids).logits)
    info = json.loads((tmp_path / "merged" / "merge_info.json").read_text())
    assert info["method"] == method and (method != "frank_wolfe" or len(info["log"]["history"]) == 2)
    assert "library_name: transformers" in (tmp_path / "merged" / "README.md").read_text()
