"""generative/: local lm-eval tasks scored through lm-eval's Python API (offline) equal the same scores
computed here from the model directly: choice log-likelihoods (multiple choice) and greedy decoding (exact
match), on a tiny random LlamaForCausalLM with a byte-level tokenizer."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from tiny_lm import tiny_byte_llama

from generative.evaluate import evaluate
from generative.lm_eval_tasks import LocalTask, write_tasks
from merging.errors import MergeError
from merging.run import git_sha

pytest.importorskip("lm_eval")
CHOICES = ["yes", "no", "maybe"]


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_byte_llama()


@torch.no_grad()
def choice_loglik(model, tokenizer, context: str, choice: str) -> float:
    """log p(" " + choice | context): the continuation's tokens are those of the whole text after the context's."""
    context_ids = tokenizer(context).input_ids
    whole = tokenizer(context + " " + choice).input_ids
    logp = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(len(context_ids), len(whole)))


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_new: int) -> str:
    ids = torch.tensor([tokenizer(prompt).input_ids])
    out = model.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=0, eos_token_id=None)
    return tokenizer.decode(out[0, ids.shape[1]:]).split("\n")[0].strip()


def test_lm_eval_scores_equal_the_model_computed_here(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    mc = [{"input": f"question {i}?", "choices": CHOICES, "label": i % 3} for i in range(4)]
    expected_acc = sum(max(range(3), key=lambda c: choice_loglik(model, tokenizer, e["input"], CHOICES[c]))
                       == e["label"] for e in mc) / len(mc)
    prompts = [f"add {i} and {i}:" for i in range(4)]
    outputs = [greedy(model, tokenizer, p, 4) for p in prompts]
    em = [{"input": p, "target": out if i < 2 else "never generated"}
          for i, (p, out) in enumerate(zip(prompts, outputs))]
    folder = write_tasks([LocalTask("mc", "multiple_choice", mc), LocalTask("em", "exact_match", em, max_gen_toks=4)],
                         tmp_path / "tasks")
    assert sorted(p.name for p in folder.iterdir()) == ["em.jsonl", "em.yaml", "mc.jsonl", "mc.yaml"]
    scores = evaluate(model, tokenizer, folder, {"mc": "multiple_choice", "em": "exact_match"},
                      tmp_path / "lm_eval.json", batch_size=1)
    assert scores == {"mc": pytest.approx(expected_acc), "em": pytest.approx(0.5)}
    saved = json.loads((tmp_path / "lm_eval.json").read_text())
    assert saved["results"]["mc"]["acc,none"] == pytest.approx(expected_acc)


def test_bad_tasks_are_errors_naming_them(tiny_lm, tmp_path):
    with pytest.raises(MergeError, match="task 'x', example 0: label 3"):
        write_tasks([LocalTask("x", "multiple_choice", [{"input": "q", "choices": ["a"], "label": 3}])], tmp_path / "t")
    with pytest.raises(MergeError, match="expected \\['input', 'target'\\]"):
        write_tasks([LocalTask("y", "exact_match", [{"input": "q"}])], tmp_path / "t")
    assert not (tmp_path / "t").exists()  # nothing half-written
    folder = write_tasks([LocalTask("z", "exact_match", [{"input": "q", "target": "a"}])], tmp_path / "ok")
    with pytest.raises(MergeError, match="'missing'.*no YAML"):
        evaluate(*tiny_lm, folder, {"missing": "exact_match"})


def test_lm_eval_says_nothing_about_what_we_do_on_purpose(tiny_lm, tmp_path, caplog, capfd, monkeypatch):
    model, tokenizer = tiny_lm
    folder = write_tasks([LocalTask("mc", "multiple_choice", [{"input": "q?", "choices": CHOICES, "label": 0}])],
                         tmp_path / "tasks")
    monkeypatch.chdir(tmp_path)  # outside a git checkout: lm-eval's own `git describe` would say "fatal: …"
    with caplog.at_level("WARNING"):
        evaluate(model, tokenizer, folder, {"mc": "multiple_choice"}, tmp_path / "out.json", batch_size=1)
    said = caplog.text + capfd.readouterr().err
    for notice in ("not of type `str`", "already-initialized model", "Overwriting default num_fewshot",
                   "not a git repository", "Generating test split"):
        assert notice not in said, notice
    assert not logging.getLogger("lm_eval.models.huggingface").filters  # the filters are removed afterwards
    assert json.loads((tmp_path / "out.json").read_text())["git_hash"] == git_sha()  # the toolkit's commit
