"""Key-value retrieval in the GradMem paper's format (its main experiment).

Context: N pairs ``!KK:VV!`` concatenated, then ``|``. Query: ``?!KK:`` for one of the keys.
Target: ``VV!|``. Keys and values are 2 characters from [a-zA-Z0-9]; keys are unique within a
sample, values may repeat. For N=16 the context is 7*16+1 = 113 characters.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradmem_cli.errors import GradmemError
from gradmem_cli.tasks.base import DEFAULT_LIMIT, Dataset, Example, Options, Task, file_source, read_jsonl

ALPHABET = string.ascii_letters + string.digits  # the paper's 62 characters ("V62")
SYMBOLS = "!?:|"
KEY_CHARS = 2
VALUE_CHARS = 2


@dataclass(frozen=True)
class KVSample:
    context: str
    query: str
    target: str

    @property
    def value(self) -> str:
        """The characters exact match is scored on (the paper excludes ``!`` and ``|``)."""
        return self.target[:VALUE_CHARS]

    def to_dict(self) -> dict[str, str]:
        return {"context": self.context, "query": self.query, "target": self.target}


def generate(pairs: int, rng: random.Random) -> KVSample:
    """One sample with ``pairs`` key-value pairs; the queried key is chosen uniformly."""
    if pairs < 1:
        raise ValueError("pairs must be at least 1")
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < pairs:
        key = "".join(rng.choices(ALPHABET, k=KEY_CHARS))
        if key not in seen:
            seen.add(key)
            keys.append(key)
    values = ["".join(rng.choices(ALPHABET, k=VALUE_CHARS)) for _ in keys]
    context = "".join(f"!{k}:{v}!" for k, v in zip(keys, values)) + "|"
    i = rng.randrange(pairs)
    return KVSample(context=context, query=f"?!{keys[i]}:", target=f"{values[i]}!|")


def dataset(pairs: int, count: int, seed: int) -> list[KVSample]:
    """``count`` samples, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [generate(pairs, rng) for _ in range(count)]


def parse(record: dict, where: str) -> KVSample:
    """A ``{"context", "query", "target"}`` record (one JSONL line) checked against the format."""
    try:
        sample = KVSample(context=record["context"], query=record["query"], target=record["target"])
    except (KeyError, TypeError):
        raise ValueError(f"{where}: a kv record needs string fields context, query and target") from None
    if not all(isinstance(x, str) for x in (sample.context, sample.query, sample.target)):
        raise ValueError(f"{where}: context, query and target must be strings")
    if not (sample.context.endswith("|") and sample.query.startswith("?!") and sample.query.endswith(":")
            and sample.target.endswith("!|") and len(sample.target) == VALUE_CHARS + 2):
        raise ValueError(f"{where}: not in the kv format (context '!KK:VV!...|', query '?!KK:', target 'VV!|')")
    return sample


def load_kv(path: Path) -> list[Example]:
    """Samples from a JSONL file in the paper's format (one {context, query, target} per line)."""
    examples = []
    for i, (where, record) in enumerate(read_jsonl(path)):
        try:
            sample = parse(record, where)
        except ValueError as exc:
            raise GradmemError(str(exc)) from None
        examples.append(_example(str(record.get("id", i)), sample))
    return examples


def _example(id_: str, sample: KVSample) -> Example:
    return Example(id=id_, context=sample.context, question=sample.query, answers=[sample.target])


class KV(Task):
    name = "kv"
    help = "the paper's key-value retrieval, generated (--pairs N)"
    main_metric = "em_tf"
    max_new_tokens = 4
    template = False  # queries are read as they are: ?!KK: -> VV!|
    data_help = "JSONL {context, query, target} in the paper's format"

    def examples(self, data: Path | None, limit: int | None, seed: int, options: Options) -> Dataset:
        if data is not None:
            return Dataset(load_kv(data), file_source(data))
        samples = dataset(options.pairs, limit or DEFAULT_LIMIT, seed)
        return Dataset([_example(str(i), s) for i, s in enumerate(samples)],
                       {"generator": "kv", "pairs": options.pairs, "seed": seed})

    def train_example(self, rng: random.Random, options: Options) -> Example:
        return _example("", generate(options.pairs, rng))

    def user_text(self, ex: Example, context: str | None) -> str:
        return ex.question if context is None else context + ex.question

    def target(self, tokenizer: Any, ex: Example) -> tuple[list[int], list[bool]]:
        """The target ``VV!|``; exact match is scored on the value characters alone (as in the paper)."""
        enc = tokenizer(ex.answers[0], add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [start < VALUE_CHARS for start, _ in enc["offset_mapping"]]

    def score(self, answer: str, ex: Example, hits: list[bool]) -> dict[str, float]:
        value = ex.answers[0][:VALUE_CHARS]
        return {"em_tf": float(all(hits)), "em": float(answer.lstrip()[:VALUE_CHARS] == value)}
