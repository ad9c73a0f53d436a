"""The model being meta-trained: a backbone and its learned writer, batches, the READ loss, checkpoints.

:class:`MetaModel` is a backbone plus its learned writer (``lm/learned.py``), or no writer for
the full-context baseline. Its loss is the cross-entropy of the target tokens read after the
memory (``[M_K; Q Y]``) or after the whole context (``[C; Q Y]``). Exact match is teacher-forced
from the argmax logits over the scored tokens (the value characters for key-value retrieval), as
in the paper. A checkpoint folder is a plain Hugging Face model folder plus the writer files, so
``load_model`` (and with it ``gradmem write``, ``ask`` and ``inspect``) loads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gradmem_cli.errors import GradmemError
from gradmem_cli.lm.memlm import MemoryLM
from gradmem_cli.tasks.base import Example, Task
from gradmem_cli.training.config import TrainConfig
from gradmem_cli.lm.learned import WRITER_WEIGHTS, LearnedWriter, WriterConfig, write_memory


@dataclass
class Batch:
    """Encoded examples: the context to write, and the read sequence (question + answer) with labels."""

    ctx: torch.Tensor  # [B, Lc] right-padded context ids
    ctx_mask: torch.Tensor  # [B, Lc] True on real tokens
    read: torch.Tensor  # [B, Lr] question + answer ids, right-padded
    labels: torch.Tensor  # [B, Lr] answer ids, -100 elsewhere
    scored: torch.Tensor  # [B, Lr] True on the tokens exact match is scored on

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in dataclasses.astuple(self)))


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def encode(tokenizer: Any, task: Task, examples: list[Example]) -> Batch:
    """Tokenise examples: the context, and the question followed by the task's gold target."""
    ctx, read, labels, scored = [], [], [], []
    for ex in examples:
        question = list(tokenizer(ex.question, add_special_tokens=False)["input_ids"])
        target, marks = task.target(tokenizer, ex)
        ctx.append(list(tokenizer(ex.context, add_special_tokens=False)["input_ids"]))
        read.append(question + target)
        labels.append([-100] * len(question) + target)
        scored.append([0] * len(question) + [int(m) for m in marks])
    return Batch(
        ctx=_pad(ctx, 0),
        ctx_mask=_pad([[1] * len(c) for c in ctx], 0).bool(),
        read=_pad(read, 0),
        labels=_pad(labels, -100),
        scored=_pad(scored, 0).bool(),
    )


def length_batches(examples: list[Example], size: int) -> Iterator[list[Example]]:
    """Batches of at most ``size`` examples whose contexts have equal length (rmt needs it)."""
    by_len: dict[int, list[Example]] = {}
    for ex in examples:
        by_len.setdefault(len(ex.context), []).append(ex)
    for group in by_len.values():
        for i in range(0, len(group), size):
            yield group[i: i + size]


