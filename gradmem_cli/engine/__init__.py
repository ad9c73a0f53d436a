"""The core engine: documents in, memory files out, answers and rebuilt texts back.

The Python API, the CLI and the evaluation harness call these functions; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from gradmem_cli.version import __version__
from gradmem_cli.errors import GradmemError, shown
from gradmem_cli.lm import adapter
from gradmem_cli.lm.fingerprint import Fingerprint, kv_bytes_per_token, model_shape
from gradmem_cli.lm.generate import Answer, Reader, prompt_ids, reconstruct, with_context
from gradmem_cli.lm.loading import ALIASES, ConfigMismatch, LoadedModel, load_model
from gradmem_cli.lm.spaces import SPACES
from gradmem_cli.lm.window import check_room
from gradmem_cli.memory.documents import Document, split_segments
from gradmem_cli.memory.memfile import MemoryFile, MemoryHeader
from gradmem_cli.writers.base import SegmentResult, StepStats, Writer
from gradmem_cli.writers.optimizer import OptimizerWriter
from gradmem_cli.writers.trained import TrainedWriter
from gradmem_cli.writers.config import ResolvedWrite, WriteConfig
from gradmem_cli.writers.fitting import FitConfig, FitStep, fit_start
from gradmem_cli.writers.start import claim_start_output, save_start


@dataclass
class WriteReport:
    """How one document's write went (the ``--json`` record of ``gradmem write``)."""

    input: str
    tokens: int
    segments: int
    steps: list[int]
    seconds: float
    final_loss: list[float]
    accuracy: list[float]
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def provenance(lm: LoadedModel) -> dict[str, Any]:
    """Which model, in which dtype, with which library versions: recorded in every memory file and
    every evaluation result."""
    import transformers

    return {"model": lm.spec, "model_fingerprint": dataclasses.asdict(lm.fingerprint), "dtype": lm.dtype_name,
            "gradmem_version": __version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__}


def _header(lm: LoadedModel, doc: Document, tokens: int, cfg: ResolvedWrite, results: list[SegmentResult]
            ) -> MemoryHeader:
    made = provenance(lm)
    return MemoryHeader(
        gradmem_version=made["gradmem_version"],
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_id=made["model"],
        model_fingerprint=made["model_fingerprint"],
        tokenizer_fingerprint=lm.fingerprint.tokenizer,
        model_shape=model_shape(lm.model.config),
        hidden_size=lm.hidden_size,
        dtype=made["dtype"],
        space=cfg.space,
        mem_tokens=cfg.mem_tokens,
        segment_tokens=cfg.segment_tokens,
        tokens_per_segment=[r.tokens for r in results],
        prefix_ids=list(lm.prefix_ids),
        write={**cfg.to_dict(), **({"writer": lm.writer.summary()} if lm.writer is not None else {})},
        steps=[r.steps for r in results],
        kept_step=[r.kept_step for r in results],
        final_loss=[round(r.loss, 6) for r in results],
        accuracy=[round(r.accuracy, 6) for r in results],
        source={"name": doc.path.name if doc.path else doc.name, "sha256": doc.sha256,
                "bytes": doc.nbytes, "tokens": tokens},
        torch_version=made["torch_version"],
        transformers_version=made["transformers_version"],
    )


def writer_for(cfg: ResolvedWrite) -> Writer:
    """The trained write rule for ``--init learned`` (a checkpoint's default), else test-time optimisation."""
    return TrainedWriter(cfg) if cfg.init == "learned" else OptimizerWriter(cfg)


def write_segments(lm: LoadedModel, segments: list[list[int]], cfg: WriteConfig,
                   on_step: Callable[[StepStats], None] | None = None) -> Iterator[SegmentResult]:
    """Token segments into memories, with the writer that ``cfg`` resolves to for ``lm``; results
    come as segments finish (any order)."""
    return writer_for(cfg.resolve(lm)).write(lm, segments, on_step)


