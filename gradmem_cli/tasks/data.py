"""Evaluation examples from built-in generators and sets, or from the user's own files (``--data``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gradmem_cli.documents import decode_text, text_files
from gradmem_cli.errors import GradmemError
from gradmem_cli.tasks import babi, kv

TASKS = ("kv", "babi", "squad", "qa", "recon")
DEFAULT_LIMIT = 20  # examples drawn from a generator when --limit is not given


@dataclass
class Example:
    """One evaluation item: a context to write, a question, and the gold answers.

    kv: question = the query ``?!KK:``, answers = [target ``VV!|``]. recon: question is empty and
    answers = [the text].
    """

    id: str
    context: str
    question: str
    answers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    examples: list[Example]
    source: dict[str, Any]  # what produced it: generator settings or file path and sha256


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise GradmemError(f"no such file: {path}")
    return path.read_bytes()


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """Records of a JSONL file with their locations (``FILE line N``); blank lines are skipped."""
    text = decode_text(_read(path), str(path))
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GradmemError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise GradmemError(f"{where}: expected a JSON object")
        records.append((where, record))
    if not records:
        raise GradmemError(f"{path} holds no records")
    return records


def _qa_example(where: str, record: dict, index: int) -> Example:
    context, question, answers = record.get("context"), record.get("question"), record.get("answers")
    if not isinstance(context, str) or not context.strip():
        raise GradmemError(f"{where}: 'context' must be a non-empty string")
    if not isinstance(question, str) or not question.strip():
        raise GradmemError(f"{where}: 'question' must be a non-empty string")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise GradmemError(f"{where}: 'answers' must be a non-empty list of strings")
    return Example(id=str(record.get("id", index)), context=context, question=question, answers=answers)


def _squad_json(path: Path, data: dict) -> list[Example]:
    """The official SQuAD v1.1 layout: data[].paragraphs[].qas[].answers[].text."""
    examples = []
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = [a["text"] for a in qa["answers"]]
                    examples.append(_qa_example(f"{path} question {qa.get('id')}", {
                        "id": qa.get("id", len(examples)), "context": paragraph["context"],
                        "question": qa["question"], "answers": answers}, len(examples)))
    except (KeyError, TypeError):
        raise GradmemError(f"{path}: not in the SQuAD v1.1 layout (data/paragraphs/qas/answers)") from None
    return examples


def load_qa(path: Path) -> list[Example]:
    """``{"context", "question", "answers"}`` JSONL, or an official SQuAD v1.1 JSON file."""
    raw = _read(path)
    if raw.lstrip().startswith(b"{") and b'"data"' in raw[:4096]:
        try:
            data = json.loads(decode_text(raw, str(path)))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "data" in data:
            return _squad_json(path, data)
    return [_qa_example(where, rec, i) for i, (where, rec) in enumerate(read_jsonl(path))]


def load_kv(path: Path) -> list[Example]:
    examples = []
    for i, (where, record) in enumerate(read_jsonl(path)):
        try:
            sample = kv.parse(record, where)
        except ValueError as exc:
            raise GradmemError(str(exc)) from None
        examples.append(Example(id=str(record.get("id", i)), context=sample.context, question=sample.query,
                                answers=[sample.target]))
    return examples


def load_recon(path: Path) -> list[Example]:
    """A folder of ``.txt`` files, or ``{"text"}`` JSONL."""
    if path.is_dir():
        files = text_files(path)
        texts = [(f.stem, decode_text(f.read_bytes(), str(f))) for f in files]
    else:
        texts = []
        for i, (where, record) in enumerate(read_jsonl(path)):
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise GradmemError(f"{where}: 'text' must be a non-empty string")
            texts.append((str(record.get("id", i)), text))
    return [Example(id=name, context=text, question="", answers=[text]) for name, text in texts]


def _file_source(path: Path) -> dict[str, Any]:
    if path.is_dir():
        digest = hashlib.sha256()
        for f in text_files(path):
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
        return {"data": str(path), "sha256": digest.hexdigest()}
    return {"data": str(path), "sha256": hashlib.sha256(_read(path)).hexdigest()}


def builtin_recon_dir() -> Path:
    """The sample paragraphs of a source checkout (``samples/paragraphs``)."""
    folder = Path(__file__).resolve().parents[2] / "samples" / "paragraphs"
    if not folder.is_dir():
        raise GradmemError("the built-in recon texts (samples/paragraphs) are not here; pass --data")
    return folder


def load(task: str, data: Path | None, limit: int | None, seed: int, pairs: int = 8,
         babi_task: str = "qa1") -> Dataset:
    """The examples of a task: from ``data`` if given, else the built-in source; at most ``limit``."""
    if task not in TASKS:
        raise GradmemError(f"unknown task '{task}' (use {', '.join(TASKS)})")
    if limit is not None and limit < 1:
        raise GradmemError("--limit must be at least 1")
    if data is not None:
        loader = {"kv": load_kv, "recon": load_recon}.get(task, load_qa)
        if not data.exists():
            raise GradmemError(f"no such file: {data}")
        examples, source = loader(data), _file_source(data)
    elif task == "kv":
        count = limit or DEFAULT_LIMIT
        examples = [Example(str(i), s.context, s.query, [s.target]) for i, s in enumerate(kv.dataset(pairs, count, seed))]
        source = {"generator": "kv", "pairs": pairs, "seed": seed}
    elif task == "babi":
        count = limit or DEFAULT_LIMIT
        examples = [Example(f"{babi_task}-{i}", str(r["context"]), str(r["question"]), list(r["answers"]))
                    for i, r in enumerate(babi.dataset(babi_task, count, seed))]
        source = {"generator": "babi", "task": babi_task, "seed": seed}
    elif task == "recon":
        folder = builtin_recon_dir()
        examples, source = load_recon(folder), {"builtin": "samples/paragraphs", **_file_source(folder)}
    else:  # squad and qa default to the shipped SQuAD-style set
        with resources.as_file(resources.files("gradmem_cli") / "data" / "squad_mini.jsonl") as path:
            examples = load_qa(path)
            source = {"builtin": "squad_mini.jsonl", "sha256": _file_source(path)["sha256"]}
    return Dataset(examples=examples[:limit] if limit else examples, source=source)
