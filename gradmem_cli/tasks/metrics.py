"""Answer metrics: SQuAD-style exact match and token F1, and text reconstruction scores."""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def f1(prediction: str, answers: list[str]) -> float:
    """Best token-overlap F1 of the prediction against the gold answers (the SQuAD v1.1 script: no
    shared token, an empty answer included, scores 0)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains(prediction: str, answers: list[str]) -> float:
    """1.0 when a normalised gold answer appears in the normalised prediction as whole words: a right
    answer in a sentence ("Mary is in the kitchen.") counts, which F1 against one word does not."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(a) and f" {normalize_answer(a)} " in pred for a in answers))


def token_accuracy(predicted: list[int], reference: list[int]) -> float:
    """Share of reference tokens reproduced at the same position."""
    if not reference:
        return float(not predicted)
    return sum(a == b for a, b in zip(predicted, reference)) / len(reference)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
