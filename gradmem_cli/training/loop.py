"""``gradmem train``: learning to write by meta-training through the WRITE loop (and its baselines).

Each training example is a context C, a question Q and a target Y from a task of the registry.
The ``gradmem`` model writes C into memory with K differentiable SGD steps
(:func:`~gradmem_cli.lm.learned.write_memory`), reads ``[M_K; Q Y]`` and is trained on the
cross-entropy of Y alone; the outer AdamW step then updates everything (backbone, M0, write head,
memory projection) through the inner steps. The same harness trains the forward-only ``rmt``
writer (same m) and the ``full`` context transformer that reads ``[C; Q Y]`` (the upper bound).

Examples are generated afresh for every step from ``(seed, step, rank)``, so a resumed run sees
exactly the batches it would have seen; the run folder (``runfolder.py``) keeps checkpoints,
optimizer and RNG state, logs and the config. Under ``torchrun`` each process trains on its own
examples and gradients are averaged by all-reduce.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradmem_cli.tasks import get_task
from gradmem_cli.tasks.base import Example, Options
from gradmem_cli.training.checkpoint_eval import teacher_forced_em
from gradmem_cli.training.config import TrainConfig
from gradmem_cli.engine.processes import Distributed, StopFlag
from gradmem_cli.training.model import build, encode, load_model_weights, save_model, scores
from gradmem_cli.training.runfolder import Run, read_state, run_kind


def train_samples(cfg: TrainConfig, step: int, rank: int, pairs: int) -> list[Example]:
    """The batch of one step on one process: a pure function of (seed, step, rank, pairs)."""
    rng = random.Random(f"train:{cfg.seed}:{step}:{rank}")
    task = get_task(cfg.task)
    return [task.train_example(rng, Options(pairs=pairs, variant=cfg.variant)) for _ in range(cfg.batch_size)]


def eval_samples(cfg: TrainConfig, pairs: int) -> list[Example]:
    """The fixed held-out split for a pair count (a seed stream the training batches never use)."""
    options = Options(pairs=pairs, variant=cfg.variant)
    return get_task(cfg.task).load(None, cfg.eval_samples, cfg.eval_seed, options).examples


@dataclass
class TrainResult:
    step: int
    stage_pairs: int
    best_em: float
    best_step: int
    last_eval: dict[str, float] | None
    stopped: str


class _Window:
    """Training figures averaged over the steps since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def flush(self) -> dict[str, float]:
        means = {k: v / self.n for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return means


class _Trainer:
    """One run: the model, its optimiser, the run folder, and the state a resume restores."""

    def __init__(self, cfg: TrainConfig, command: str, dist: Distributed, resume: bool = False):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.dist = cfg, dist
        self.run = Run(cfg, main_process=dist.rank == 0)
        self.run.claim(RUN, resume, [p for p in (cfg.init_from, cfg.backbone) if p and Path(p).exists()])
        self.run.check_config()
        self.device = dist.device(cfg.device)
        self.task = get_task(cfg.task)
        self.model, self.tokenizer = build(cfg, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.meta: dict[str, Any] = {"step": 0, "stage": 0, "best_em": -1.0, "best_step": 0}
        self.eval_sets: dict[int, list[Example]] = {}
        self.last_eval: dict[str, Any] | None = None
        self._start(command)

    def _start(self, command: str) -> None:
        cfg, run = self.cfg, self.run
        latest = run.latest()
        run.start(command)
        if latest is not None:
            load_model_weights(self.model, latest / "model")
            self.meta = read_state(latest / "state", self.optimizer)
            run.truncate_metrics(self.meta["step"])
            run.log(f"resumed {run.root} from {latest.name} (step {self.meta['step']}, "
                    f"stage pairs {cfg.stages[self.meta['stage']]})")
            return
        if cfg.init_from:
            load_model_weights(self.model, Path(cfg.init_from))
        n_params = sum(p.numel() for p in self.params)
        run.log(f"new run {run.root}: writer {cfg.writer}, {n_params:,} parameters, device {self.device}, "
                f"threads {torch.get_num_threads()}, processes {self.dist.world}"
                + (f", weights from {cfg.init_from}" if cfg.init_from else ""))

    def step(self, window: _Window) -> float:
        """One outer step on this process's batch; returns its learning rate."""
        cfg, step = self.cfg, self.meta["step"]
        pairs = cfg.stages[self.meta["stage"]]
        batch = encode(self.tokenizer, self.task, train_samples(cfg, step, self.dist.rank, pairs)).to(self.device)
        lr = cfg.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
            loss, logits, inner = self.model(batch, grad_mode=cfg.grad_mode)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.params)
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad or float("inf"))
        self.optimizer.step()
        self.meta["step"] = step + 1
        with torch.no_grad():
            figures = {"loss": loss.item(), "train_em": scores(logits, batch)["em"].mean().item(),
                       "grad_norm": norm.item()}
            if inner:
                figures.update(inner_loss_first=inner[0].mean().item(), inner_loss_last=inner[-1].mean().item())
        window.add(**figures)
        return lr

    def log_window(self, window: _Window, lr: float, seconds: float) -> None:
        record = {"step": self.meta["step"], "pairs": self.cfg.stages[self.meta["stage"]], "lr": lr,
                  **window.flush(), "seconds_per_step": seconds}
        self.run.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
                     record)

    def checkpoint(self) -> bool:
        """Evaluate (rank 0), apply the curriculum, save; True when ``stop_em`` is reached."""
        best = advance = done = False
        if self.dist.rank == 0:
            self.last_eval, advance, best = self._evaluate_and_decide()
            done = self.last_eval.get("final_em", -1.0) >= self.cfg.stop_em
        advance, done = (bool(x) for x in self.dist.broadcast([float(advance), float(done)], self.device))
        pairs = self.cfg.stages[self.meta["stage"]]
        if advance:
            self.meta["stage"] += 1
            self.run.log(f"curriculum: now training on {self.cfg.stages[self.meta['stage']]} pairs")
        summary = {"task": self.cfg.task, "pairs": pairs, "steps_trained": self.meta["step"], "eval": self.last_eval,
                   "batch_size": self.cfg.batch_size * self.dist.world, "lr": self.cfg.lr}
        self.run.save(lambda folder: save_model(self.model, self.tokenizer, self.cfg, folder, summary), self.optimizer,
                      dict(self.meta), best)
        return done

    def _evaluate_and_decide(self) -> tuple[dict[str, Any], bool, bool]:
        """Held-out EM at the current stage's load; (record, advance to the next stage?, new best?).

        Only the final stage (``pairs``) counts for the best checkpoint and ``stop_em``; earlier
        curriculum stages are evaluated at their own load, which decides when they end.
        """
        cfg, meta = self.cfg, self.meta
        pairs = cfg.stages[meta["stage"]]
        final = meta["stage"] == len(cfg.stages) - 1
        tick = time.perf_counter()
        if pairs not in self.eval_sets:
            self.eval_sets[pairs] = eval_samples(cfg, pairs)
        result = teacher_forced_em(self.model, self.tokenizer, self.task, self.eval_sets[pairs],
                                   cfg.eval_batch_size, self.device)
        record: dict[str, Any] = {"step": meta["step"], "eval": True, "pairs": pairs, "em": result["em"],
                                  "token_acc": result["token_acc"], "loss": result["loss"],
                                  "seconds": time.perf_counter() - tick}
        best = final and (result["em"], result["token_acc"]) > (meta["best_em"], meta.get("best_token_acc", -1.0))
        if best:
            meta.update(best_em=result["em"], best_token_acc=result["token_acc"], best_step=meta["step"])
        if final:
            record["final_em"] = result["em"]
        advance = not final and result["em"] >= cfg.advance_em
        self.run.log("eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in record.items() if k != "eval") + (" (best)" if best else ""),
                     record)
        return record, advance, best


