"""``gradmem train``: learning to write by meta-training through the WRITE loop (and its baselines).

Each training example is a key-value context C, a query Q and a target Y. The ``gradmem`` model
writes C into memory with K differentiable SGD steps (:func:`writer.write_memory`), reads
``[M_K; Q Y]`` and is trained on the cross-entropy of Y alone; the outer AdamW step then updates
everything — backbone, M0, write head, memory projection — through the inner steps. The same
harness trains the forward-only ``rmt`` writer (same m) and the ``full`` context transformer that
reads ``[C; Q Y]`` (the upper bound, no memory).

Samples are generated afresh for every step from ``(seed, step, rank)``, so a resumed run sees
exactly the batches it would have seen. A run folder holds::

    config.yaml            the resolved TrainConfig (a resume must agree with it)
    command.txt            every command line that started or resumed the run
    train.log              human-readable log; metrics.jsonl: one JSON record per log/eval
    checkpoints/step-N/    model/ (a checkpoint folder, see save_model) and state/ (resume only:
                           optimizer + RNG tensors in safetensors, step/stage/best in JSON)
    latest                 the name of the newest complete checkpoint
    best/                  the checkpoint folder with the best held-out EM at the final pair count

Nothing is pickled: weights and optimizer tensors are safetensors, the rest YAML/JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.tasks import kv
from gradmem_cli.writer import LearnedWriter, WriterConfig, _upcast, read_logits, write_memory

WRITERS = ("gradmem", "rmt", "full")
# Fields a resumed run may change; any other difference from the saved config is refused.
RESUMABLE_CHANGES = {"max_steps", "eval_every", "log_every", "threads", "keep_checkpoints", "stop_em",
                     "max_minutes", "device", "eval_batch_size"}


@dataclass
class TrainConfig:
    """Everything about a training run; a YAML file sets any subset, ``--set key=value`` overrides."""

    # --- run ---
    out: str = "runs/kv8-gradmem"
    """Run folder: checkpoints, logs, the resolved config. An existing run there is resumed."""
    seed: int = 0
    """Seeds the initial weights and the training samples."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps. Under torchrun each process takes cuda:LOCAL_RANK."""
    dtype: str = "float32"
    """float32, or bfloat16 (autocast; weights and optimizer state stay float32)."""
    threads: int = 0
    """torch CPU threads; 0 leaves torch's default (all cores)."""

    # --- task ---
    task: str = "kv"
    """The training task; ``kv`` = the paper's key-value retrieval (gradmem_cli.tasks.kv)."""
    pairs: int = 8
    """Key-value pairs per context, the final (and reported) load."""
    curriculum: list[int] = field(default_factory=list)
    """Smaller pair counts to train on first, e.g. [2, 4]; each stage ends when held-out EM at its
    load reaches ``advance_em``. Empty: train on ``pairs`` from the start."""
    advance_em: float = 0.9
    """Held-out EM at which a curriculum stage hands over to the next."""

    # --- backbone ---
    backbone: str = "scratch"
    """``scratch`` (a Llama built from the fields below with the 70-id character tokenizer), or a
    pretrained model (Hugging Face id, folder, .gguf or alias) fine-tuned as a whole."""
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    ffn: int = 512
    """scratch only: layers, hidden size d, attention heads, MLP width (the paper: 4, 128, 4, 512)."""
    max_positions: int = 1024
    """scratch only: max_position_embeddings (RoPE; bounds the context a checkpoint can write)."""

    # --- writer ---
    writer: str = "gradmem"
    """``gradmem`` (learned gradient-descent write), ``rmt`` (forward-only write, same m) or
    ``full`` (no memory: the model reads the whole context; the upper bound)."""
    mem_tokens: int = 8
    """m: memory vectors."""
    inner_steps: int = 2
    """K: inner SGD steps (gradmem) or forward rewrites (rmt)."""
    inner_lr: float = 0.04
    """alpha: the inner SGD rate on the per-sample mean write loss (gradmem)."""
    grad_mode: str = "second"
    """How the outer gradient passes the write (gradmem): ``second`` differentiates through the inner
    gradients (the paper's; slowest), ``first`` treats them as constants (M0 still learns through
    M_K = M0 - alpha * sum g), ``none`` detaches the memory after every step (M0 does not learn)."""
    write_head: bool = True
    """gradmem: a separate Linear(d -> V) for the write loss, initialised from the LM head."""
    mem_proj: bool = False
    """A shared Linear(d -> d), identity at init: gradmem applies it to the memory in WRITE and
    READ; rmt maps the trailing states through it (the paper's RMT baseline uses it)."""
    init_from: str = ""
    """A checkpoint folder (of the same architecture) whose weights start a new run: the paper's
    warm starts, e.g. 64 pairs from a 16-pair run. Empty: fresh weights."""

    # --- outer optimisation ---
    batch_size: int = 16
    """Samples per step and process (the global batch is this times the number of processes)."""
    lr: float = 1e-3
    """AdamW peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 500
    """Linear warm-up from 0 to ``lr``."""
    schedule: str = "constant"
    """After warm-up: ``constant`` or ``cosine`` (decay to 0 at ``max_steps``)."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    max_steps: int = 20000
    """Outer steps in all (a resumed run may raise it)."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint) after this many minutes of this invocation; 0 = no limit."""

    # --- evaluation and checkpoints ---
    eval_every: int = 500
    """Evaluate, checkpoint and apply the curriculum every this many steps."""
    eval_samples: int = 1000
    """Held-out samples per evaluation (fixed, generated from ``eval_seed``)."""
    eval_seed: int = 12345
    eval_batch_size: int = 250
    log_every: int = 50
    """Log the mean training loss and EM every this many steps."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept (the best model is kept apart)."""
    stop_em: float = 1.0
    """Stop once held-out EM at the final pair count reaches this (the paper stops at 1.0)."""

    def validate(self) -> TrainConfig:
        checks = [
            (self.task == "kv", "task must be kv"),
            (self.pairs >= 1, "pairs must be at least 1"),
            (all(isinstance(p, int) and 1 <= p < self.pairs for p in self.curriculum)
             and list(self.curriculum) == sorted(set(self.curriculum)),
             "curriculum must be increasing pair counts below pairs"),
            (0 < self.advance_em <= 1, "advance_em must be in (0, 1]"),
            (self.writer in WRITERS, f"writer must be one of {', '.join(WRITERS)}"),
            (self.grad_mode in ("none", "first", "second"), "grad_mode must be none, first or second"),
            (self.mem_tokens >= 1, "mem_tokens must be at least 1"),
            (self.inner_steps >= 1 or self.writer == "full", "inner_steps must be at least 1"),
            (self.inner_lr > 0, "inner_lr must be positive"),
            (self.dtype in ("float32", "bfloat16"), "dtype must be float32 or bfloat16"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be at least 1"),
            (self.lr > 0 and len(self.betas) == 2, "lr must be positive and betas two numbers"),
            (self.schedule in ("constant", "cosine"), "schedule must be constant or cosine"),
            (self.warmup_steps >= 0 and self.max_steps >= 1, "warmup_steps >= 0 and max_steps >= 1"),
            (self.clip_grad >= 0 and self.max_minutes >= 0, "clip_grad and max_minutes must be >= 0"),
            (self.eval_every >= 1 and self.log_every >= 1 and self.eval_samples >= 1,
             "eval_every, log_every and eval_samples must be at least 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (min(self.layers, self.hidden, self.heads, self.ffn, self.max_positions) >= 1
             and self.hidden % self.heads == 0, "layers/hidden/heads/ffn must be positive, hidden divisible by heads"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(f"train config: {message}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def stages(self) -> list[int]:
        return [*self.curriculum, self.pairs]

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _coerce(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the field's default (YAML reads 1e-4 as a string, 1 as an int)."""
    if isinstance(default, float) and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if default is not None and type(value) is not type(default):
        raise UsageError(f"train config: {key} must be {type(default).__name__}, not {value!r}")
    return value


def _parse_value(key: str, raw: str, default: Any) -> Any:
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UsageError(f"--set {key}: cannot parse '{raw}'") from None
    return _coerce(key, value, default)


def load_config(path: Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file (any subset of fields) and ``key=value`` overrides."""
    import yaml

    defaults = TrainConfig().to_dict()
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise GradmemError(f"cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise GradmemError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise GradmemError(f"{path}: expected a mapping of config fields")
        unknown = sorted(set(data) - set(defaults))
        if unknown:
            raise UsageError(f"{path}: unknown field(s) {', '.join(unknown)}")
        values.update({k: _coerce(k, v, defaults[k]) for k, v in data.items()})
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise UsageError(f"--set {item}: expected KEY=VALUE with KEY one of the config fields")
        values[key] = _parse_value(key, raw, defaults[key])
    try:
        return TrainConfig(**values).validate()
    except TypeError as exc:
        raise UsageError(f"train config: {exc}") from None


# ---------------------------------------------------------------- data


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


def train_samples(cfg: TrainConfig, step: int, rank: int, pairs: int) -> list[kv.KVSample]:
    """The batch of one step on one process: a pure function of (seed, step, rank, pairs)."""
    rng = random.Random(f"train:{cfg.seed}:{step}:{rank}")
    return [kv.generate(pairs, rng) for _ in range(cfg.batch_size)]


def eval_samples(cfg: TrainConfig, pairs: int) -> list[kv.KVSample]:
    """The fixed held-out split for a pair count (a seed stream the training batches never use)."""
    return kv.dataset(pairs, cfg.eval_samples, seed=cfg.eval_seed)


def length_batches(samples: list[kv.KVSample], size: int) -> Iterator[list[kv.KVSample]]:
    """Batches of at most ``size`` samples whose contexts have equal length (rmt needs it)."""
    by_len: dict[int, list[kv.KVSample]] = {}
    for s in samples:
        by_len.setdefault(len(s.context), []).append(s)
    for group in by_len.values():
        for i in range(0, len(group), size):
            yield group[i: i + size]


# ---------------------------------------------------------------- model


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

    from gradmem_cli.writer import WRITER_WEIGHTS

    if not (folder / "model.safetensors").is_file():
        raise GradmemError(f"{folder}: not a checkpoint folder (no model.safetensors)")
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.lm.load_state_dict(state, strict=False)
    tied = set(getattr(model.lm, "_tied_weights_keys", None) or [])
    if unexpected or any(k not in tied for k in missing):
        raise GradmemError(f"{folder}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
    if model.writer is not None:
        model.writer.load_state_dict(load_file(str(folder / WRITER_WEIGHTS)))


# ---------------------------------------------------------------- evaluation


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


# ---------------------------------------------------------------- checkpoints


def _write_state(folder: Path, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_file(tensors, str(folder / "training_state.safetensors"))
    meta = {**meta, "param_groups": state["param_groups"]}
    (folder / "trainer_state.json").write_text(json.dumps(meta, indent=2) + "\n")


def _read_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "training_state.safetensors"))
    meta = json.loads((folder / "trainer_state.json").read_text())
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return meta


class Run:
    """A run folder: config, logs, checkpoints (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, main_process: bool = True):
        self.cfg = cfg
        self.root = Path(cfg.out)
        self.main = main_process

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        folder = self.checkpoints / pointer.read_text().strip()
        return folder if (folder / "state" / "trainer_state.json").is_file() else None

    def check_config(self) -> None:
        """Refuse to resume with settings that change what is being trained."""
        import yaml

        saved_path = self.root / "config.yaml"
        if not saved_path.is_file():
            return
        saved = yaml.safe_load(saved_path.read_text()) or {}
        current = self.cfg.to_dict()
        changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k, current[k]) != current[k])
        if changed:
            raise UsageError(f"{self.root} holds a run with different settings ({', '.join(changed)}); "
                             "choose another out folder")

    def start(self, command: str) -> None:
        import yaml

        if not self.main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        with open(self.root / "command.txt", "a") as fh:
            fh.write(command + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop metric records newer than the checkpoint a resume starts from."""
        path = self.root / "metrics.jsonl"
        if not self.main or not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in keep))

    def log(self, message: str, record: dict[str, Any] | None = None) -> None:
        if not self.main:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, file=sys.stderr, flush=True)
        with open(self.root / "train.log", "a") as fh:
            fh.write(line + "\n")
        if record is not None:
            with open(self.root / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def save(self, model: MetaModel, tokenizer: Any, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
             summary: dict[str, Any], best: bool) -> None:
        """Write checkpoint ``step-N`` atomically (temp folder, rename, then the ``latest`` pointer)."""
        if not self.main:
            return
        name = f"step-{meta['step']:08d}"
        tmp = self.checkpoints / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tokenizer, self.cfg, tmp / "model", summary)
        _write_state(tmp / "state", optimizer, meta)
        final = self.checkpoints / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = self.root / ".latest.tmp"
        pointer.write_text(name + "\n")
        os.replace(pointer, self.root / "latest")
        if best:
            tmp_best = self.root / ".best.tmp"
            shutil.rmtree(tmp_best, ignore_errors=True)
            shutil.copytree(final / "model", tmp_best)
            shutil.rmtree(self.root / "best", ignore_errors=True)
            os.replace(tmp_best, self.root / "best")
        kept = sorted(p for p in self.checkpoints.iterdir() if p.name.startswith("step-"))
        for old in kept[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- training


class _Distributed:
    """torchrun support: one process per device, gradients averaged by all-reduce."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")

    def device(self, name: str) -> torch.device:
        from gradmem_cli.models import resolve_device

        device = resolve_device(name)
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def broadcast(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's values everywhere (decisions taken after an evaluation)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(t, 0)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class TrainResult:
    step: int
    stage_pairs: int
    best_em: float
    best_step: int
    last_eval: dict[str, float] | None
    stopped: str


def train(cfg: TrainConfig, command: str = "") -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns where it stopped and why."""
    cfg.validate()
    dist = _Distributed()
    try:
        return _train(cfg, command, dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, command: str, dist: _Distributed) -> TrainResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = dist.device(cfg.device)
    run = Run(cfg, main_process=dist.rank == 0)
    run.check_config()
    model, tokenizer = build(cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    meta: dict[str, Any] = {"step": 0, "stage": 0, "best_em": -1.0, "best_step": 0}
    latest = run.latest()
    run.start(command)
    if latest is not None:
        load_model_weights(model, latest / "model")
        meta = _read_state(latest / "state", optimizer)
        run.truncate_metrics(meta["step"])
        run.log(f"resumed {run.root} from {latest.name} (step {meta['step']}, stage pairs {cfg.stages[meta['stage']]})")
    else:
        if cfg.init_from:
            load_model_weights(model, Path(cfg.init_from))
        n_params = sum(p.numel() for p in params)
        run.log(f"new run {run.root}: writer {cfg.writer}, {n_params:,} parameters, device {device}, "
                f"threads {torch.get_num_threads()}, processes {dist.world}"
                + (f", weights from {cfg.init_from}" if cfg.init_from else ""))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    eval_sets: dict[int, list[kv.KVSample]] = {}
    started = time.perf_counter()
    window: dict[str, float] = {"loss": 0.0, "em": 0.0, "n": 0, "inner_first": 0.0, "inner_last": 0.0,
                                "seconds": 0.0}
    last_eval: dict[str, float] | None = None
    stopped = "max_steps"
    step = meta["step"]
    with _StopFlag() as stop:
        while step < cfg.max_steps:
            tick = time.perf_counter()
            pairs = cfg.stages[meta["stage"]]
            batch = encode(tokenizer, train_samples(cfg, step, dist.rank, pairs)).to(device)
            lr = cfg.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss, logits, inner = model(batch, grad_mode=cfg.grad_mode)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_gradients(params)
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
            step += 1
            meta["step"] = step
            with torch.no_grad():
                window["loss"] += loss.item()
                window["em"] += scores(logits, batch)["em"].mean().item()
                if inner:
                    window["inner_first"] += inner[0].mean().item()
                    window["inner_last"] += inner[-1].mean().item()
            window["n"] += 1
            window["seconds"] += time.perf_counter() - tick
            if step % cfg.log_every == 0:
                n = window["n"]
                record = {"step": step, "pairs": pairs, "lr": lr, "loss": window["loss"] / n,
                          "train_em": window["em"] / n, "seconds_per_step": window["seconds"] / n}
                if cfg.writer == "gradmem":
                    record.update(inner_loss_first=window["inner_first"] / n, inner_loss_last=window["inner_last"] / n)
                run.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
                        record)
                window = dict.fromkeys(window, 0.0)
            timed_out = cfg.max_minutes and (time.perf_counter() - started) / 60 >= cfg.max_minutes
            if step % cfg.eval_every == 0 or step == cfg.max_steps or stop.requested or timed_out:
                best = advance = done = False
                if dist.rank == 0:
                    last_eval, advance, best = _evaluate_and_decide(cfg, model, tokenizer, device, meta, eval_sets, run)
                    done = last_eval.get("final_em", -1.0) >= cfg.stop_em
                advance, done = (bool(x) for x in dist.broadcast([float(advance), float(done)], device))
                if advance:
                    meta["stage"] += 1
                    run.log(f"curriculum: now training on {cfg.stages[meta['stage']]} pairs")
                summary = {"task": cfg.task, "pairs": pairs, "steps_trained": step, "eval": last_eval,
                           "batch_size": cfg.batch_size * dist.world, "lr": cfg.lr}
                run.save(model, tokenizer, optimizer, dict(meta), summary, best)
                if done:
                    stopped = "stop_em"
                    break
            if stop.requested:
                stopped = "interrupted"
                break
            if timed_out:
                stopped = "max_minutes"
                break
    run.log(f"stopped at step {step} ({stopped}); best EM {meta['best_em']:.4f} at step {meta['best_step']}")
    return TrainResult(step, cfg.stages[meta["stage"]], meta["best_em"], meta["best_step"], last_eval, stopped)


def _evaluate_and_decide(cfg: TrainConfig, model: MetaModel, tokenizer: Any, device: torch.device,
                         meta: dict[str, Any], eval_sets: dict[int, list[kv.KVSample]], run: Run,
                         ) -> tuple[dict[str, Any], bool, bool]:
    """Held-out EM at the current stage's load; (record, advance to the next stage?, new best?).

    Only the final stage (``pairs``) counts for the best checkpoint and ``stop_em``; earlier
    curriculum stages are evaluated at their own load, which decides when they end.
    """
    pairs = cfg.stages[meta["stage"]]
    final = meta["stage"] == len(cfg.stages) - 1
    tick = time.perf_counter()
    if pairs not in eval_sets:
        eval_sets[pairs] = eval_samples(cfg, pairs)
    result = evaluate(model, tokenizer, eval_sets[pairs], cfg.eval_batch_size, device)
    record: dict[str, Any] = {"step": meta["step"], "eval": True, "pairs": pairs, "em": result["em"],
                              "token_acc": result["token_acc"], "loss": result["loss"],
                              "seconds": time.perf_counter() - tick}
    best = final and (result["em"], result["token_acc"]) > (meta["best_em"], meta.get("best_token_acc", -1.0))
    if best:
        meta.update(best_em=result["em"], best_token_acc=result["token_acc"], best_step=meta["step"])
    if final:
        record["final_em"] = result["em"]
    advance = not final and result["em"] >= cfg.advance_em
    run.log("eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in record.items() if k != "eval") + (" (best)" if best else ""), record)
    return record, advance, best


# ---------------------------------------------------------------- test-time scaling of the write


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
