"""The core engine: documents in, memory files out, answers and rebuilt texts back.

The CLI commands and the evaluation harness both call these functions; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from gradmem_cli import __version__
from gradmem_cli.documents import Document, split_segments
from gradmem_cli.errors import GradmemError
from gradmem_cli.memfile import MemoryFile, MemoryHeader
from gradmem_cli.models import ALIASES, Fingerprint, LoadedModel, kv_bytes_per_token, load_model, model_shape
from gradmem_cli.read import Reader, memory_prefix, reconstruct
from gradmem_cli.write import StepStats, WriteConfig, write_segments


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


@dataclass
class _Pending:
    doc: Document
    tokens: int
    first: int  # index of the document's first segment in the global list
    count: int
    started: float
    results: dict[int, Any]


def _header(lm: LoadedModel, doc: Document, tokens: int, cfg: WriteConfig, results: list) -> MemoryHeader:
    import transformers

    return MemoryHeader(
        gradmem_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_id=lm.spec,
        model_fingerprint=dataclasses.asdict(lm.fingerprint),
        tokenizer_fingerprint=lm.fingerprint.tokenizer,
        model_shape=model_shape(lm.model.config),
        hidden_size=lm.hidden_size,
        dtype=lm.dtype_name,
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
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
    )


def memorize(
    lm: LoadedModel,
    docs: list[Document],
    cfg: WriteConfig,
    on_step: Callable[[Document, int, StepStats], None] | None = None,
) -> Iterator[tuple[Document, MemoryFile, WriteReport]]:
    """Write every document into a memory, batching segments across documents.

    Yields each document as soon as all its segments are written, so callers can save files
    one by one during a long folder run. ``on_step(doc, segment_in_doc, stats)`` reports progress.
    """
    cfg = cfg.resolve(lm)
    flat: list[list[int]] = []
    owner: list[_Pending] = []
    pendings = []
    for doc in docs:
        ids = lm.tokenize(doc.text)
        if not ids:
            raise GradmemError(f"{doc.name} has no tokens")
        segs = split_segments(ids, cfg.segment_tokens)
        pending = _Pending(doc, len(ids), len(flat), len(segs), 0.0, {})
        pendings.append(pending)
        flat.extend(segs)
        owner.extend([pending] * len(segs))

    def forward(stats: StepStats) -> None:
        p = owner[stats.index]
        if not p.started:
            p.started = time.perf_counter()
        if on_step:
            on_step(p.doc, stats.index - p.first, stats)

    for result in write_segments(lm, flat, cfg, forward):
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
        f"{memfile.path or 'this memory'} was written with the model '{named}', which gradmem does not load "
        f"on a file's word (only built-in aliases and $GRADMEM_MODEL): pass --model '{named}' if you trust it"
    )


def load_reader_model(memfile: MemoryFile, model: str | None, device: str = "auto", dtype: str | None = None,
                      quiet: bool = False) -> LoadedModel:
    """The model for a memory (:func:`reader_model_spec`), in the dtype it was written in unless
    ``dtype`` says otherwise; a model of another architecture is refused before its weights load."""
    header = memfile.header
    lm = load_model(reader_model_spec(memfile, model), device=device, dtype=dtype or header.dtype, quiet=quiet,
                    expect_config=header.model_fingerprint["config"])
    check_model(lm, memfile)
    return lm


def check_model(lm: LoadedModel, memfile: MemoryFile) -> None:
    """Refuse to read a memory with a model other than the one that wrote it."""
    header = memfile.header
    stored = Fingerprint.from_dict(header.model_fingerprint)
    reason = stored.mismatch(lm.fingerprint)
    if reason is None and header.hidden_size != lm.hidden_size:
        reason = "hidden size differs"
    longest = len(lm.prefix_ids) + header.mem_tokens + max(header.tokens_per_segment)
    if reason is None and longest > lm.window:
        raise GradmemError(f"{memfile.path or 'this memory'}: a segment of {max(header.tokens_per_segment)} tokens "
                           f"after {header.mem_tokens} vectors does not fit the model's window of {lm.window}")
    if reason:
        name = memfile.path or "this memory"
        raise GradmemError(
            f"model mismatch: {name} was written with '{header.model_id}' ({stored.short}), "
            f"not '{lm.spec}' ({lm.fingerprint.short}): {reason}"
        )


def open_reader(lm: LoadedModel, memfile: MemoryFile, use_cache: bool = True) -> Reader:
    check_model(lm, memfile)
    vectors = memfile.memory.shape[0] * memfile.memory.shape[1]
    if len(lm.prefix_ids) + vectors >= lm.window:
        raise GradmemError(f"{memfile.path or 'this memory'}: its {vectors} vectors leave no room for a question "
                           f"in the model's window of {lm.window}")
    return Reader(lm, memory_prefix(lm, memfile.memory), use_cache=use_cache)


def rebuild(lm: LoadedModel, memfile: MemoryFile) -> list[int]:
    """The text's token ids as the frozen model regenerates them from each segment's memory."""
    check_model(lm, memfile)
    segments = reconstruct(lm, memfile.memory, memfile.header.tokens_per_segment)
    return [t for seg in segments for t in seg]


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
    vectors = memfile.memory.shape[0] * memfile.memory.shape[1]
    return {
        "file_bytes": file_bytes,
        "memory_bytes": memory_bytes,
        "kv_cache_bytes": kv,
        "kv_to_file_ratio": round(kv / max(1, file_bytes), 2),
        "kv_to_memory_ratio": round(kv / max(1, memory_bytes), 2),
        "tokens_per_vector": round(int(header.source["tokens"]) / max(1, vectors), 3),
    }
