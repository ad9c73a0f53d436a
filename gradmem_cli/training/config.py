"""Training settings: every field of a run, from a YAML file and ``--set KEY=VALUE`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradmem_cli.errors import GradmemError, UsageError, shown, validated
from gradmem_cli.lm.memlm import lr_at
from gradmem_cli.memory.documents import decode_text
from gradmem_cli.fileio import MAX_CONFIG_BYTES, read_capped
from gradmem_cli.tasks import TASKS
from gradmem_cli.tasks.base import Task

WRITERS = ("gradmem", "rmt", "full")


def trainable_tasks() -> list[str]:
    """Tasks with a generator of training examples."""
    return [name for name, t in TASKS.items() if type(t).train_example is not Task.train_example]


@dataclass
class LoopSettings:
    """What every training run has: its folder, seed and device, and the outer loop's optimiser,
    schedule, evaluation and checkpoint rhythm. :class:`TrainConfig` and the reader's config add
    their own fields; a YAML file sets any subset, ``--set key=value`` overrides."""

    out: str = "runs/kv8-gradmem"
    """Run folder: checkpoints, logs, the resolved config. An existing run there is resumed."""
    seed: int = 0
    """Seeds the initial weights and the training samples."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps. Under torchrun each process takes cuda:LOCAL_RANK."""
    threads: int = 0
    """torch CPU threads; 0 leaves torch's default (all cores)."""
    batch_size: int = 16
    """Samples per step and process (the global batch is this times the number of processes)."""
    lr: float = 1e-3
    """AdamW peak learning rate."""
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
    eval_every: int = 500
    """Evaluate, checkpoint and apply the curriculum every this many steps."""
    log_every: int = 50
    """Log the mean training loss and EM every this many steps."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept (the best model is kept apart)."""

    def loop_checks(self) -> list[tuple[bool, str]]:
        return [
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.schedule in ("constant", "cosine"), "schedule must be constant or cosine"),
            (self.warmup_steps >= 0 and self.max_steps >= 1, "warmup_steps >= 0 and max_steps >= 1"),
            (self.clip_grad >= 0 and self.max_minutes >= 0, "clip_grad and max_minutes must be >= 0"),
            (self.eval_every >= 1 and self.log_every >= 1 and self.keep_checkpoints >= 1,
             "eval_every, log_every and keep_checkpoints must be at least 1"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.lr, self.max_steps, self.warmup_steps, self.schedule)


@dataclass
class TrainConfig(LoopSettings):
    """Meta-training through the WRITE loop (``gradmem train``): the task, the backbone, the writer."""

    dtype: str = "float32"
    """float32, or bfloat16 (autocast; weights and optimizer state stay float32)."""

    # --- task ---
    task: str = "kv"
    """The training task, from the task registry (``kv`` = the paper's key-value retrieval)."""
    pairs: int = 8
    """Key-value pairs per context, the final (and reported) load."""
    variant: str = "qa1"
    """babi: which bAbI task to train on (qa1..qa5)."""
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
    """scratch only: transformer layers (the paper: 4)."""
    hidden: int = 128
    """scratch only: hidden size d, also the size of a memory vector (the paper: 128)."""
    heads: int = 4
    """scratch only: attention heads (the paper: 4)."""
    ffn: int = 512
    """scratch only: MLP width (the paper: 512)."""
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
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay (on every parameter; the paper uses 0)."""
    # --- evaluation and checkpoints ---
    eval_samples: int = 1000
    """Held-out samples per evaluation (fixed, generated from ``eval_seed``)."""
    eval_seed: int = 12345
    """Seeds the held-out samples (training samples come from a separate seed stream)."""
    eval_batch_size: int = 250
    """Samples per forward pass during evaluation."""
    stop_em: float = 1.0
    """Stop once held-out EM at the final pair count reaches this (the paper stops at 1.0)."""

    def validate(self) -> TrainConfig:
        checks = [
            (self.task in trainable_tasks(), f"task must be one of {', '.join(trainable_tasks())}"),
            (self.pairs >= 1, "pairs must be at least 1"),
            (all(isinstance(p, int) and 1 <= p < self.pairs for p in self.curriculum)
             and list(self.curriculum) == sorted(set(self.curriculum)),
             "curriculum must be increasing pair counts below pairs"),
            (self.task == "kv" or not self.curriculum, "curriculum (of pair counts) applies to kv only"),
            (0 < self.advance_em <= 1, "advance_em must be in (0, 1]"),
            (self.writer in WRITERS, f"writer must be one of {', '.join(WRITERS)}"),
            (self.grad_mode in ("none", "first", "second"), "grad_mode must be none, first or second"),
            (self.mem_tokens >= 1, "mem_tokens must be at least 1"),
            (self.inner_steps >= 1 or self.writer == "full", "inner_steps must be at least 1"),
            (self.inner_lr > 0, "inner_lr must be positive"),
            (self.dtype in ("float32", "bfloat16"), "dtype must be float32 or bfloat16"),
            *self.loop_checks(),
            (self.eval_batch_size >= 1 and self.eval_samples >= 1, "eval_batch_size and eval_samples must be >= 1"),
            (len(self.betas) == 2, "betas must be two numbers"),
            (min(self.layers, self.hidden, self.heads, self.ffn, self.max_positions) >= 1
             and self.hidden % self.heads == 0, "layers/hidden/heads/ffn must be positive, hidden divisible by heads"),
        ]
        return validated(self, checks, "train config: ", options=False)

    @property
    def stages(self) -> list[int]:
        return [*self.curriculum, self.pairs]


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


def load_config(path: Path | None, overrides: list[str] = (), kind: type = None) -> Any:
    """A training config (``kind``, default :class:`TrainConfig`) from a YAML file (any subset of
    fields) and ``key=value`` overrides."""
    import yaml

    kind = kind or TrainConfig
    defaults = kind().to_dict()
    values: dict[str, Any] = {}
    if path is not None:
        raw = read_capped(Path(path), MAX_CONFIG_BYTES)
        try:
            data = yaml.safe_load(decode_text(raw, str(path))) or {}
        except yaml.YAMLError as exc:  # a python/object tag too: safe_load builds no objects
            raise GradmemError(f"{path}: not valid YAML ({shown(str(exc).splitlines()[0])})") from None
        except RecursionError:
            raise GradmemError(f"{path}: not valid YAML (nested too deeply)") from None
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
        return kind(**values).validate()
    except TypeError as exc:
        raise UsageError(f"train config: {exc}") from None
