"""Key-value retrieval in the GradMem paper's format (its main experiment).

Context: N pairs ``!KK:VV!`` concatenated, then ``|``. Query: ``?!KK:`` for one of the keys.
Target: ``VV!|``. Keys and values are 2 characters from [a-zA-Z0-9]; keys are unique within a
sample, values may repeat. For N=16 the context is 7*16+1 = 113 characters.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

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
