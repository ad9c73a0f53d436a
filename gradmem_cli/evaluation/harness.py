"""The evaluation harness: one task, the memory result beside its honest bounds.

Conditions, all with the same frozen model and prompt format:

- ``memory``: the context is written into memory (WRITE) and is not shown at read time;
  the model sees ``[memory; question]``.
- ``no-context``: the question alone (the lower bound: what the model knows or guesses).
- ``full-context``: the context and the question in the prompt (the upper bound).
- ``via-text`` (on request): the text is first rebuilt from memory by greedy decoding, then put in
  the prompt like the full context; exact where the memory rebuilds exactly, at the cost of
  decoding the whole text for every question.
- ``kv-last``, ``kv-snap`` (on request): forward-only baselines at the memory's size
  (:mod:`~gradmem_cli.evaluation.baselines`): as many positions of the text's own KV cache as the memory
  would have slots (segments x m under the write settings), kept instead of written.

``gap_closed = (memory - no_context) / (full_context - no_context)`` on the task's main metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradmem_cli import engine
from gradmem_cli.errors import UsageError
from gradmem_cli.evaluation.baselines import KEEPERS, kept_context
from gradmem_cli.tasks.metrics import f1, mean
from gradmem_cli.errors import shown
from gradmem_cli.lm.generate import MEMORY_SLOT, Reader, framed_prompt
from gradmem_cli.lm.loading import LoadedModel
from gradmem_cli.lm.spaces import SPACES
from gradmem_cli.lm.window import check_room
from gradmem_cli.memory.documents import Document, segment_count
from gradmem_cli.engine.store import MemoryStore
from gradmem_cli.tasks.base import Dataset, Task
from gradmem_cli.writers.config import ResolvedWrite

CONDITIONS = ("memory", "via-text", "kv-last", "kv-snap", "no-context", "full-context")
DEFAULT_CONDITIONS = ("memory", "no-context", "full-context")
WRITTEN = ("memory", "via-text")  # conditions that write the context into memory first
KEPT = tuple(KEEPERS)  # conditions that keep part of the context's own KV cache


@dataclass
class EvalOptions:
    """How answers are produced (the write settings are a ResolvedWrite)."""

    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    max_new_tokens: int | None = None  # per answer; None: the task's default
    memory_at: str = "start"  # "start": [memory; prompt]; "context": the memory where full-context has the text


def key(condition: str) -> str:
    """A condition's name in results (``no-context`` -> ``no_context``)."""
    return condition.replace("-", "_")


