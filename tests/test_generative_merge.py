"""generative/objective.py and generative/merge.py: the FW objective is the answer-token loss, and the CLI trains
two adapters on a tiny Llama, merges them (data-free and FW in both spaces), scores the merges through
lm-eval, and writes an adapter and a full model that reload."""
from __future__ import annotations

import json

import pytest
import torch

from generative import data
from generative.__main__ import main
from generative.finetune import batch_of
from generative.objective import CausalLMObjective
from generative.run import merged_dir
from merging.errors import MergeError
from tiny_lm import tiny_byte_llama


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


def test_cli_trains_merges_scores_and_saves_reloadable_outputs(suite, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_byte_llama()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    common = ["--model", str(tmp_path / "tiny"), "--tasks", "qa", "yesno", "--outs", str(tmp_path / "outs"),
              "--experiment", "demo", "--limit", "4"]
    main(["finetune", *common, "--epochs", "15", "--lr", "0.05"])  # 2 adapters, 15 steps each
    main(["finetuned", *common])
    runs = [("task_arithmetic", ["--set", "lambda=0.5"]),
            ("frank_wolfe", ["--set", "iterations=2", "--set", "proxy_examples=4"]),
            ("frank_wolfe", ["--set", "iterations=2", "--set", "proxy_examples=4", "--set", "space=product"])]
    for method, settings in runs:
        main(["merge", method, *common, "--limit-validation", "4", *settings])
    rows = (tmp_path / "outs" / "demo" / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [r.split(",")[0] for r in rows[1:]] == ["finetuned", "task_arithmetic lambda=0.5",
                                                   "frank_wolfe iterations=2 proxy_examples=4",
                                                   "frank_wolfe iterations=2 proxy_examples=4 space=product"]
    assert float(rows[1].split(",")[header.index("normalized")]) == 100
    assert (tmp_path / "outs" / "demo" / "lm_eval" / "task_arithmetic_lambda_0.5-seed0-test.json").is_file()

    out = merged_dir("frank_wolfe iterations=2 proxy_examples=4", 0)  # factor space: the adapters' r and alpha
    info = json.loads((out / "merge.json").read_text())
    assert info["space"] == "factors" and len(info["history"]) == 2
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    trained = json.loads((data.task_dir("qa").parents[0] / "adapters" / "qa-seed0" / "adapter_config.json")
                         .read_text())
    assert (config["r"], config["lora_alpha"]) == (trained["r"], trained["lora_alpha"])
    ids = torch.tensor([[5, 6, 7, 8]])
    full = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "tiny"),
                                             out / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, with_adapter(ids).logits, atol=1e-4)
        assert not torch.allclose(full(ids).logits, model(ids).logits, atol=1e-4)  # the merge changed the model
