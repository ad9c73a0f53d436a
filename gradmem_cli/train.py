"""``gradmem train``: learning to write by meta-training through the WRITE loop (and its baselines).

Each training example is a key-value context C, a query Q and a target Y. The ``gradmem`` model
writes C into memory with K differentiable SGD steps (:func:`writer.write_memory`), reads
``[M_K; Q Y]`` and is trained on the cross-entropy of Y alone; the outer AdamW step then updates
everything — backbone, M0, write head, memory projection — through the inner steps. The same
harness trains the forward-only ``rmt`` writer (same m) and the ``full`` context transformer that
reads ``[C; Q Y]`` (the upper bound, no memory).

Samples are generated afresh for every step from ``(seed, step, rank)``, so a resumed run sees
exactly the batches it would have seen; the run folder (``runfolder.py``) keeps checkpoints,
optimizer and RNG state, logs and the config. Under ``torchrun`` each process trains on its own
samples and gradients are averaged by all-reduce.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradmem_cli.documents import decode_text
from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.fileio import check_regular_file
from gradmem_cli.metamodel import MetaModel, build, encode, evaluate, load_model_weights, scores
from gradmem_cli.runfolder import Run, read_state
from gradmem_cli.tasks import kv

WRITERS = ("gradmem", "rmt", "full")


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
    batch_size: int = 16
    """Samples per step and process (the global batch is this times the number of processes)."""
    lr: float = 1e-3
    """AdamW peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay (on every parameter; the paper uses 0)."""
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
    """Seeds the held-out samples (training samples come from a separate seed stream)."""
    eval_batch_size: int = 250
    """Samples per forward pass during evaluation."""
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
        check_regular_file(Path(path))
        try:
            data = yaml.safe_load(decode_text(Path(path).read_bytes(), str(path))) or {}
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


def train_samples(cfg: TrainConfig, step: int, rank: int, pairs: int) -> list[kv.KVSample]:
    """The batch of one step on one process: a pure function of (seed, step, rank, pairs)."""
    rng = random.Random(f"train:{cfg.seed}:{step}:{rank}")
    return [kv.generate(pairs, rng) for _ in range(cfg.batch_size)]


def eval_samples(cfg: TrainConfig, pairs: int) -> list[kv.KVSample]:
    """The fixed held-out split for a pair count (a seed stream the training batches never use)."""
    return kv.dataset(pairs, cfg.eval_samples, seed=cfg.eval_seed)


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
        _wait_released(flat)
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
        _wait_released(t)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _wait_released(tensor: torch.Tensor, timeout: float = 10.0) -> None:
    """Wait until gloo's worker thread has dropped its reference to a finished collective's tensor.

    The collective call returns when the work completes, but the worker thread releases its copy
    a moment later, and that release needs the GIL. If the main thread reaches interpreter exit
    first (rank 1 right after the last broadcast), the worker dies taking the GIL and the process
    aborts with "terminate called without an active exception". Measured: about 4 % of
    collectives return before the release, which then takes one 0.1 ms sleep.
    """
    deadline = time.monotonic() + timeout
    while tensor._use_count() > 1 and time.monotonic() < deadline:
        time.sleep(1e-4)


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
        meta = read_state(latest / "state", optimizer)
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
    window = dict.fromkeys(("loss", "em", "n", "inner_first", "inner_last", "grad_norm", "seconds"), 0.0)
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
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or float("inf"))
            optimizer.step()
            step += 1
            meta["step"] = step
            with torch.no_grad():
                window["loss"] += loss.item()
                window["em"] += scores(logits, batch)["em"].mean().item()
                if inner:
                    window["inner_first"] += inner[0].mean().item()
                    window["inner_last"] += inner[-1].mean().item()
                window["grad_norm"] += norm.item()
            window["n"] += 1
            window["seconds"] += time.perf_counter() - tick
            if step % cfg.log_every == 0:
                n = window["n"]
                record = {"step": step, "pairs": pairs, "lr": lr, "loss": window["loss"] / n,
                          "train_em": window["em"] / n, "grad_norm": window["grad_norm"] / n,
                          "seconds_per_step": window["seconds"] / n}
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