class _Run:
    """One evaluation in progress: the examples, their records, and each condition's scores."""

    def __init__(self, lm: LoadedModel, task: Task, dataset: Dataset, opts: EvalOptions,
                 on_progress: Callable[[str, int], None] | None):
        self.lm, self.task, self.examples = lm, task, dataset.examples
        self.budget = opts.max_new_tokens or task.max_new_tokens
        self.conditions = opts.conditions
        self.memory_slot = MEMORY_SLOT if opts.memory_at == "context" else None
        self.on_progress = on_progress
        self.plain = Reader(lm, None)
        self.records = [{"id": ex.id, "context": ex.context, "question": ex.question, "answers": ex.answers}
                        for ex in self.examples]
        self.scores: dict[str, list[dict[str, float]]] = {}
        self.write_wall_seconds = 0.0
        self.reused = 0

    def _memories(self, contexts: list[str], cfg: ResolvedWrite, store: MemoryStore | None):
        """(context index, memory, write figures) for every context, written now or taken from ``store``.

        ``write_wall_seconds`` accumulates the time spent writing alone (not scoring), so a ratio of
        two objectives' write times compares writes only. ``reused`` counts the memories a store already
        held: their write time is not this run's, so none is reported when there are any.
        """
        if store is not None:
            tick = time.perf_counter()
            self.reused = len(contexts) - store.fill(contexts)  # contexts are distinct
            self.write_wall_seconds += time.perf_counter() - tick
            for j, context in enumerate(contexts):
                mem = store.get(context)
                yield j, mem, {"write_steps": float(sum(mem.header.steps)), "write_accuracy": mean(mem.header.accuracy)}
            return
        docs = [Document.from_text(str(j), c) for j, c in enumerate(contexts)]
        writes = engine.memorize(self.lm, docs, cfg)
        while True:
            tick = time.perf_counter()
            item = next(writes, None)
            self.write_wall_seconds += time.perf_counter() - tick
            if item is None:
                return
            doc, mem, report = item
            # write_accuracy: teacher-forced token accuracy (reconstruct) or greedy agreement with the
            # teacher's probe answers (distill) of the kept memory, averaged over the document's segments.
            yield int(doc.name), mem, {"write_steps": float(sum(report.steps)), "write_seconds": report.seconds,
                                       "write_accuracy": mean(report.accuracy)}

    def written(self, cfg: ResolvedWrite, store: MemoryStore | None = None) -> None:
        """memory and via-text: write each distinct context once (SQuAD has several questions per
        passage), then answer every question on it."""
        chosen = [c for c in WRITTEN if c in self.conditions]
        contexts = list(dict.fromkeys(ex.context for ex in self.examples))
        askers = {c: [i for i, ex in enumerate(self.examples) if ex.context == c] for c in contexts}
        for c in chosen:
            self.scores[c] = [{} for _ in self.examples]
        done = 0
        for j, memfile, write in self._memories(contexts, cfg, store):
            reader = engine.open_reader(self.lm, memfile) if "memory" in chosen else None
            rebuilt = None
            for i in askers[contexts[j]]:
                ex = self.examples[i]
                if reader is not None:
                    start = time.perf_counter()
                    out, sc = self.task.respond(self.lm, reader, ex, self.memory_slot, memfile, self.budget)
                    self._keep("memory", i, out, {**sc, **write, "read_seconds": time.perf_counter() - start})
                if "via-text" in chosen:
                    start = time.perf_counter()
                    rebuilt = rebuilt if rebuilt is not None else engine.rebuild_text(self.lm, memfile)
                    rebuild_seconds = time.perf_counter() - start
                    out, sc = self.task.respond(self.lm, self.plain, ex, rebuilt, None, self.budget)
                    self._keep("via-text", i, {**out, "rebuilt": rebuilt}, {
                        **sc, **write, "rebuild_seconds": rebuild_seconds, "rebuilt_exact": float(rebuilt == ex.context),
                        "read_seconds": time.perf_counter() - start})
                done += 1
            for c in chosen:
                self._progress(c, done)
        # Writes run batched, so one example's span overlaps others': the write time per example is the
        # time spent writing alone (scoring excluded), spread over the examples.
        for c in chosen:
            for sc in self.scores[c]:
                sc["memories_reused"] = self.reused / len(contexts)
                if not self.reused:
                    sc["write_wall_seconds_per_example"] = self.write_wall_seconds / len(self.examples)

    def kept(self, cfg: ResolvedWrite) -> None:
        """kv-last and kv-snap: each context read once, as many of its positions kept as its memory would
        have slots, then every question on it answered after them."""
        for condition in (c for c in KEPT if c in self.conditions):
            refusal = SPACES["kv"].refusal(self.lm)
            if refusal:
                raise UsageError(f"--conditions {condition}: '{self.lm.spec}' has no plain KV cache to keep: {refusal}")
            self.scores[condition] = [{} for _ in self.examples]
            done = 0
            for context in dict.fromkeys(ex.context for ex in self.examples):
                ids = self.lm.tokenize(context)
                slots = segment_count(len(ids), cfg.segment_tokens) * cfg.mem_tokens
                reader = Reader.over(self.lm, kept_context(self.lm, ids, slots, condition))
                for i, ex in enumerate(self.examples):
                    if ex.context == context:
                        start = time.perf_counter()
                        out, sc = self.task.respond(self.lm, reader, ex, None, None, self.budget)
                        self._keep(condition, i, out, {**sc, "kept_positions": float(slots),
                                                       "read_seconds": time.perf_counter() - start})
                        done += 1
                self._progress(condition, done)

    def plain_conditions(self) -> None:
        """no-context and full-context: the same model without memory."""
        for condition in (c for c in CONDITIONS if c in self.conditions and c not in WRITTEN + KEPT):
            self.scores[condition] = [{} for _ in self.examples]
            for i, ex in enumerate(self.examples):
                start = time.perf_counter()
                context = ex.context if condition == "full-context" else None
                out, sc = self.task.respond(self.lm, self.plain, ex, context, None, self.budget)
                self._keep(condition, i, out, {**sc, "read_seconds": time.perf_counter() - start})
                self._progress(condition, i + 1)

    def agreement_with_full_context(self) -> None:
        """f1_to_full_context for every other condition of an F1 task (see :func:`f1_to_full_context`)."""
        if "full-context" not in self.scores or self.task.main_metric != "f1":
            return
        for c in (c for c in self.scores if c != "full-context"):
            for i, record in enumerate(self.records):
                score = f1_to_full_context(record, key(c))
                self.scores[c][i]["f1_to_full_context"] = score
                record[key(c)]["f1_to_full_context"] = score

    def _keep(self, condition: str, i: int, out: dict[str, Any], scores: dict[str, float]) -> None:
        self.scores[condition][i] = scores
        self.records[i][key(condition)] = {**out, **scores}

    def _progress(self, condition: str, done: int) -> None:
        if self.on_progress:
            self.on_progress(condition, done)

    def result(self) -> dict[str, Any]:
        per_example = {key(c): {k: [s[k] for s in self.scores[c]] for k in self.scores[c][0]}
                       for c in CONDITIONS if self.scores.get(c)}
        metrics = {c: {k: mean(v) for k, v in values.items()} for c, values in per_example.items()}
        main = self.task.main_metric
        result = {"task": self.task.name, "n": len(self.examples), "main_metric": main, "metrics": metrics,
                  "gap_closed": gap_closed(metrics, main),
                  "intervals": bootstrap_intervals(per_example, main)}
        for condition in ("via_text", *(key(c) for c in KEPT)):
            if condition in metrics:
                result[f"gap_closed_{condition}"] = gap_closed(metrics, main, condition)
        return result


