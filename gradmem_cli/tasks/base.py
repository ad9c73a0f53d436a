"""What a task is: its examples, how a condition prompts for an answer, and how the answer scores.

A task module defines a :class:`Task` subclass and registers it in ``tasks/__init__.py``. The
evaluation harness runs any task under every condition (memory, no-context, full-context,
via-text); ``gradmem train`` draws training examples from the tasks that generate them.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradmem_cli.errors import GradmemError
from gradmem_cli.tasks.metrics import contains, exact_match, f1
from gradmem_cli.lm.generate import Reader, with_context
from gradmem_cli.memory.documents import decode_text, text_files
from gradmem_cli.fileio import MAX_TEXT_BYTES, check_regular_file, loads_json, read_capped

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel
    from gradmem_cli.memory.memfile import MemoryFile

DEFAULT_LIMIT = 20  # examples drawn from a generator when --limit is not given


@dataclass
class Example:
    """One item: a context to write, a question, and the gold answers.

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
    source: dict[str, Any]  # what produced it: generator settings, or a file path and its sha256


@dataclass
class Options:
    """Task-specific settings of ``gradmem eval`` (each task reads the ones it knows)."""

    pairs: int = 8  # kv: key-value pairs per generated context
    variant: str = "qa1"  # babi: which task, qa1..qa5
    split: str = "test"  # babi: which split's stories and questions (train, val, test)


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """Records of a JSONL file with their locations (``FILE line N``); blank lines are skipped."""
    text = decode_text(read_capped(path, MAX_TEXT_BYTES), str(path))
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = loads_json(line)
        except ValueError as exc:  # not JSON, NaN or Infinity, too deep
            raise GradmemError(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(record, dict):
            raise GradmemError(f"{where}: expected a JSON object")
        records.append((where, record))
    if not records:
        raise GradmemError(f"{path} holds no records")
    return records


def word_runs(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words (lower case): two texts that share one share a passage,
    which is how training texts are checked against held-out ones."""
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def file_source(path: Path) -> dict[str, Any]:
    """A data file or folder of texts, identified by path and content hash."""
    digest = hashlib.sha256()
    if path.is_dir():
        for f in text_files(path):
            digest.update(f.name.encode() + b"\0" + read_capped(f, MAX_TEXT_BYTES))
    else:
        digest.update(read_capped(path, MAX_TEXT_BYTES))
    return {"data": str(path), "sha256": digest.hexdigest()}


class Task:
    """A task: subclasses set the class attributes and implement :meth:`examples` (and, to be
    trainable, :meth:`train_example`); the scoring defaults are those of short-answer QA."""

    name: str
    help: str
    main_metric: str = "f1"
    max_new_tokens: int = 24  # default answer budget
    instruction: str = ""  # appended to every question
    template: bool = True  # prompts go through the model's chat template (kv: raw tokens)
    data_help: str = "JSONL {context, question, answers}"
    whole_memory: bool = True  # the memory condition reads every segment's vectors before the prompt

    def examples(self, data: Path | None, limit: int | None, seed: int, options: Options) -> Dataset:
        """The examples from ``data`` if given, else the built-in set or generator."""
        raise NotImplementedError

    def load(self, data: Path | None, limit: int | None, seed: int, options: Options | None = None) -> Dataset:
        if limit is not None and limit < 1:
            raise GradmemError("--limit must be at least 1")
        if data is not None and not data.is_dir():
            check_regular_file(data)
        dataset = self.examples(data, limit, seed, options or Options())
        if limit:
            dataset.examples = dataset.examples[:limit]
        return dataset

    def train_example(self, rng: random.Random, options: Options) -> Example:
        """One training example drawn from ``rng`` (tasks with a generator)."""
        raise GradmemError(f"task '{self.name}' has no generator to train on")

    # --- one answer under one condition -------------------------------------------------------

    def user_text(self, ex: Example, context: str | None) -> str:
        """The prompt: the question, after the context when the condition shows it."""
        question = ex.question + self.instruction
        return question if context is None else with_context(context, question)

    def target(self, tokenizer: Any, ex: Example) -> tuple[list[int], list[bool]]:
        """The gold continuation's token ids, and which of them exact match is scored on."""
        ids = list(tokenizer(ex.answers[0], add_special_tokens=False)["input_ids"])
        return ids, [True] * len(ids)

    def score(self, answer: str, ex: Example, hits: list[bool]) -> dict[str, float]:
        """Scores of a generated answer; ``hits`` are the teacher-forced checks of the scored tokens."""
        return {"em": exact_match(answer, ex.answers), "f1": f1(answer, ex.answers),
                "contains": contains(answer, ex.answers), "em_tf": float(all(hits))}

    def respond(self, lm: LoadedModel, reader: Reader, ex: Example, context: str | None,
                memfile: MemoryFile | None, max_new_tokens: int) -> tuple[dict[str, Any], dict[str, float]]:
        """Answer ``ex`` with ``reader`` (which holds the memory, if any) and score it; returns the
        outputs to log and the scores."""
        text = self.user_text(ex, context)
        answer = reader.answer(text, max_new_tokens=max_new_tokens, template=self.template)
        target, scored = self.target(lm.tokenizer, ex)
        hits = reader.hits(text, target, self.template)
        return {"answer": answer.text}, self.score(answer.text, ex, [h for h, s in zip(hits, scored) if s])
