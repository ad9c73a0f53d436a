"""Short-answer questions on passages: ``qa`` for your own JSONL, ``squad`` also for the official
SQuAD v1.1 JSON; both default to the shipped SQuAD-style set (``squad_mini``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from gradmem_cli.errors import GradmemError, shown
from gradmem_cli.memory.documents import decode_text
from gradmem_cli.fileio import MAX_TEXT_BYTES, loads_json, read_capped
from gradmem_cli.tasks.base import Dataset, Example, Options, Task, file_source, read_jsonl


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
                    examples.append(_qa_example(f"{path} question {shown(qa.get('id'), 40)}", {
                        "id": qa.get("id", len(examples)), "context": paragraph["context"],
                        "question": qa["question"], "answers": answers}, len(examples)))
    except (KeyError, TypeError):
        raise GradmemError(f"{path}: not in the SQuAD v1.1 layout (data/paragraphs/qas/answers)") from None
    return examples


def load_qa(path: Path) -> list[Example]:
    """``{"context", "question", "answers"}`` JSONL, or an official SQuAD v1.1 JSON file."""
    raw = read_capped(path, MAX_TEXT_BYTES)
    if raw.lstrip().startswith(b"{") and b'"data"' in raw[:4096]:
        try:
            data = loads_json(decode_text(raw, str(path)))
        except ValueError:  # not JSON (then read as JSONL), NaN or Infinity, too deep
            data = None
        if isinstance(data, dict) and "data" in data:
            return _squad_json(path, data)
    return [_qa_example(where, rec, i) for i, (where, rec) in enumerate(read_jsonl(path))]




class QA(Task):
    name = "qa"
    help = "questions on passages: your JSONL, or the shipped squad_mini set"
    instruction = " Answer with a short phrase."
    data_help = "JSONL {context, question, answers}, or the official SQuAD v1.1 JSON"

    def examples(self, data: Path | None, limit: int | None, seed: int, options: Options) -> Dataset:
        if data is not None:
            return Dataset(load_qa(data), file_source(data))
        with resources.as_file(resources.files("gradmem_cli") / "data" / "squad_mini.jsonl") as path:
            return Dataset(load_qa(path), {"builtin": "squad_mini.jsonl", "sha256": file_source(path)["sha256"]})


class Squad(QA):
    name = "squad"
    help = "SQuAD-style questions: the official v1.1 JSON with --data, else the shipped squad_mini set"
