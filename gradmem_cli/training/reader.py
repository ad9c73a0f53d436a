"""``gradmem train-reader``: a trained reader for the frozen writer (learning to read, on a CPU).

The frozen model writes every story into memory exactly as ``gradmem write`` does (test-time
optimisation, exact rebuild); a memory store keeps each once, across runs and stops. A LoRA that
is switched on only while reading (:mod:`~gradmem_cli.lm.adapter`) is then trained on
``[memory; question] -> answer``, with the loss on the answer tokens (and the end of the turn)
alone. Writing is unchanged, so the reader reads every ``.gmem`` of its base model.

Checkpoints are chosen on validation data only; the test split is reported once, by ``gradmem eval``.
Two tasks. ``babi``: the validation stories are the ones ``gradmem eval babi --task QA --split val --seed
EVAL_SEED`` draws (the same examples, one question each); training stories come from the train split (its
own stream and entity combinations, every question a story answers). ``qa``: passages with questions from
a JSONL (``gradmem self-study`` writes one from your own texts), validated on ``eval_data`` (the shipped
SQuAD-mini unless it names another). Either way a training context that shares an 8-word run with a
validation one is dropped.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradmem_cli.errors import UsageError, shown, validated
from gradmem_cli.tasks.metrics import mean
from gradmem_cli.lm import adapter
from gradmem_cli.lm.generate import Reader, prompt_ids
from gradmem_cli.lm.loading import LoadedModel, load_model
from gradmem_cli.lm.memlm import pad, token_loss
from gradmem_cli.lm.spaces import SPACES
from gradmem_cli.memory.memfile import MemoryFile
from gradmem_cli.engine.store import MemoryStore
from gradmem_cli.tasks import babi, get_task
from gradmem_cli.tasks.base import Example, Options, file_source, word_runs
from gradmem_cli.tasks.qa import load_qa
from gradmem_cli.training.config import LoopSettings
from gradmem_cli.engine.processes import StopFlag
from gradmem_cli.training.runfolder import Run, read_state, run_kind
from gradmem_cli.writers.config import WriteConfig


INPUTS = ("memory", "context", "none")
TASKS = ("babi", "qa")


@dataclass
class ReaderTrainConfig(LoopSettings):
    """A reader training run (the loop settings it shares with ``gradmem train``, other defaults)."""

    # A CPU-sized run by default (the fields are documented in LoopSettings; the run folder also
    # holds the memory store unless ``memories`` names one, and a step is batch_size questions).
    out: str = "runs/reader-babi"
    device: str = "cpu"
    batch_size: int = 8
    warmup_steps: int = 20
    max_steps: int = 600
    eval_every: int = 100
    log_every: int = 10
    model: str = "smollm2-135m-instruct"
    """The frozen base model that writes the memories and that the reader adapts."""
    task: str = "babi"
    """``babi`` (stories the generator draws, of the ``variants``) or ``qa`` (passages and questions from
    ``train_data``, held out on ``eval_data``)."""
    variants: list[str] = field(default_factory=lambda: ["qa1"])
    """bAbI tasks to train and evaluate on (qa1..qa5)."""
    train_data: str = ""
    """qa: the training JSONL ``{context, question, answers}`` (e.g. from ``gradmem self-study``)."""
    eval_data: str = ""
    """qa: the held-out JSONL or SQuAD v1.1 JSON (default: the shipped SQuAD-mini, as ``gradmem eval qa``)."""
    input: str = "memory"
    """What the reader reads before the question: ``memory`` (the story's memory: the reader), or the
    baselines on the same data, ``context`` (the story in the prompt: full context, fine-tuned) and
    ``none`` (the question alone: no context, fine-tuned)."""
    train_stories: int = 200
    """babi: training stories per task (each written into one memory; all its questions are used)."""
    eval_stories: int = 50
    """Held-out examples per task: the first N that ``gradmem eval`` draws at ``eval_seed`` (babi: one
    question per story; qa: the first N questions of the held-out set)."""
    eval_seed: int = 0
    """Seed of the held-out draw (``gradmem eval --seed``)."""
    memories: str = ""
    """A memory store folder shared between runs (default: OUT/memories)."""
    space: str = "embed"
    """The memory space of the training memories (``gradmem write --space``); the reader reads only
    memories of this space."""
    cached_only: bool = False
    """Train only on stories whose memory is already stored (start before the store is full)."""
    init: str = "tokens"
    """How the training memories start (``gradmem write --init``): ``tokens``, as for the shipped readers,
    which were trained before gradmem shipped a fitted start; ``fitted`` for memories that
    ``gradmem write`` now writes by default with the default model."""
    cycle: int = 0
    """The training memories' cosine cycle (``gradmem write --cycle``): 0 = one decay over the steps, as for
    the shipped readers, written before the cycles; 150 for memories as ``gradmem write`` now writes them."""
    warmup: float = 0.1
    """The training memories' warm-up (``gradmem write --warmup``): 0.1 as for the shipped readers; 0.03 now."""
    rank: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA alpha (the update is scaled by alpha / rank)."""
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Modules the LoRA attaches to."""
    max_new_tokens: int = 8
    """Answer budget at evaluation."""

    def validate(self) -> ReaderTrainConfig:
        checks = [
            *self.loop_checks(),
            (self.task in TASKS, f"task must be one of {', '.join(TASKS)}"),
            (self.task != "babi" or (self.variants and all(v in babi.VARIANTS for v in self.variants)),
             "variants must be among qa1..qa5"),
            (self.task != "qa" or bool(self.train_data), "task qa needs train_data (a JSONL, e.g. from "
                                                          "gradmem self-study)"),
            (self.input in INPUTS, f"input must be one of {', '.join(INPUTS)}"),
            (self.init in ("tokens", "random", "fitted"), "init must be tokens, random or fitted"),
            (self.space in SPACES, f"space must be one of {', '.join(SPACES)}"),
            (self.cycle >= 0 and 0 <= self.warmup < 1, "cycle must be 0 or more and warmup in [0, 1)"),
            (self.train_stories >= 1 and self.eval_stories >= 1, "train_stories and eval_stories must be at least 1"),
            (self.rank >= 1 and self.alpha > 0 and bool(self.targets), "rank >= 1, alpha > 0, targets not empty"),
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
        ]
        return validated(self, checks, "reader config: ", options=False)


@dataclass
class Row:
    """One training or held-out item: the context, one question, its answers, and the group it is
    scored in (the bAbI task, or ``qa``)."""

    example: Example
    group: str


def groups(cfg: ReaderTrainConfig) -> list[str]:
    return list(cfg.variants) if cfg.task == "babi" else ["qa"]


def held_out(cfg: ReaderTrainConfig) -> list[Row]:
    task = get_task(cfg.task)
    if cfg.task == "qa":
        data = Path(cfg.eval_data) if cfg.eval_data else None
        return [Row(ex, "qa") for ex in task.load(data, cfg.eval_stories, cfg.eval_seed).examples]
    return [Row(ex, v) for v in cfg.variants
            for ex in task.load(None, cfg.eval_stories, cfg.eval_seed, Options(variant=v, split="val")).examples]


def training_rows(cfg: ReaderTrainConfig, held: list[Row]) -> tuple[list[Row], int]:
    """Every question of every training context, and how many contexts were dropped as held out:
    bAbI stories equal to a held-out one (generated stories share phrases by design), passages that
    share an 8-word run with a held-out passage."""
    held_contexts = {r.example.context for r in held}
    if cfg.task == "qa":
        rows = [Row(ex, "qa") for ex in load_qa(Path(cfg.train_data))]
        seen = set().union(*(word_runs(c) for c in held_contexts))
        leaked = {c for c in {r.example.context for r in rows} if word_runs(c) & seen}
    else:
        rows = [Row(Example(f"{v}-train-{i}", context, q, [a]), v) for v in cfg.variants
                for i, (context, questions) in enumerate(babi.stories(v, cfg.train_stories, cfg.seed, split="train"))
                for q, a in questions]
        leaked = {r.example.context for r in rows} & held_contexts
    return [r for r in rows if r.example.context not in leaked], len(leaked)


class ReaderTrainer:
    """The base model with a fresh reader, its memories, data, optimiser and run folder."""

    def __init__(self, cfg: ReaderTrainConfig, command: str = "", resume: bool = False):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.run = Run(cfg)
        self.run.claim(RUN, resume, [p for p in (cfg.train_data, cfg.eval_data, cfg.model, cfg.memories)
                                     if p and Path(p).exists()])
        self.run.check_config()
        self.task = get_task(cfg.task)
        self.lm: LoadedModel = load_model(cfg.model, device=cfg.device, quiet=True)
        torch.manual_seed(cfg.seed)
        adapter.attach(self.lm, adapter.ReaderConfig(
            base_model=self.lm.spec, base_fingerprint=dataclasses.asdict(self.lm.fingerprint), rank=cfg.rank,
            alpha=cfg.alpha, targets=list(cfg.targets)))
        self.params = adapter.reader_parameters(self.lm)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.store = MemoryStore(cfg.memories or Path(cfg.out) / "memories", self.lm,
                                 WriteConfig(space=cfg.space, init=cfg.init, cycle=cfg.cycle,
                                             warmup=cfg.warmup).resolve(self.lm),
                                 on_rewrite=lambda message: self.run.log(f"warning: {shown(message, 1000)}"))
        self.eval_rows = held_out(cfg)
        self.train_rows, leaked = training_rows(cfg, self.eval_rows)
        if leaked:
            self.run.log(f"dropped {leaked} training contexts that share an 8-word run with a held-out one")
        self.meta: dict[str, Any] = {"step": 0, "best": [-1.0, -1.0], "best_step": 0}
        self.memories: dict[str, MemoryFile] = {}
        self.last_eval: dict[str, Any] | None = None
        self._start(command)

    def _start(self, command: str) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        latest = self.run.latest()
        self.run.start(command)
        if latest is not None:
            state = load_file(str(latest / "model" / adapter.READER_WEIGHTS))
            set_peft_model_state_dict(self.lm.model, state, adapter_name=adapter.ADAPTER)
            self.meta = read_state(latest / "state", self.optimizer)
            self.run.truncate_metrics(self.meta["step"])
            self.run.log(f"resumed {self.run.root} from {latest.name} (step {self.meta['step']})")
        else:
            self.run.log(f"new reader run {self.run.root}: base {self.lm.spec}, LoRA rank {self.cfg.rank} on "
                         f"{', '.join(self.cfg.targets)} ({sum(p.numel() for p in self.params):,} parameters)")

    def prepare(self) -> None:
        """Write the stories that have no memory yet (resumable) and load the memories. With
        ``cached_only`` every input trains on the stories already stored, so a baseline and a reader
        can be compared on the same stories."""
        cfg = self.cfg
        texts = [r.example.context for r in self.eval_rows + self.train_rows]
        if cfg.input == "memory" and not cfg.cached_only:
            missing = len(self.store.missing(texts))
            self.run.log(f"memories: {len(set(texts)) - missing} stored, {missing} to write into {self.store.folder}")
            self.store.fill(texts, on_saved=lambda doc, _: self.run.log(f"wrote memory {doc.name[:12]}"))
        if cfg.input == "memory" or cfg.cached_only:
            for text in dict.fromkeys(texts):
                mem = self.store.get(text)
                if mem is not None:
                    self.memories[text] = mem
            self.train_rows = [r for r in self.train_rows if r.example.context in self.memories]
        missing_eval = [r for r in self.eval_rows if r.example.context not in self.memories]
        if (cfg.input == "memory" and missing_eval) or not self.train_rows:
            raise UsageError(f"{len(missing_eval)} held-out and {len(self.train_rows)} usable training memories: "
                             "write them first (cached_only: false)")
        contexts = len({r.example.context for r in self.train_rows})
        self.run.log(f"input {cfg.input}: training on {len(self.train_rows)} questions about {contexts} contexts; "
                     f"held out: {len(self.eval_rows)} questions")

    def _context(self, row: Row) -> str | None:
        """What the prompt shows before the question: the story for ``input: context``, else nothing."""
        return row.example.context if self.cfg.input == "context" else None

    def _memory(self, row: Row) -> MemoryFile | None:
        return self.memories[row.example.context] if self.cfg.input == "memory" else None

    def _rows(self, rows: list[Row]) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Memories [B, S*m, d] (rows of one memory length; None without memory) and [prompt; answer;
        end of turn] ids with the mask of the tokens the loss counts."""
        memory = None
        if self.cfg.input == "memory":
            memory = torch.stack([self._memory(r).memory.flatten(0, 1).float() for r in rows])
        seqs, scored = [], []
        for r in rows:
            prompt = prompt_ids(self.lm, self.task.user_text(r.example, self._context(r)))
            answer = self.lm.tokenize(r.example.answers[0]) + [self.lm.tokenizer.eos_token_id]
            seqs.append(prompt + answer)
            scored.append([False] * len(prompt) + [True] * len(answer))
        ids, mask = pad(seqs, self.lm.device)
        answer_mask = torch.zeros_like(mask)
        for i, marks in enumerate(scored):
            answer_mask[i, : len(marks)] = torch.tensor(marks)
        return memory, ids, mask, answer_mask

    def step(self) -> float:
        """One optimiser step on a batch drawn from (seed, step); returns the mean answer loss."""
        cfg, step = self.cfg, self.meta["step"]
        rng = random.Random(f"reader:{cfg.seed}:{step}")
        batch = [self.train_rows[rng.randrange(len(self.train_rows))] for _ in range(cfg.batch_size)]
        groups: dict[int, list[Row]] = {}
        for r in batch:  # rows whose memories have as many segments go through together
            mem = self._memory(r)
            groups.setdefault(0 if mem is None else mem.memory.shape[0], []).append(r)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        with adapter.reading(self.lm):
            for rows in groups.values():
                memory, ids, mask, answer_mask = self._rows(rows)
                loss = token_loss(self.lm.forward(memory, ids, mask, space=cfg.space), ids, answer_mask).sum()
                loss = loss / cfg.batch_size
                loss.backward()
                total += loss.item()
        torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad or float("inf"))
        self.optimizer.step()
        self.meta["step"] = step + 1
        return total

    def evaluate(self) -> dict[str, Any]:
        """Held-out scores per task: the condition of ``gradmem eval babi --reader`` that matches the
        input (memory, full-context or no-context)."""
        record: dict[str, Any] = {"step": self.meta["step"], "eval": True}
        tick = time.perf_counter()
        names = groups(self.cfg)
        for v in names:
            scores = []
            for r in (r for r in self.eval_rows if r.group == v):
                memfile = self._memory(r)
                reader = Reader(self.lm, None if memfile is None else memfile.memory, self.cfg.space)
                _, sc = self.task.respond(self.lm, reader, r.example, self._context(r), memfile,
                                          self.cfg.max_new_tokens)
                scores.append(sc)
            for k in ("em", "f1", "contains"):
                record[f"{v}_{k}"] = mean([s[k] for s in scores])
        record["em"] = mean([record[f"{v}_em"] for v in names])
        record["f1"] = mean([record[f"{v}_f1"] for v in names])
        record["seconds"] = time.perf_counter() - tick
        return record

    def checkpoint(self) -> None:
        self.last_eval = record = self.evaluate()
        best = [record["em"], record["f1"]] > self.meta["best"]
        if best:
            self.meta.update(best=[record["em"], record["f1"]], best_step=self.meta["step"])
        self.run.log("eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in record.items() if k != "eval") + (" (best)" if best else ""),
                     record)
        cfg = self.cfg
        data = ({"variants": cfg.variants, "train_seed": cfg.seed} if cfg.task == "babi" else
                {"train_data": file_source(Path(cfg.train_data)),
                 "eval_data": file_source(Path(cfg.eval_data)) if cfg.eval_data else "squad_mini.jsonl"})
        self.lm.reader.training = {"task": cfg.task, "input": cfg.input, "space": cfg.space, **data, "train_stories":
                                   len({r.example.context for r in self.train_rows}), "train_questions":
                                   len(self.train_rows), "steps": self.meta["step"],
                                   "held_out": {k: v for k, v in record.items() if k not in ("eval", "seconds")},
                                   "eval_seed": cfg.eval_seed, "write": self.store.settings}
        self.run.save(lambda folder: adapter.save(self.lm, folder), self.optimizer, dict(self.meta), best)


RUN = run_kind(ReaderTrainConfig, "a gradmem train-reader run")


def train_reader(cfg: ReaderTrainConfig, command: str = "", resume: bool = False) -> dict[str, Any]:
    """Run a reader training (``resume``: continue the run already in its folder); returns where it
    stopped, the best step and the last scores."""
    cfg.validate()
    trainer = ReaderTrainer(cfg, command, resume)
    trainer.prepare()
    started, losses, stopped = time.perf_counter(), [], "max_steps"
    with StopFlag() as stop:
        while trainer.meta["step"] < cfg.max_steps:
            losses.append(trainer.step())
            step = trainer.meta["step"]
            if step % cfg.log_every == 0:
                trainer.run.log(f"step {step} loss {mean(losses):.4f}", {"step": step, "loss": mean(losses)})
                losses = []
            timed_out = cfg.max_minutes and (time.perf_counter() - started) / 60 >= cfg.max_minutes
            if step % cfg.eval_every == 0 or step == cfg.max_steps or stop.requested or timed_out:
                trainer.checkpoint()
            if stop.requested or timed_out:
                stopped = stop.reason if stop.requested else "max_minutes"
                break
    trainer.run.log(f"stopped at step {trainer.meta['step']} ({stopped}); best EM {trainer.meta['best'][0]:.4f} "
                    f"at step {trainer.meta['best_step']}")
    return {"step": trainer.meta["step"], "stopped": stopped, "best_step": trainer.meta["best_step"],
            "best_em": trainer.meta["best"][0], "last_eval": trainer.last_eval}