BOOTSTRAP_SAMPLES = 2000


def bootstrap_intervals(per_example: dict[str, dict[str, list[float]]], main: str, level: float = 0.95,
                        seed: int = 0) -> dict[str, Any]:
    """95 % percentile-bootstrap intervals of every score's mean, and of ``gap_closed`` (examples are
    resampled together across conditions, so the conditions stay paired). Timings are left out.

    ``gap_closed`` is None in a resample where full context does not beat no context; its interval
    is over the resamples where it is defined, and ``gap_closed_defined`` says in what share.
    """
    import numpy as np

    n = len(next(iter(next(iter(per_example.values())).values())))
    picks = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    tails = ((1 - level) / 2 * 100, (1 + level) / 2 * 100)
    means = {c: {k: np.asarray(v, dtype=float)[picks].mean(1) for k, v in scores.items() if "seconds" not in k}
             for c, scores in per_example.items()}
    out: dict[str, Any] = {c: {k: [round(float(x), 4) for x in np.percentile(m, tails)] for k, m in ms.items()}
                           for c, ms in means.items()}
    if all(c in means and main in means[c] for c in ("memory", "no_context", "full_context")):
        low, high = means["no_context"][main], means["full_context"][main]
        defined = high - low > 0
        gaps = (means["memory"][main][defined] - low[defined]) / (high - low)[defined]
        out["gap_closed"] = [round(float(x), 4) for x in np.percentile(gaps, tails)] if gaps.size else None
        out["gap_closed_defined"] = round(float(defined.mean()), 4)
    return out


