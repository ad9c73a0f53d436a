"""Learned writers: what a trained GradMem (or forward-only RMT) checkpoint adds to its backbone.

A writer turns a context into ``m`` memory vectors that the backbone later reads as a prefix:

- ``gradmem``: start from a meta-learned M0 and take K plain SGD steps on the context's
  next-token loss, with logits from a separate write head (``M <- M - alpha * grad``). During
  meta-training the steps stay differentiable (``grad_mode``), so the backbone learns to be
  written into in a few steps.
- ``rmt``: the forward-only baseline. ``[M; context; M]`` goes through the backbone; the last-layer
  states at the trailing m positions, through an optional linear map, are the new memory
  (repeated K times, each pass feeding the last memory back).

Both the training loop and ``gradmem write`` (:mod:`writers.trained`) call :func:`write_memory`,
so a checkpoint is written exactly as it was trained. On disk a writer is two files beside the Hugging Face model files:
``gradmem_writer.json`` (:class:`WriterConfig`) and ``gradmem_writer.safetensors`` (``m0``,
``write_head.weight``, ``mem_proj.weight``/``mem_proj.bias`` when present).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradmem_cli.errors import GradmemError, shown
from gradmem_cli.lm.memlm import MemoryLM, token_loss
from gradmem_cli.lm.spaces.embed import frame
from gradmem_cli.fileio import read_config_json

WRITER_JSON = "gradmem_writer.json"
WRITER_WEIGHTS = "gradmem_writer.safetensors"
WRITER_FORMAT = "gradmem.writer"
WRITER_FORMAT_VERSION = "1.0"
KINDS = ("gradmem", "rmt")
GRAD_MODES = ("none", "first", "second")


@dataclass
class WriterConfig:
    """How a learned writer writes; saved as ``gradmem_writer.json``."""

    kind: str = "gradmem"
    """``gradmem`` (gradient-descent write) or ``rmt`` (forward-only write)."""
    mem_tokens: int = 8
    """m: memory vectors."""
    steps: int = 2
    """K: SGD steps (gradmem) or forward rewrites (rmt) the writer was trained with."""
    inner_lr: float = 0.04
    """alpha: the inner SGD rate (gradmem); per sample, since the write loss is a per-sample mean."""
    grad_mode: str = "second"
    """How training differentiated through the write: none, first or second (see train.TrainConfig)."""
    write_head: bool = True
    """gradmem: the write loss uses its own Linear(d -> V) head rather than the LM head."""
    mem_proj: bool = False
    """gradmem: memory enters the model through Linear(d -> d) (identity at init) in WRITE and READ;
    rmt: the trailing states pass through it to become the memory."""
    training: dict[str, Any] = field(default_factory=dict)
    """A summary of how it was trained (task, pairs, steps, eval EM); informational."""
    format: str = WRITER_FORMAT
    format_version: str = WRITER_FORMAT_VERSION

    def validate(self) -> WriterConfig:
        if self.kind not in KINDS:
            raise GradmemError(f"unknown writer kind '{shown(self.kind)}' (expected {' or '.join(KINDS)})")
        if self.grad_mode not in GRAD_MODES:
            raise GradmemError(f"unknown grad_mode '{shown(self.grad_mode)}' (expected none, first or second)")
        if self.mem_tokens < 1 or self.steps < 0:
            raise GradmemError("a writer needs mem_tokens >= 1 and steps >= 0")
        return self


class LearnedWriter(torch.nn.Module):
    """The writer's parameters: M0 [m, d], the optional write head and memory projection."""

    def __init__(self, cfg: WriterConfig, hidden: int, vocab: int):
        super().__init__()
        self.cfg = cfg.validate()
        self.m0 = torch.nn.Parameter(torch.randn(cfg.mem_tokens, hidden) * 0.02)
        use_head = cfg.kind == "gradmem" and cfg.write_head
        self.write_head = torch.nn.Linear(hidden, vocab, bias=False) if use_head else None
        self.mem_proj = torch.nn.Linear(hidden, hidden) if cfg.mem_proj else None
        if self.mem_proj is not None:
            with torch.no_grad():
                self.mem_proj.weight.copy_(torch.eye(hidden))
                self.mem_proj.bias.zero_()

    def init_write_head(self, lm_head: torch.Tensor) -> None:
        """Start the write head as a copy of the LM head (the paper's initialisation)."""
        if self.write_head is not None:
            with torch.no_grad():
                self.write_head.weight.copy_(lm_head)

    def read_input(self, memory: torch.Tensor) -> torch.Tensor:
        """What the backbone sees of a memory: projected for gradmem; rmt memories are final."""
        if self.cfg.kind == "gradmem" and self.mem_proj is not None:
            return self.mem_proj(memory.to(self.mem_proj.weight.dtype))
        return memory

    def summary(self) -> dict[str, Any]:
        """The writer as recorded in a ``.gmem`` header."""
        out = dataclasses.asdict(self.cfg)
        out.pop("format")
        out.pop("format_version")
        return out

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(folder / WRITER_WEIGHTS), metadata={"format": WRITER_FORMAT})
        (folder / WRITER_JSON).write_text(json.dumps(dataclasses.asdict(self.cfg), indent=2) + "\n")


