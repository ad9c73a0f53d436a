"""``gradmem self-study``: questions and answers a model writes about your own texts, to train a
reader on (``train-reader`` with ``task: qa``) without labelled data or evaluation sets.

Answer first, then question (answer-aware question generation, checked by a round trip):

1. each text is cut into passages of a few sentences;
2. candidate answers are spans of the passage that a reader can copy: names (runs of capitalised
   words) and quantities (a number, in digits or words, with the word after it);
3. the model turns the span's sentence, with the span blanked out, into a question, after a few
   worked examples (a question that shares no word with the sentence, or holds its answer, is dropped);
4. the model then answers its own question with the passage in its prompt, exactly as
   ``gradmem eval qa`` prompts for full context, and the pair is kept only when that answer
   contains the span. This drops questions about something else, which small models write often.

The answers are spans of the texts by construction, so a reader trained on them learns to answer
with a short phrase copied from what it read, which is what SQuAD-style evaluation scores.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradmem_cli.errors import UsageError, validated
from gradmem_cli.tasks.metrics import contains, normalize_answer
from gradmem_cli.lm.generate import Reader
from gradmem_cli.tasks import get_task
from gradmem_cli.tasks.base import Example

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel
    from gradmem_cli.memory.documents import Document


@dataclass(frozen=True)
class SelfStudyConfig:
    """How ``gradmem self-study`` cuts texts into passages and how many questions it asks."""

    per_passage: int = field(default=4, metadata={"help": "Candidate answers tried per passage (each gives at most "
                                                          "one question)."})
    min_words: int = field(default=40, metadata={"help": "Shortest passage: shorter paragraphs join the next."})
    max_words: int = field(default=120, metadata={"help": "Longest passage: longer paragraphs are cut at sentence "
                                                          "ends."})
    check: bool = field(default=True, metadata={"help": "Keep a question only when the model, reading the passage, "
                                                        "answers it with the span (--no-check keeps them all)."})
    seed: int = field(default=0, metadata={"help": "Picks the candidate answers of each passage."})

    def validate(self) -> SelfStudyConfig:
        checks = [(self.per_passage >= 1, "--per-passage must be at least 1"),
                  (1 <= self.min_words <= self.max_words, "need 1 <= --min-words <= --max-words")]
        return validated(self, checks)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(" ".join(paragraph.split())) if s]


def passages(text: str, min_words: int, max_words: int) -> list[str]:
    """Paragraphs (blank-line separated) of ``min_words``..``max_words`` words: short ones are joined
    with the next, long ones cut at sentence ends (a sentence longer than ``max_words`` stays whole)."""
    out: list[str] = []
    pending: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        for sentence in sentences(paragraph):
            if pending and len(" ".join(pending + [sentence]).split()) > max_words:
                out.append(" ".join(pending))
                pending = []
            pending.append(sentence)
        if pending and len(" ".join(pending).split()) >= min_words:
            out.append(" ".join(pending))
            pending = []
    if pending and len(" ".join(pending).split()) >= min_words:
        out.append(" ".join(pending))
    return out


_NUMBER_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
                 "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
                 "thousand million").split()
_NUMBER = r"(?:\d[\d,.]*|(?:" + "|".join(_NUMBER_WORDS) + r")(?:[- ](?:" + "|".join(_NUMBER_WORDS) + r"))*)"
_QUANTITY = re.compile(r"\b" + _NUMBER + r"\b(?:\s+([a-z][a-z-]+)\b)?", re.IGNORECASE)
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of\s+|the\s+)?[A-Z][\w'-]*)*")
_DULL = {"The", "A", "An", "In", "On", "At", "It", "Its", "His", "Her", "Their", "This", "That", "These", "Those",
         "Every", "Each", "When", "After", "Before", "Some", "One", "He", "She", "They", "We", "You", "I", "But",
         "And", "Or", "If", "For", "With", "By", "From", "To", "As", "There", "Once", "Dr", "Mr", "Mrs", "Ms", "St"}
# Words after a number that do not say what it counts ("four in the morning", "1847 beside the river").
_NOT_A_UNIT = set("in on at of past every beside by to from for with and or than the a an is are was were has had "
                  "have into after before until when while more less about each per".split())


def answer_spans(passage: str) -> list[str]:
    """Spans a reader can copy as an answer: names and quantities (with what they count) that occur
    once in the passage and are not part of a longer span."""
    spans = []
    for sentence in sentences(passage):
        names = []
        for match in _NAME.finditer(sentence):
            words = match.group().split()
            while words and words[0] in _DULL:  # a capitalised sentence start is not a name
                words = words[1:]
            if words and not (match.start() == 0 and len(words) == 1 and words[0] == match.group()):
                spans.append(" ".join(words))
                names.append(match.span())
        for match in _QUANTITY.finditer(sentence):
            if any(a < match.end() and match.start() < b for a, b in names):
                continue  # a number inside a name ("Halvard Nine")
            unit = match.group(1)
            spans.append(match.group() if unit is None or unit.lower() not in _NOT_A_UNIT
                         else match.group()[: match.start(1) - match.start()].strip())
    once = [s for s in dict.fromkeys(spans) if len(s) > 1 and passage.count(s) == 1]
    return [s for s in once if not any(s != t and s in t for t in once)]  # the longest of nested spans


# A small model ignores "write a question whose answer is X" (measured: it asks about something else
# nearly every time), and does better turning a statement with the answer blanked out into a question,
# after a few worked examples. The examples are made up for this prompt.
_SHOTS = [
    ("The stone bridge at Kelby was finished in ___.", "When was the stone bridge at Kelby finished?"),
    ("Its builder, the mason ___, is buried beside it.", "Which mason built the bridge and is buried beside it?"),
    ("Crossing the bridge by car costs ___.", "How much does it cost to cross the bridge by car?"),
    ("The bridge links the village of ___ to the market town.", "Which village does the bridge link to the market "
                                                                 "town?"),
    ("The toll keeper has worked on the bridge for ___.", "How long has the toll keeper worked on the bridge?"),
]
_FEW_SHOT = "".join(f"Statement: {s}\nQuestion: {q}\n\n" for s, q in _SHOTS)
_STOP = set("what which who whom whose when where why how is are was were do does did the a an of in on at to for "
            "by with and or name this that it its".split())


def _question(generated: str, span: str, sentence: str) -> str | None:
    """The first line of a generated question, if it is about the sentence (it shares a content word
    with it) and does not give its answer away."""
    line = generated.strip().splitlines()[0].strip() if generated.strip() else ""
    if not line.endswith("?") or not 3 <= len(line.split()) <= 30:
        return None
    if normalize_answer(span) in normalize_answer(line):
        return None
    content = set(normalize_answer(line).split()) - _STOP
    return line if content & set(normalize_answer(sentence).split()) else None


@dataclass
class Studied:
    """What happened to one candidate answer."""

    passage: str
    span: str
    question: str | None
    reply: str | None
    kept: bool


def candidates(docs: list[Document], cfg: SelfStudyConfig) -> list[tuple[Document, int, str, str, str]]:
    """The candidate answers :func:`study` tries, in order: (text, passage number, passage, the span's
    sentence, span), at most ``per_passage`` per passage, picked by ``seed``."""
    out = []
    for doc in docs:
        for p, passage in enumerate(passages(doc.text, cfg.min_words, cfg.max_words)):
            spans = answer_spans(passage)
            random.Random(f"self-study:{cfg.seed}:{doc.sha256}:{p}").shuffle(spans)
            out.extend((doc, p, passage, next(s for s in sentences(passage) if span in s), span)
                       for span in spans[: cfg.per_passage])
    return out


def study(lm: LoadedModel, tried: list[tuple[Document, int, str, str, str]], cfg: SelfStudyConfig,
          on_candidate: Callable[[Studied], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield ``{id, context, question, answers, source}`` records (the ``qa`` task's JSONL) for the
    :func:`candidates` ``tried``; ``on_candidate`` sees every candidate, kept or not."""
    qa = get_task("qa")
    reader = Reader(lm, None)
    for doc, p, passage, sentence, span in tried:
        blanked = sentence.replace(span, "___", 1)
        written = reader.answer(f"{_FEW_SHOT}Statement: {blanked}\nQuestion:", max_new_tokens=40, template=False).text
        question = _question(written, span, sentence)
        reply = None
        if question is not None and cfg.check:
            reply = reader.answer(qa.user_text(Example("", passage, question, [span]), passage),
                                  max_new_tokens=qa.max_new_tokens).text
        kept = question is not None and (not cfg.check or bool(contains(reply or "", [span])))
        if on_candidate:
            on_candidate(Studied(passage, span, question, reply, kept))
        if kept:
            yield {"id": f"{doc.stem}-p{p}-{normalize_answer(span).replace(' ', '_')}", "context": passage,
                   "question": question, "answers": [span], "source": doc.name}