def check_window(lm: LoadedModel, task: Task, dataset: Dataset, cfg: ResolvedWrite, opts: EvalOptions) -> None:
    """Every example's prompt under every condition, measured in tokens against the model's window
    (after the prefix and, for the memory condition, the memory's positions, with room for the answer)
    before anything is written or answered: one line naming the example and both numbers."""
    budget = opts.max_new_tokens or task.max_new_tokens
    lead = len(SPACES[cfg.space].lead_ids(lm))
    tokens: dict[str, int] = {}
    for ex in dataset.examples:
        answer = max(budget, len(task.target(lm.tokenizer, ex)[0]))
        if ex.context not in tokens:
            tokens[ex.context] = len(lm.tokenize(ex.context))
        for condition in opts.conditions:
            memory, context = 0, None
            if condition == "memory" and not task.whole_memory:
                continue  # rebuilt segment by segment: the window holds each one (WriteConfig.fits)
            if condition == "memory":
                memory = segment_count(tokens[ex.context], cfg.segment_tokens) * cfg.mem_tokens + lead
                context = MEMORY_SLOT if opts.memory_at == "context" else None
            elif condition in KEPT:  # the prompt sits after the whole text's positions and the separator
                memory = tokens[ex.context] + len(SPACES["kv"].lead_ids(lm))
            elif condition != "no-context":
                context = ex.context
            prompt, _ = framed_prompt(lm, task.user_text(ex, context), task.template)
            check_room(lm.window, len(lm.prefix_ids) + memory, len(prompt), answer,
                       f"example {shown(ex.id)} ({condition})")


def evaluate(
    lm: LoadedModel,
    task: Task,
    dataset: Dataset,
    cfg: ResolvedWrite,
    opts: EvalOptions,
    on_progress: Callable[[str, int], None] | None = None,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    store: MemoryStore | None = None,
) -> dict[str, Any]:
    """Run every condition over the dataset; returns per-condition means and per-example records.

    ``on_progress(condition, done)`` reports progress; ``on_sample(record)`` receives one record
    per example (inputs, outputs, scores) once all its conditions are scored. With a ``store``,
    memories are taken from it (and the missing ones written into it) instead of written afresh.
    """
    if opts.memory_at == "context" and "memory" in opts.conditions and cfg.space != "embed":
        raise UsageError(f"--memory-at context: a {cfg.space} memory is read before the prompt (use --memory-at start)")
    check_window(lm, task, dataset, cfg, opts)
    run = _Run(lm, task, dataset, opts, on_progress)
    if any(c in opts.conditions for c in WRITTEN):
        run.written(cfg, store)
    run.kept(cfg)
    run.plain_conditions()
    run.agreement_with_full_context()
    if on_sample:
        for record in run.records:
            on_sample(record)
    return run.result()


def f1_to_full_context(record: dict[str, Any], condition_key: str) -> float:
    """Token F1 of an example's answer under a condition against its full-context answer.

    This scores what distillation optimises, answering as the model does with the text in its
    prompt, right or wrong; with a reader that is often wrong even with the text, it is far less
    noisy than F1 against the gold answer.
    """
    return f1(record[condition_key]["answer"], [record["full_context"]["answer"]])


def gap_closed(metrics: dict[str, dict[str, float]], main: str, condition: str = "memory") -> float | None:
    """(memory - no_context) / (full_context - no_context); None when there is no gap to close.

    A model that does no better with the context than without it (full_context <= no_context) leaves
    no gap: a ratio of two negative differences would read as success, so it is None too.
    """
    try:
        mem, low, high = (metrics[c][main] for c in (condition, "no_context", "full_context"))
    except KeyError:
        return None
    if high - low <= 0:
        return None
    return (mem - low) / (high - low)