RUN = run_kind(TrainConfig, "a gradmem train run")


def train(cfg: TrainConfig, command: str = "", resume: bool = False) -> TrainResult:
    """Run the training described by ``cfg`` (``resume``: continue the run already in its folder);
    returns where it stopped and why."""
    cfg.validate()
    dist = Distributed()
    try:
        return _loop(_Trainer(cfg, command, dist, resume))
    finally:
        dist.close()


def _loop(trainer: _Trainer) -> TrainResult:
    cfg, meta = trainer.cfg, trainer.meta
    started = time.perf_counter()
    window, seconds, stopped = _Window(), 0.0, "max_steps"
    with StopFlag() as stop:
        while meta["step"] < cfg.max_steps:
            tick = time.perf_counter()
            lr = trainer.step(window)
            seconds += time.perf_counter() - tick
            step = meta["step"]
            if step % cfg.log_every == 0:
                trainer.log_window(window, lr, seconds / window.n)
                seconds = 0.0
            timed_out = cfg.max_minutes and (time.perf_counter() - started) / 60 >= cfg.max_minutes
            if (step % cfg.eval_every == 0 or step == cfg.max_steps or stop.requested or timed_out) \
                    and trainer.checkpoint():
                stopped = "stop_em"
                break
            if stop.requested or timed_out:
                stopped = stop.reason if stop.requested else "max_minutes"
                break
    meta = trainer.meta
    trainer.run.log(f"stopped at step {meta['step']} ({stopped}); best EM {meta['best_em']:.4f} "
                    f"at step {meta['best_step']}")
    return TrainResult(meta["step"], cfg.stages[meta["stage"]], meta["best_em"], meta["best_step"],
                       trainer.last_eval, stopped)
