"""The committed real-prose data (datasets/prose): sizes, held-out splits, QA spans, provenance.

No model is loaded: token counts are read from the manifest (datasets/prose/build.py wrote them
with the default model's tokenizer; `build.py check` recomputes everything).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "prose"
SPLIT_OF_SET = {"kv-val": "val", "qa-val": "val", "kv-test": "test", "qa-test": "test", "train": "train"}
PROJECT_TEXTS = [ROOT / "samples", ROOT / "benchmarks" / "tuning", ROOT / "gradmem_cli" / "data" / "squad_mini.jsonl"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _grams(text: str, n: int) -> set[str]:
    w = _words(text)
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


@pytest.fixture(scope="module")
def manifest() -> list[dict]:
    return _jsonl(DATA / "manifest.jsonl")


@pytest.fixture(scope="module")
def texts(manifest: list[dict]) -> dict[str, str]:
    """Passage id -> text, read from the files each set lives in."""
    out: dict[str, str] = {}
    for name in ("kv-val", "kv-test"):
        for f in sorted((DATA / name).glob("*.txt")):
            out[f.stem] = f.read_text(encoding="utf-8").removesuffix("\n")
    for rec in _jsonl(DATA / "train-passages.jsonl"):
        out[rec["id"]] = rec["text"]
    for name in ("qa-val", "qa-test"):
        for rec in _jsonl(DATA / f"{name}.jsonl"):
            assert out.setdefault(rec["passage"], rec["context"]) == rec["context"]
    return out


@pytest.fixture(scope="module")
def qa() -> dict[str, list[dict]]:
    return {name: _jsonl(DATA / f"{name}.jsonl") for name in ("qa-val", "qa-test")}


def test_manifest_matches_the_files(manifest: list[dict], texts: dict[str, str]) -> None:
    ids = [m["id"] for m in manifest]
    assert len(ids) == len(set(ids)), "a passage listed twice"
    assert set(ids) == set(texts), "manifest and files list different passages"
    for m in manifest:
        assert hashlib.sha256(texts[m["id"]].encode("utf-8")).hexdigest() == m["sha256"], m["id"]
        assert SPLIT_OF_SET[m["set"]] == m["split"], m["id"]
        assert m["package"] and m["version"] and m["licence"] and m["title"], m["id"]


def test_passages_are_clean_text(texts: dict[str, str], manifest: list[dict]) -> None:
    source = {m["id"]: m["source"] for m in manifest}
    for pid, t in texts.items():
        assert t == t.strip() and "\t" not in t and "\r" not in t, pid
        assert "\n\n\n" not in t and not re.search(r"[ ]{2,}| \n|\n ", t), pid
        assert not re.search(r"[{}]|https?://", t), pid      # dictd cross-reference braces, links
        if source[pid] == "foldoc":
            assert not re.search(r"(^|\n)<[a-z ,]+>", t), pid   # domain tags: <hardware>
        if source[pid] == "factbook":
            assert "++" not in t, pid          # the factbook's paragraph separator
        if source[pid] in ("austen", "devil"):
            assert not re.search(r"\b_|_\b", t), pid   # _italics_ markers


def test_kv_sets_spread_over_lengths_and_sources(manifest: list[dict]) -> None:
    for name in ("kv-val", "kv-test"):
        rows = [m for m in manifest if m["set"] == name]
        assert len(rows) >= 40 and len(list((DATA / name).glob("*.txt"))) == len(rows)
        tokens = [m["tokens"] for m in rows]
        assert all(100 <= t <= 1000 for t in tokens), name
        bands = Counter(0 if t < 200 else 1 if t < 500 else 2 for t in tokens)
        assert min(bands[b] for b in range(3)) >= len(rows) // 3 - 1, (name, bands)
        assert len({m["source"] for m in rows}) >= 4, name


def test_qa_sets_sizes(qa: dict[str, list[dict]], manifest: list[dict]) -> None:
    need = {"qa-val": (120, 30), "qa-test": (240, 60)}
    tokens = {m["id"]: m["tokens"] for m in manifest}
    for name, rows in qa.items():
        per_passage = Counter(r["passage"] for r in rows)
        assert len(rows) >= need[name][0] and len(per_passage) >= need[name][1], name
        assert all(3 <= n <= 5 for n in per_passage.values()), name
        assert all(60 <= tokens[p] <= 300 for p in per_passage), name
        assert len({r["id"] for r in rows}) == len(rows)
        assert {m["id"] for m in manifest if m["set"] == name} == set(per_passage)


def test_qa_answers_are_short_spans_and_a_quarter_unanswerable(qa: dict[str, list[dict]]) -> None:
    for name, rows in qa.items():
        for r in rows:
            assert set(r) >= {"id", "context", "question", "answers", "answerable", "source"}
            assert r["question"].strip().endswith(("?", ".")), r["id"]
            if r["answerable"]:
                assert r["answers"], r["id"]
                for a in r["answers"]:
                    assert a.lower() in r["context"].lower(), (r["id"], a)
                    assert 1 <= len(a.split()) <= 6, (r["id"], a)
            else:
                assert r["answers"] == [], r["id"]
        share = sum(not r["answerable"] for r in rows) / len(rows)
        assert share >= 0.25, (name, share)
        assert any(r["answerable"] for r in rows)


def test_train_passages(manifest: list[dict]) -> None:
    rows = _jsonl(DATA / "train-passages.jsonl")
    assert len(rows) >= 1500
    assert all(60 <= r["tokens"] <= 400 for r in rows)
    assert len({r["source"] for r in rows}) >= 4


def test_splits_share_no_passage_entry_or_8_word_run(manifest: list[dict], texts: dict[str, str]) -> None:
    by_split: dict[str, list[str]] = defaultdict(list)
    for m in manifest:
        by_split[m["split"]].append(m["id"])
    # one source entry (article, country profile, chapter) and one group never spans two splits
    for key in ("entry", "group"):
        owners: dict[str, set[str]] = defaultdict(set)
        for m in manifest:
            owners[f"{m['source']}:{m[key]}" if key == "entry" else m[key]].add(m["split"])
        assert all(len(s) == 1 for s in owners.values()), key
    # the sets within a split use disjoint groups as well (kv-* against qa-*)
    group_sets: dict[str, set[str]] = defaultdict(set)
    for m in manifest:
        group_sets[m["group"]].add(m["set"])
    assert all(len(s) == 1 for s in group_sets.values())
    grams = {s: set().union(*(_grams(texts[i], 8) for i in ids)) for s, ids in by_split.items()}
    norm = {s: {" ".join(_words(texts[i])) for i in ids} for s, ids in by_split.items()}
    for a, b in combinations(sorted(by_split), 2):
        assert not norm[a] & norm[b], (a, b)
        shared = grams[a] & grams[b]
        assert not shared, (a, b, sorted(shared)[:3])


def _project_texts() -> list[tuple[str, str]]:
    out = []
    for p in PROJECT_TEXTS:
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if f.suffix == ".jsonl":
                for i, line in enumerate(text.splitlines()):
                    if line.strip():
                        rec = json.loads(line)
                        out.append((f"{f}:{i}", " ".join(str(v) for v in rec.values() if isinstance(v, str))))
            else:
                out.append((str(f), text))
    return out


def test_nothing_comes_near_the_projects_own_texts(texts: dict[str, str]) -> None:
    project = _project_texts()
    assert any("lighthouse" in name for name, _ in project) and any("squad_mini" in n for n, _ in project)
    own8 = set().union(*(_grams(t, 8) for _, t in project))
    own5 = [(name, _grams(t, 5)) for name, t in project]
    for pid, t in texts.items():
        assert not _grams(t, 8) & own8, pid
        g5 = _grams(t, 5)
        for name, g in own5:
            if g and g5:
                assert len(g & g5) / len(g | g5) < 0.1, (pid, name)


def test_folder_stays_small() -> None:
    size = sum(f.stat().st_size for f in DATA.rglob("*") if f.is_file())
    assert size < 15 * 2**20, size
