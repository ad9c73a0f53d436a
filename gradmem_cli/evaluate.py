"""The evaluation harness: one task, the memory result beside its honest bounds.

Conditions, all with the same frozen model and prompt format:

- ``memory``: the context is written into memory (WRITE) and is not shown at read time;
  the model sees ``[memory; question]``.
- ``no-context``: the question alone (the lower bound: what the model knows or guesses).
- ``full-context``: the context and the question in the prompt (the upper bound).
- ``via-text`` (on request): the text is first rebuilt from memory by greedy decoding, then put in
  the prompt like the full context; exact where the memory rebuilds exactly, at the cost of
  decoding the whole text for every question.

``gap_closed = (memory - no_context) / (full_context - no_context)`` on the task's main metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gradmem_cli import engine
from gradmem_cli.documents import Document
from gradmem_cli.metrics import exact_match, f1, mean, token_accuracy
from gradmem_cli.models import LoadedModel
from gradmem_cli.read import Reader, memory_prefix, prompt_ids, target_hits, with_context
from gradmem_cli.tasks.data import Dataset, Example
from gradmem_cli.tasks.kv import VALUE_CHARS
from gradmem_cli.write import WriteConfig

CONDITIONS = ("memory", "via-text", "no-context", "full-context")
DEFAULT_CONDITIONS = ("memory", "no-context", "full-context")
WRITTEN = ("memory", "via-text")  # conditions that write the context into memory first
MAIN_METRIC = {"kv": "em_tf", "babi": "f1", "squad": "f1", "qa": "f1", "recon": "exact"}
INSTRUCTION = {"babi": " Answer with one word.", "squad": " Answer with a short phrase.",
               "qa": " Answer with a short phrase."}
RECON_PROMPT = "Repeat the text word for word."


@dataclass
class EvalOptions:
    """How answers are produced and scored (the write settings are a WriteConfig)."""

    task: str
    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    max_new_tokens: int = 24  # per answer; kv answers need 4 characters, recon as many tokens as the text


def _key(condition: str) -> str:
    return condition.replace("-", "_")


def _qa_scores(lm: LoadedModel, reader: Reader, prefix, ex: Example, user_text: str, opts: EvalOptions):
    answer = reader.answer(user_text, max_new_tokens=opts.max_new_tokens)
    gold = lm.tokenize(ex.answers[0])
    hits = target_hits(lm, prefix, prompt_ids(lm, user_text), gold)
    scores = {"em": exact_match(answer.text, ex.answers), "f1": f1(answer.text, ex.answers),
              "em_tf": float(all(hits))}
    return {"answer": answer.text}, scores


def _kv_scores(lm: LoadedModel, reader: Reader, prefix, ex: Example, prompt: str, opts: EvalOptions):
    value = ex.answers[0][:VALUE_CHARS]
    answer = reader.answer(prompt, max_new_tokens=opts.max_new_tokens, template=False)
    enc = lm.tokenizer(ex.answers[0], add_special_tokens=False, return_offsets_mapping=True)
    target, spans = list(enc["input_ids"]), enc["offset_mapping"]
    hits = target_hits(lm, prefix, lm.tokenize(prompt), target)
    value_hits = [h for h, (start, _) in zip(hits, spans) if start < VALUE_CHARS]
    generated = answer.text.lstrip()[:VALUE_CHARS]
    return {"answer": answer.text}, {"em_tf": float(all(value_hits)), "em": float(generated == value)}


def _recon_generated(lm: LoadedModel, reader: Reader, prefix, ex: Example, user_text: str):
    """A condition without memory rebuilds the text by being asked to repeat it."""
    text = ex.context
    source = lm.tokenize(text)
    answer = reader.answer(user_text, max_new_tokens=len(source) + 8)
    produced = lm.tokenize(answer.text)
    hits = target_hits(lm, prefix, prompt_ids(lm, user_text), source)
    return {"answer": answer.text}, {"exact": float(answer.text.strip() == text.strip()),
                                     "token_accuracy": token_accuracy(produced, source),
                                     "tf_token_accuracy": sum(hits) / len(hits)}


def _score(lm: LoadedModel, task: str, condition: str, reader: Reader, prefix, ex: Example,
           opts: EvalOptions, memfile=None):
    if task == "recon":
        if condition == "memory":
            rebuilt = engine.rebuild(lm, memfile)
            source = lm.tokenize(ex.context)
            vectors = memfile.memory.shape[0] * memfile.memory.shape[1]
            header = memfile.header
            tf = sum(a * n for a, n in zip(header.accuracy, header.tokens_per_segment)) / max(1, len(source))
            return {"answer": lm.decode(rebuilt)}, {
                "exact": float(lm.decode(rebuilt) == ex.context), "token_accuracy": token_accuracy(rebuilt, source),
                "tf_token_accuracy": tf, "tokens_per_vector": len(source) / vectors}
        text = RECON_PROMPT if condition == "no-context" else with_context(RECON_PROMPT, ex.context)
        return _recon_generated(lm, reader, prefix, ex, text)
    if task == "kv":
        prompt = ex.question if condition != "full-context" else ex.context + ex.question
        return _kv_scores(lm, reader, prefix, ex, prompt, opts)
    question = ex.question + INSTRUCTION.get(task, "")
    text = question if condition != "full-context" else with_context(ex.context, question)
    return _qa_scores(lm, reader, prefix, ex, text, opts)


def evaluate(
    lm: LoadedModel,
    dataset: Dataset,
    cfg: WriteConfig,
    opts: EvalOptions,
    on_progress: Callable[[str, int], None] | None = None,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every condition over the dataset; returns per-condition means and per-example records.

    ``on_progress(condition, done)`` reports progress; ``on_sample(record)`` receives one record
    per example (inputs, outputs, scores) once all its conditions are scored.
    """
    task = opts.task
    examples = dataset.examples
    records = [{"id": ex.id, "context": ex.context, "question": ex.question, "answers": ex.answers}
               for ex in examples]
    per_condition: dict[str, list[dict[str, float]]] = {}
    plain_prefix = memory_prefix(lm, None)
    plain = Reader(lm, plain_prefix)
    written = [c for c in WRITTEN if c in opts.conditions]
    if written:
        # Each distinct context is written once, however many questions it has (SQuAD has several).
        contexts = list(dict.fromkeys(ex.context for ex in examples))
        askers = {c: [i for i, ex in enumerate(examples) if ex.context == c] for c in contexts}
        docs = [Document.from_text(str(j), c) for j, c in enumerate(contexts)]
        for c in written:
            per_condition[c] = [{} for _ in examples]
        started, done = time.perf_counter(), 0
        for doc, memfile, report in engine.memorize(lm, docs, cfg):
            # write_accuracy: teacher-forced token accuracy (reconstruct) or greedy agreement with the
            # teacher's probe answers (distill) of the kept memory, averaged over the document's segments.
            write = {"write_steps": float(sum(report.steps)), "write_seconds": report.seconds,
                     "write_accuracy": mean(report.accuracy)}
            reader = engine.open_reader(lm, memfile) if "memory" in written else None
            rebuilt = None
            for i in askers[contexts[int(doc.name)]]:
                ex = examples[i]
                if reader is not None:
                    start = time.perf_counter()
                    out, sc = _score(lm, task, "memory", reader, reader.prefix, ex, opts, memfile)
                    sc.update(write, seconds=report.seconds + time.perf_counter() - start)
                    per_condition["memory"][i] = sc
                    records[i]["memory"] = {**out, **sc}
                if "via-text" in written:
                    # The baseline read: decode the whole text from memory, then answer with it in the prompt.
                    start = time.perf_counter()
                    rebuilt = rebuilt if rebuilt is not None else lm.decode(engine.rebuild(lm, memfile))
                    rebuild_seconds = time.perf_counter() - start
                    out, sc = _score(lm, task, "full-context", plain, plain_prefix, replace(ex, context=rebuilt), opts)
                    sc.update(write, rebuild_seconds=rebuild_seconds, rebuilt_exact=float(rebuilt == ex.context),
                              seconds=report.seconds + time.perf_counter() - start)
                    per_condition["via-text"][i] = sc
                    records[i]["via_text"] = {**out, "rebuilt": rebuilt, **sc}
                done += 1
            if on_progress:
                for c in written:
                    on_progress(c, done)
        # Writes run batched, so one example's span overlaps others': also give the amortised wall time.
        amortised = (time.perf_counter() - started) / len(examples)
        for c in written:
            for sc in per_condition[c]:
                sc["wall_seconds_per_example"] = amortised
    for condition in (c for c in CONDITIONS if c in opts.conditions and c not in WRITTEN):
        scores = []
        for i, ex in enumerate(examples):
            start = time.perf_counter()
            out, sc = _score(lm, task, condition, plain, plain_prefix, ex, opts)
            sc["seconds"] = time.perf_counter() - start
            scores.append(sc)
            records[i][_key(condition)] = {**out, **sc}
            if on_progress:
                on_progress(condition, i + 1)
        per_condition[condition] = scores
    if "full-context" in opts.conditions and MAIN_METRIC[task] == "f1":
        for c in (c for c in CONDITIONS if c in per_condition and c != "full-context"):
            for i, record in enumerate(records):
                score = {"f1_to_full_context": f1_to_full_context(record, _key(c))}
                per_condition[c][i].update(score)
                record[_key(c)].update(score)
    if on_sample:
        for record in records:
            on_sample(record)
    metrics = {_key(c): {k: mean([s[k] for s in per_condition[c]]) for k in per_condition[c][0]}
               for c in CONDITIONS if c in per_condition and per_condition[c]}
    main = MAIN_METRIC[task]
    result = {"task": task, "n": len(examples), "main_metric": main, "metrics": metrics,
              "gap_closed": gap_closed(metrics, main)}
    if "via_text" in metrics:
        result["gap_closed_via_text"] = gap_closed(metrics, main, "via_text")
    return result


def f1_to_full_context(record: dict[str, Any], key: str) -> float:
    """Token F1 of an example's answer under condition ``key`` against its full-context answer.

    This scores what distillation optimises, answering as the model does with the text in its
    prompt, right or wrong; with a reader that is often wrong even with the text, it is far less
    noisy than F1 against the gold answer.
    """
    return f1(record[key]["answer"], [record["full_context"]["answer"]])


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