def has_writer(folder: Path | str) -> bool:
    return (Path(folder) / WRITER_JSON).is_file()


def read_writer_config(folder: Path | str) -> WriterConfig:
    """The ``gradmem_writer.json`` of a checkpoint folder; defects are one-line errors."""
    return read_config_json(Path(folder) / WRITER_JSON, WriterConfig, WRITER_FORMAT, WRITER_FORMAT_VERSION,
                            "writer config")


def load_writer(folder: Path | str, hidden: int, vocab: int, device: torch.device,
                dtype: torch.dtype) -> LearnedWriter:
    """The writer saved in a checkpoint folder, on ``device`` (M0 stays float32)."""
    from safetensors.torch import load_file

    cfg = read_writer_config(folder)
    writer = LearnedWriter(cfg, hidden, vocab)
    path = Path(folder) / WRITER_WEIGHTS
    try:
        state = load_file(str(path))
        writer.load_state_dict(state)
    except Exception as exc:  # a missing, truncated or mismatched file
        raise GradmemError(f"{path}: cannot load the writer weights ({str(exc).splitlines()[0]})") from None
    writer.to(device=device, dtype=dtype)
    writer.m0.data = writer.m0.data.float()
    writer.requires_grad_(False)
    return writer


def _rmt_pass(mlm: MemoryLM, writer: LearnedWriter, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """One forward rewrite: ``[prefix; M; context; M]``; the trailing m states become the memory."""
    out = mlm.hidden(frame(mlm, memory, ids, after=memory))[:, -memory.shape[1]:]
    return writer.mem_proj(out) if writer.mem_proj is not None else out


@dataclass
class WriteTrace:
    """A written memory [B, m, d] and the write loss before each step (per row, detached)."""

    memory: torch.Tensor
    losses: list[torch.Tensor]


def write_memory(
    mlm: MemoryLM,
    writer: LearnedWriter,
    ids: torch.Tensor,
    mask: torch.Tensor,
    steps: int | None = None,
    inner_lr: float | None = None,
    grad_mode: str = "none",
) -> WriteTrace:
    """Write each row of ``ids`` [B, L] (right-padded, ``mask`` True on real tokens) into memory.

    ``mlm`` is the backbone as a :class:`MemoryLM` whose projection is this writer's. ``steps``
    and ``inner_lr`` default to the writer's K and alpha. ``grad_mode`` says how much of the write
    stays differentiable for an outer loss:

    - ``none``: the memory is detached after every step (M0 gets no gradient; the backbone
      learns only through READ). Also what inference uses.
    - ``first``: inner gradients are constants (no graph through them), but M_K = M0 - alpha *
      sum(g) still carries the identity path back to M0.
    - ``second``: inner gradients are taken with ``create_graph=True``, so the outer gradient
      reaches the backbone, write head and M0 through them (Hessian-vector terms included).

    rmt writers ignore ``inner_lr``; their rewrites are always differentiable unless ``none``.
    """
    steps = writer.cfg.steps if steps is None else steps
    inner_lr = writer.cfg.inner_lr if inner_lr is None else inner_lr
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}")
    memory = writer.m0.unsqueeze(0).expand(ids.shape[0], -1, -1)
    losses: list[torch.Tensor] = []
    if writer.cfg.kind == "rmt":
        if not bool(mask.all()):
            raise ValueError("rmt writes need rows of equal length")
        for _ in range(steps):
            memory = _rmt_pass(mlm, writer, memory, ids)
            if grad_mode == "none":
                memory = memory.detach()
        return WriteTrace(memory, losses)
    for _ in range(steps):
        if grad_mode == "none" or not memory.requires_grad:
            memory = memory.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = token_loss(mlm.forward(memory, ids, mask, head=writer.write_head), ids, mask)
            (grad,) = torch.autograd.grad(loss.sum(), memory, create_graph=grad_mode == "second")
        losses.append(loss.detach())
        memory = memory - inner_lr * grad
    if grad_mode == "none":
        memory = memory.detach()
    return WriteTrace(memory, losses)
