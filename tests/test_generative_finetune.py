"""generative/finetune.py: the loss covers the answer only, a LoRA adapter learns a tiny task, is saved once
(resumable) and reloads with peft."""
from __future__ import annotations

import json

import torch
from peft import PeftModel
from tiny_lm import tiny_byte_llama

from generative.finetune import MARKER, LoraTraining, batch_of, render, train
from generative.lm_eval_tasks import LocalTask

TASK = LocalTask("echo", "exact_match", [{"input": f"say {c}", "target": c} for c in "abcdefgh"])


def test_labels_cover_the_answer_and_end_of_text_only():
    _, tokenizer = tiny_byte_llama()
    batch = batch_of(tokenizer, TASK, TASK.examples[:2])
    prompt = tokenizer(render(TASK.prompt, TASK.examples[0])).input_ids
    answer = tokenizer(render(TASK.prompt, TASK.examples[0]) + " a").input_ids[len(prompt):]
    labels = batch["labels"][0].tolist()
    assert labels[:len(prompt)] == [-100] * len(prompt)
    assert labels[len(prompt):len(prompt) + len(answer) + 1] == answer + [tokenizer.eos_token_id]
    assert batch["attention_mask"].sum().item() == (batch["labels"] != -100).sum().item() + 2 * len(prompt)
    mc = LocalTask("mc", "multiple_choice", [{"input": "q", "choices": ["no", "yes"], "label": 1}], prompt="{{input}}?")
    assert tokenizer.decode([t for t in batch_of(tokenizer, mc, mc.examples)["labels"][0].tolist() if t >= 0]) == \
        " yes<|endoftext|>"


def test_an_adapter_learns_the_task_is_saved_once_and_reloads(tmp_path):
    model, tokenizer = tiny_byte_llama()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    training = LoraTraining(r=4, alpha=8, dropout=0.0, lr=0.05, batch_size=8, epochs=40)
    out = train(tmp_path / "base", TASK, tmp_path / "adapter", training, progress=False)
    log = json.loads((out / MARKER).read_text())
    assert log["steps"] == 40 and log["losses"][-1] < 0.5 * log["losses"][0], log["losses"]
    stamp = (out / MARKER).stat().st_mtime_ns
    assert train(tmp_path / "base", TASK, out, training) == out  # kept, not retrained
    assert (out / MARKER).stat().st_mtime_ns == stamp
    tuned = PeftModel.from_pretrained(model, out).eval()
    batch = batch_of(tokenizer, TASK, TASK.examples)
    with torch.no_grad():
        assert float(tuned(**batch).loss) < log["losses"][0] * 0.5
