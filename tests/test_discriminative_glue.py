"""The paper's GLUE / RoBERTa code path (configs/discriminative/roberta_glue.yaml) offline: a tiny randomly
initialised RoBERTa with a byte-level BPE tokenizer of a few words, GLUE rows served in place of `datasets`, and
checkpoints given in the pool YAML (as the paper config names hub checkpoints)."""
import random

import pytest
import torch
import yaml

torch.set_num_threads(1)

from discriminative import glue
from discriminative.pool import load_pool
from merging.benchmark.evaluate import Evaluator
from merging.benchmark.experiment import run_experiment
from merging.benchmark.results import read_rows
from merging.benchmark.store import finetune

WORDS = ["good", "bad", "film", "plot", "same", "other", "text", "idea"]


def fake_glue(task: str, split: str) -> list[dict]:
    """Rows shaped like nyu-mll/glue: sst2 (sentence, label), mrpc (sentence1, sentence2, label)."""
    rng = random.Random(f"{task}/{split}")
    rows = []
    for i in range({"train": 800, "validation": 60}[split]):
        words = " ".join(rng.choice(WORDS) for _ in range(4))
        if task == "sst2":
            rows.append({"sentence": words, "label": int("good" in words), "idx": i})
        else:
            same = rng.random() < 0.5
            rows.append({"sentence1": words, "sentence2": words if same else words[::-1], "label": int(same),
                         "idx": i})
    return rows


@pytest.fixture
def glue_pool(tmp_path, monkeypatch):
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(glue, "_load", fake_glue)
    base = tmp_path / "roberta-tiny"
    tokens, merges = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *sorted(ByteLevel.alphabet())], []
    for word in ["\u0120" + w for w in WORDS] + WORDS:  # byte-level BPE merges spelling each word ("Ġ" = space)
        for end in range(2, len(word) + 1):
            merges.append((word[:end - 1], word[end - 1]))
            tokens.append(word[:end])
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    RobertaTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges))).save_pretrained(base)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=80, pad_token_id=1,
                               bos_token_id=0, eos_token_id=2), add_pooling_layer=False).save_pretrained(base)
    raw = {"name": "roberta_tiny", "base": str(base), "tasks": ["sst2", "mrpc"], "head": [r"^classifier\."],
           "max_length": 48, "data": "glue", "finetune": {"epochs": 3, "lr": 2e-3, "batch_size": 16, "seeds": [0]}}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(raw))
    tuned = load_pool(tmp_path / "tune.yaml")
    given = {task: str(finetune(tuned, task, progress=False)) for task in raw["tasks"]}
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump({**raw, "name": "roberta_given", "checkpoints": given}))
    return load_pool(tmp_path / "pool.yaml"), given, tmp_path


def test_glue_splits_follow_the_paper_evaluation():
    rows = {split: fake_glue("sst2", split) for split in ("train", "validation")}
    original = glue._load
    try:
        glue._load = fake_glue
        test = glue.glue_split("sst2", "test")
        validation, train = glue.glue_split("sst2", "validation"), glue.glue_split("sst2", "train")
    finally:
        glue._load = original
    assert [e.text for e in test] == [r["sentence"] for r in rows["validation"]]   # GLUE validation = our test
    assert len(validation) == 300 and len(train) == 500                             # 800 train rows: 300 held out
    assert not {id(e) for e in validation} & {id(e) for e in train}
    assert sorted(e.text for e in validation + train) == sorted(r["sentence"] for r in rows["train"])


def test_given_roberta_checkpoints_merge_and_evaluate_with_glue_metrics(glue_pool):
    pool, given, root = glue_pool
    evaluator = Evaluator(pool, "test")
    assert [str(evaluator.checkpoint(t)) for t in pool.tasks] == [given["sst2"], given["mrpc"]]
    assert len(evaluator.examples["mrpc"]) == 60 and evaluator.examples["mrpc"][0].text_pair is not None
    outs = root / "outs"
    for method, overrides in [("finetuned", {}), ("pretrained", {}), ("task_arithmetic", {"scaling": 0.5})]:
        run_experiment(pool, method, "glue", overrides, progress=False, outs=outs)
    rows = {r["method"]: r for r in read_rows(outs / "glue" / "results.csv")}
    assert float(rows["finetuned"]["normalized"]) == pytest.approx(100.0)
    assert float(rows["finetuned"]["sst2"]) > 80          # the given checkpoints are the ones evaluated
    assert rows["task_arithmetic"]["params"] == '{"lambda": 0.5, "weight": 1.0}'
    assert all(0 <= float(rows[m][t]) <= 100 for m in rows for t in pool.tasks)
