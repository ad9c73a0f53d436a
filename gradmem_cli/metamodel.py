"""The model being meta-trained on key-value retrieval: batches, the READ loss, checkpoints, EM.

:class:`MetaModel` is a backbone plus its learned writer (``writer.py``), or no writer for the
full-context baseline. Its loss is the cross-entropy of the target tokens read after the memory
(``[M_K; Q Y]``) or after the whole context (``[C; Q Y]``). Exact match is teacher-forced from the
argmax logits over the value characters, as in the paper. A checkpoint folder is a plain Hugging
Face model folder plus the writer files, so ``models.load_model`` (and with it ``gradmem write``,
``ask`` and ``inspect``) loads it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.tasks import kv
from gradmem_cli.writer import WRITER_WEIGHTS, LearnedWriter, WriterConfig, _upcast, read_logits, write_memory

if TYPE_CHECKING:
    from gradmem_cli.train import TrainConfig


@dataclass
class Batch:
    """Encoded samples: the context to write, and the read sequence (query + target) with labels."""

    ctx: torch.Tensor  # [B, Lc] right-padded context ids
    ctx_mask: torch.Tensor  # [B, Lc] True on real tokens
    read: torch.Tensor  # [B, Lr] query + target ids, right-padded
    labels: torch.Tensor  # [B, Lr] target ids, -100 elsewhere
    scored: torch.Tensor  # [B, Lr] True on the tokens exact match is scored on (the value)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in dataclasses.astuple(self)))


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def encode(tokenizer: Any, samples: list[kv.KVSample]) -> Batch:
    """Tokenise samples; the value and the closing ``!|`` are tokenised apart so EM is exact."""
    def ids(texts: list[str]) -> list[list[int]]:
        return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    ctx = ids([s.context for s in samples])
    query = ids([s.query for s in samples])
    value = ids([s.value for s in samples])
    tail = ids([s.target[kv.VALUE_CHARS:] for s in samples])
    read = [q + v + t for q, v, t in zip(query, value, tail)]
    labels = [[-100] * len(q) + v + t for q, v, t in zip(query, value, tail)]
    scored = [[0] * len(q) + [1] * len(v) + [0] * len(t) for q, v, t in zip(query, value, tail)]
    ctx_t = _pad(ctx, 0)
    return Batch(
        ctx=ctx_t,
        ctx_mask=_pad([[1] * len(c) for c in ctx], 0).bool(),
        read=_pad(read, 0),
        labels=_pad(labels, -100),
        scored=_pad(scored, 0).bool(),
    )


def length_batches(samples: list[kv.KVSample], size: int) -> Iterator[list[kv.KVSample]]:
    """Batches of at most ``size`` samples whose contexts have equal length (rmt needs it)."""
    by_len: dict[int, list[kv.KVSample]] = {}
    for s in samples:
        by_len.setdefault(len(s.context), []).append(s)
    for group in by_len.values():
        for i in range(0, len(group), size):
            yield group[i: i + size]


class MetaModel(torch.nn.Module):
    """A backbone plus its writer (None for the full-context baseline), with the READ loss."""

    def __init__(self, lm: Any, writer: LearnedWriter | None, prefix_ids: list[int]):
        super().__init__()
        self.lm = lm
        self.writer = writer
        self.register_buffer("prefix_ids", torch.tensor(prefix_ids, dtype=torch.long), persistent=False)

    def _prefix(self) -> torch.Tensor | None:
        return self.lm.get_input_embeddings()(self.prefix_ids) if len(self.prefix_ids) else None

    def forward(self, batch: Batch, steps: int | None = None, grad_mode: str = "none",
                inner_lr: float | None = None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(target cross-entropy, read logits aligned with ``batch.read``, write losses per step)."""
        prefix = self._prefix()
        if self.writer is None:
            logits = self._full_context_logits(batch, prefix)
            inner: list[torch.Tensor] = []
        else:
            trace = write_memory(self.lm, self.writer, batch.ctx, batch.ctx_mask, steps=steps,
                                 inner_lr=inner_lr, grad_mode=grad_mode, prefix=prefix)
            logits = read_logits(self.lm, self.writer, trace.memory, batch.read, prefix)
            inner = trace.losses
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1), ignore_index=-100)
        return loss, logits, inner

    def _full_context_logits(self, batch: Batch, prefix: torch.Tensor | None) -> torch.Tensor:
        """Logits for the read tokens after the whole context: ``[prefix; C; Q Y]``."""
        lengths = batch.ctx_mask.sum(1)
        rows = [torch.cat([c[:n], r]) for c, n, r in zip(batch.ctx, lengths, batch.read)]
        joint = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        embeds = self.lm.get_input_embeddings()(joint)
        if prefix is not None:
            embeds = torch.cat([prefix.unsqueeze(0).expand(len(rows), -1, -1), embeds], dim=1)
        logits = _upcast(self.lm(inputs_embeds=embeds, use_cache=False).logits)
        start = lengths + (0 if prefix is None else prefix.shape[0]) - 1
        index = start[:, None] + torch.arange(batch.read.shape[1], device=joint.device)[None]
        return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))