@dataclass
class _Pending:
    """A document whose segments are being written."""

    doc: Document
    tokens: int
    first: int  # index of the document's first segment in the global list
    count: int
    started: float = 0.0
    results: dict[int, SegmentResult] = dataclasses.field(default_factory=dict)


def memorize(
    lm: LoadedModel,
    docs: list[Document],
    cfg: ResolvedWrite,
    on_step: Callable[[Document, int, StepStats], None] | None = None,
) -> Iterator[tuple[Document, MemoryFile, WriteReport]]:
    """Write every document into a memory, batching segments across documents.

    Yields each document as soon as all its segments are written, so callers can save files
    one by one during a long folder run. ``on_step(doc, segment_in_doc, stats)`` reports progress.
    """
    flat: list[list[int]] = []
    owner: list[_Pending] = []
    seeds: list[int] = []  # by the segment's place in its own document: batching never changes a memory
    for doc in docs:
        ids = lm.tokenize(doc.text)
        if not ids:
            raise GradmemError(f"{doc.name} has no tokens")
        segs = split_segments(ids, cfg.segment_tokens)
        pending = _Pending(doc, len(ids), len(flat), len(segs))
        flat.extend(segs)
        owner.extend([pending] * len(segs))
        seeds.extend(cfg.seed * 1_000_003 + i for i in range(len(segs)))

    def forward(stats: StepStats) -> None:
        p = owner[stats.index]
        if not p.started:
            p.started = time.perf_counter()
        if on_step:
            on_step(p.doc, stats.index - p.first, stats)

    for result in writer_for(cfg).write(lm, flat, forward, seeds):
        p = owner[result.index]
        p.results[result.index] = result
        if len(p.results) < p.count:
            continue
        results = [p.results[i] for i in sorted(p.results)]
        memory = torch.stack([r.memory for r in results])
        header = _header(lm, p.doc, p.tokens, cfg, results)
        report = WriteReport(
            input=p.doc.name, tokens=p.tokens, segments=p.count, steps=header.steps,
            seconds=round(time.perf_counter() - p.started, 3), final_loss=header.final_loss,
            accuracy=header.accuracy,
        )
        yield p.doc, MemoryFile(memory=memory, header=header), report