class MetaModel(torch.nn.Module):
    """A backbone plus its writer (None for the full-context baseline), with the READ loss."""

    def __init__(self, lm: Any, writer: LearnedWriter | None, prefix_ids: list[int]):
        super().__init__()
        self.lm = lm
        self.writer = writer
        self.mlm = MemoryLM(lm, prefix_ids, writer.read_input if writer is not None else None)

    def forward(self, batch: Batch, steps: int | None = None, grad_mode: str = "none",
                inner_lr: float | None = None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(target cross-entropy, read logits aligned with ``batch.read``, write losses per step)."""
        if self.writer is None:
            logits = self._full_context_logits(batch)
            inner: list[torch.Tensor] = []
        else:
            trace = write_memory(self.mlm, self.writer, batch.ctx, batch.ctx_mask, steps=steps, inner_lr=inner_lr,
                                 grad_mode=grad_mode)
            logits = self.mlm.forward(trace.memory, batch.read)
            inner = trace.losses
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1), ignore_index=-100)
        return loss, logits, inner

    def _full_context_logits(self, batch: Batch) -> torch.Tensor:
        """Logits for the read tokens after the whole context: ``[prefix; C; Q Y]``."""
        lengths = batch.ctx_mask.sum(1)
        rows = [torch.cat([c[:n], r]) for c, n, r in zip(batch.ctx, lengths, batch.read)]
        logits = self.mlm.forward(None, torch.nn.utils.rnn.pad_sequence(rows, batch_first=True))
        index = lengths[:, None] + torch.arange(batch.read.shape[1], device=logits.device)[None]
        return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))


def scores(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """Teacher-forced per-sample exact match (all scored tokens right) and target-token hits."""
    pred = logits.argmax(-1)
    right = pred == batch.read
    target = batch.labels != -100
    em = (right | ~batch.scored).all(1)
    return {"em": em.float(), "hits": (right & target).sum(1).float(), "targets": target.sum(1).float()}


def build(cfg: TrainConfig, device: torch.device) -> tuple[MetaModel, Any]:
    """A fresh model for ``cfg`` (seeded): the backbone with eager attention, and its writer."""
    from gradmem_cli.lm.loading import _quiet_hf

    _quiet_hf()
    torch.manual_seed(cfg.seed)
    if cfg.backbone == "scratch":
        from transformers import LlamaConfig, LlamaForCausalLM

        from gradmem_cli.training.chartok import build_char_tokenizer

        tokenizer = build_char_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.ffn,
            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
            max_position_embeddings=cfg.max_positions, tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        lm = LlamaForCausalLM._from_config(config, attn_implementation="eager")
        # The model's answers end with "|": generation stops there.
        lm.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("|")
        lm.generation_config.pad_token_id = tokenizer.pad_token_id
        prefix: list[int] = []
    else:
        from gradmem_cli.lm.loading import load_model

        loaded = load_model(cfg.backbone, device="cpu", dtype="float32", attn_implementation="eager")
        lm, tokenizer, prefix = loaded.model, loaded.tokenizer, loaded.prefix_ids
    lm.requires_grad_(True)
    writer = None
    if cfg.writer != "full":
        hidden = lm.get_input_embeddings().weight.shape[1]
        writer = LearnedWriter(_writer_config(cfg), hidden, lm.get_output_embeddings().weight.shape[0])
        writer.init_write_head(lm.get_output_embeddings().weight)
    model = MetaModel(lm, writer, prefix).to(device)
    model.train()
    return model, tokenizer


def _writer_config(cfg: TrainConfig, summary: dict[str, Any] | None = None) -> WriterConfig:
    return WriterConfig(kind=cfg.writer, mem_tokens=cfg.mem_tokens, steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
                        grad_mode=cfg.grad_mode, write_head=cfg.write_head, mem_proj=cfg.mem_proj,
                        training=summary or {})


def save_model(model: MetaModel, tokenizer: Any, cfg: TrainConfig, folder: Path, summary: dict[str, Any]) -> None:
    """A checkpoint folder: the Hugging Face model and tokenizer (``AutoModelForCausalLM`` loads it),
    ``gradmem_writer.json``/``.safetensors`` (not for ``full``), and ``train_config.yaml``."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    model.lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if model.writer is not None:
        model.writer.cfg = _writer_config(cfg, summary)
        model.writer.save(folder)
    (folder / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_model_weights(model: MetaModel, folder: Path) -> None:
    """Load a checkpoint folder's weights into ``model`` (built from the same config)."""
    from safetensors.torch import load_file

    if not (folder / "model.safetensors").is_file():
        raise GradmemError(f"{folder}: not a checkpoint folder (no model.safetensors)")
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.lm.load_state_dict(state, strict=False)
    tied = set(getattr(model.lm, "_tied_weights_keys", None) or [])
    if unexpected or any(k not in tied for k in missing):
        raise GradmemError(f"{folder}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
    if model.writer is not None:
        model.writer.load_state_dict(load_file(str(folder / WRITER_WEIGHTS)))