def scores(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """Teacher-forced per-sample exact match (all value tokens right) and target-token hits."""
    pred = logits.argmax(-1)
    right = pred == batch.read
    target = batch.labels != -100
    em = (right | ~batch.scored).all(1)
    return {"em": em.float(), "hits": (right & target).sum(1).float(), "targets": target.sum(1).float()}


def build(cfg: TrainConfig, device: torch.device) -> tuple[MetaModel, Any]:
    """A fresh model for ``cfg`` (seeded): the backbone with eager attention, and its writer."""
    from gradmem_cli.models import _quiet_hf

    _quiet_hf()
    torch.manual_seed(cfg.seed)
    if cfg.backbone == "scratch":
        from transformers import LlamaConfig, LlamaForCausalLM

        from gradmem_cli.chartok import build_char_tokenizer

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
        from gradmem_cli.models import load_model

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


@torch.no_grad()
def evaluate(model: MetaModel, tokenizer: Any, samples: list[kv.KVSample], batch_size: int,
             device: torch.device, steps: int | None = None, inner_lr: float | None = None) -> dict[str, float]:
    """Teacher-forced EM, token accuracy and loss over ``samples``, writing with ``steps`` (default K).

    The write still needs gradients with respect to the memory; parameters are frozen meanwhile so
    that no graph through the weights is built.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    em = hits = targets = loss_sum = 0.0
    try:
        for group in length_batches(samples, batch_size):
            batch = encode(tokenizer, group).to(device)
            loss, logits, _ = model(batch, steps=steps, grad_mode="none", inner_lr=inner_lr)
            s = scores(logits, batch)
            em += s["em"].sum().item()
            hits += s["hits"].sum().item()
            targets += s["targets"].sum().item()
            loss_sum += loss.item() * len(group)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    n = len(samples)
    return {"em": em / n, "token_acc": hits / max(1, targets), "loss": loss_sum / n, "samples": n}


def parse_steps(text: str) -> list[int]:
    """``"1-10"`` or ``"1,2,5"`` as a list of step counts."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            values = list(range(lo, hi + 1))
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--steps {text}: expected a list like 1,2,5 or a range like 1-10") from None
    if not values or min(values) < 0:
        raise UsageError(f"--steps {text}: expected step counts of 0 or more")
    return values


def read_kv_file(path: Path) -> list[kv.KVSample]:
    """Samples from a JSONL file in the paper's format (one {context, query, target} per line)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GradmemError(f"cannot read {path}: {exc}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(kv.parse(json.loads(line), f"{path}:{number}"))
        except json.JSONDecodeError:
            raise GradmemError(f"{path}:{number}: not a JSON object") from None
        except ValueError as exc:
            raise GradmemError(str(exc)) from None
    if not out:
        raise GradmemError(f"{path}: no samples")
    return out


def steps_table(model_dir: str, pairs: int = 8, data: Path | None = None, steps: str = "", samples: int = 1000,
                seed: int = 12345, batch_size: int = 250, device: str = "auto") -> list[dict[str, Any]]:
    """EM of a checkpoint on kv samples for each write step count K_eval (one row per K_eval).

    The checkpoint is loaded the way ``gradmem write`` loads it (models.load_model). A full-context
    checkpoint (no writer) gives one row, with the context in its input.
    """
    from gradmem_cli.models import load_model

    lm = load_model(model_dir, device=device, dtype="float32", quiet=True)
    if data is not None:
        items = read_kv_file(data)
    else:
        if pairs < 1 or samples < 1:
            raise UsageError("--pairs and --samples must be at least 1")
        items = kv.dataset(pairs, samples, seed=seed)
    model = MetaModel(lm.model, lm.writer, lm.prefix_ids).to(lm.device)
    counts: list[int | None] = [None] if lm.writer is None else (
        parse_steps(steps) if steps else [lm.writer.cfg.steps])
    rows = []
    for k in counts:
        result = evaluate(model, lm.tokenizer, items, batch_size, lm.device, steps=k)
        rows.append({"steps": k, **result})
    return rows