def fit_start_file(lm: LoadedModel, docs: list[Document], output: Path, write: WriteConfig, fit: FitConfig,
                   on_step: Callable[[FitStep], None] | None = None, command: str = "", force: bool = False
                   ) -> dict[str, Any]:
    """Fit a start (:mod:`writers.start`) for ``lm`` on ``docs``, split into segments as ``write``
    splits them, and save it to ``output`` with a record of what it was fitted on. An existing
    ``output`` is replaced only if it is a start file and ``force`` is set (checked before the fit)."""
    claimed = claim_start_output(output, force, [d.path for d in docs if d.path is not None])
    cfg = dataclasses.replace(write, space="embed").resolve(lm)  # starts are for embedding memories
    segments = [seg for doc in docs for seg in split_segments(lm.tokenize(doc.text), cfg.segment_tokens) if seg]
    start = fit_start(lm, segments, cfg, fit, on_step)
    record = {"model": lm.spec, "texts": len(docs), "segments": len(segments), "mem_tokens": cfg.mem_tokens,
              "segment_tokens": cfg.segment_tokens, "fit": dataclasses.asdict(fit), "write": cfg.to_dict(),
              "sources": [{"name": d.path.name if d.path else d.name, "sha256": d.sha256} for d in docs],
              "command": command, "gradmem_version": __version__,
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    save_start(claimed.path, start, lm, record, expected=claimed.state)
    return {k: v for k, v in record.items() if k != "sources"}


# --- reading ------------------------------------------------------------------------------------


def reader_model_spec(memfile: MemoryFile, model: str | None) -> str:
    """The model that reads a memory: the user's ``--model``, else the one the file names, but only
    if loading it on the file's word is safe.

    A ``.gmem`` is untrusted input: its ``model_id`` could name any folder on this machine or any
    hub repository. Only a built-in alias (weights inside an installed package) or the user's own
    ``$GRADMEM_MODEL`` is loaded without ``--model``.
    """
    if model:
        return model
    named = memfile.header.model_id
    if named in ALIASES or named == os.environ.get("GRADMEM_MODEL"):
        return named
    raise GradmemError(
        f"{memfile.path or 'this memory'} was written with the model '{shown(named)}', which gradmem does not load "
        f"on a file's word (only built-in aliases and $GRADMEM_MODEL): pass --model '{shown(named)}' if you trust it"
    )


def load_reader_model(memfile: MemoryFile, model: str | None, device: str = "auto", dtype: str | None = None,
                      quiet: bool = False, reader: Path | str | None = None) -> LoadedModel:
    """The model for a memory (:func:`reader_model_spec`), in the dtype it was written in unless
    ``dtype`` says otherwise, with a trained ``reader`` attached if given; a model of another
    architecture is refused before its weights load."""
    header = memfile.header
    spec = reader_model_spec(memfile, model)
    try:
        lm = load_model(spec, device=device, dtype=dtype or header.dtype, quiet=quiet,
                        expect_config=header.model_fingerprint["config"])
    except ConfigMismatch as exc:
        raise GradmemError(f"model mismatch: {memfile.path or 'this memory'} was written with '{shown(header.model_id)}', "
                           f"not '{spec}', which has {exc.reason}") from None
    check_model(lm, memfile)
    if reader is not None:
        adapter.load(lm, reader)
    return lm


def check_model(lm: LoadedModel, memfile: MemoryFile) -> None:
    """Refuse to read a memory with a model other than the one that wrote it, one whose window
    cannot hold its segments, or a reader trained on memories of another space."""
    header = memfile.header
    name = memfile.path or "this memory"
    stored = Fingerprint.from_dict(header.model_fingerprint)
    reason = stored.mismatch(lm.fingerprint)
    if reason is None and header.hidden_size != lm.hidden_size:
        reason = "hidden size differs"
    if reason:
        raise GradmemError(
            f"model mismatch: {name} was written with '{shown(header.model_id)}' ({stored.short}), "
            f"not '{lm.spec}' ({lm.fingerprint.short}): {reason}"
        )
    space = SPACES[header.space]
    refusal = space.refusal(lm)
    if refusal:
        raise GradmemError(f"{name} holds a {space.name} memory, which '{lm.spec}' cannot read: {refusal}")
    lead = len(space.lead_ids(lm))
    if len(lm.prefix_ids) + header.mem_tokens + lead + max(header.tokens_per_segment) > lm.window:
        raise GradmemError(f"{name}: a segment of {max(header.tokens_per_segment)} tokens after {header.mem_tokens} "
                           f"slots does not fit the model's window of {lm.window}")
    trained_on = (lm.reader.memory_space if lm.reader is not None else None) or space.name
    if trained_on != space.name:
        raise GradmemError(f"reader mismatch: the reader was trained on {trained_on} memories and {name} holds a "
                           f"{space.name} memory")


def open_reader(lm: LoadedModel, memfile: MemoryFile, use_cache: bool = True) -> Reader:
    """A reader with the whole memory (every segment, in order) before each prompt."""
    check_model(lm, memfile)
    slots = memfile.memory.shape[0] * memfile.memory.shape[1]
    if len(lm.prefix_ids) + slots + len(SPACES[memfile.header.space].lead_ids(lm)) >= lm.window:
        raise GradmemError(f"{memfile.path or 'this memory'}: its {slots} slots leave no room for a question "
                           f"in the model's window of {lm.window}")
    return Reader(lm, memfile.memory, memfile.header.space, use_cache=use_cache)


def rebuild(lm: LoadedModel, memfile: MemoryFile) -> list[int]:
    """The text's token ids as the frozen model regenerates them from each segment's memory."""
    check_model(lm, memfile)
    segments = reconstruct(lm, memfile.memory, memfile.header.tokens_per_segment, memfile.header.space)
    return [t for seg in segments for t in seg]


def rebuild_text(lm: LoadedModel, memfile: MemoryFile) -> str:
    return lm.decode(rebuild(lm, memfile))


@dataclass
class Asker:
    """Answers questions about one memory: reading its vectors (``via="memory"``), first rebuilding
    its text and reading that as the full context (``via="text"``), or without it (``via="none"``)."""

    reader: Reader
    context: str | None = None  # the rebuilt text (via text)
    rebuild_seconds: float | None = None

    def _prompt(self, question: str) -> str:
        return question if self.context is None else with_context(self.context, question)

    def check(self, question: str, max_new_tokens: int = 128) -> None:
        """Refuse a question the window cannot hold after the memory with room for the answer."""
        lm = self.reader.lm
        check_room(lm.window, self.reader.occupied, len(prompt_ids(lm, self._prompt(question))), max_new_tokens)

    def answer(self, question: str, **generation: Any) -> Answer:
        self.check(question, generation.get("max_new_tokens", 128))
        return self.reader.answer(self._prompt(question), **generation)

    def stream(self, question: str, max_new_tokens: int = 128, temperature: float = 0.0, seed: int = 0) -> Iterator[str]:
        """The answer's text piece by piece as it is generated."""
        self.check(question, max_new_tokens)
        tokens = self.reader.stream(self._prompt(question), max_new_tokens, temperature, seed)
        yield from self.reader.pieces(tokens, [])


VIAS = ("memory", "text", "none")


def open_asker(lm: LoadedModel, memfile: MemoryFile, via: str = "memory", use_cache: bool = True) -> Asker:
    """``via`` memory: read the vectors; text: rebuild the text, then read it as full context; none:
    the same model without the memory (the no-context answer, for comparison)."""
    if via == "memory":
        return Asker(open_reader(lm, memfile, use_cache=use_cache))
    if via == "none":
        check_model(lm, memfile)
        return Asker(Reader(lm, None))
    start = time.perf_counter()
    text = rebuild_text(lm, memfile)
    return Asker(Reader(lm, None), text, round(time.perf_counter() - start, 4))


def compare(lm: LoadedModel, rebuilt: list[int], source_text: str) -> dict[str, Any]:
    """Exact match of the rebuilt text, and token accuracy against the source's tokens."""
    source = lm.tokenize(source_text)
    hits = sum(a == b for a, b in zip(rebuilt, source))
    return {
        "exact_match": lm.decode(rebuilt) == source_text,
        "token_accuracy": round(hits / max(1, len(source)), 6),
        "source_tokens": len(source),
        "rebuilt_tokens": len(rebuilt),
    }


def sizes(memfile: MemoryFile, file_bytes: int) -> dict[str, Any]:
    """The file against the KV cache its source text would take in the model that wrote it."""
    header = memfile.header
    element = torch.finfo(getattr(torch, header.dtype)).bits // 8
    kv = kv_bytes_per_token(header.model_shape, element) * int(header.source["tokens"])
    memory_bytes = memfile.memory.numel() * memfile.memory.element_size()
    slots = memfile.memory.shape[0] * memfile.memory.shape[1]
    return {
        "space": header.space,
        "shape": list(memfile.memory.shape),
        "file_bytes": file_bytes,
        "memory_bytes": memory_bytes,
        "text_bytes": int(header.source["bytes"]),
        "kv_cache_bytes": kv,
        "kv_to_file_ratio": round(kv / max(1, file_bytes), 2),
        "kv_to_memory_ratio": round(kv / max(1, memory_bytes), 2),
        "tokens_per_slot": round(int(header.source["tokens"]) / max(1, slots), 3),
    }
