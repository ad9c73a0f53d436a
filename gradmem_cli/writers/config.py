"""Write settings: the options a user gives (:class:`WriteConfig`) and what they resolve to for one
model (:class:`ResolvedWrite`), once, before any work.

Every field is recorded in the ``.gmem`` it produces and, unless marked ``cli: False``, is a
``gradmem write`` / ``gradmem eval`` option of the same name (the CLI builds them from here).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from gradmem_cli.errors import UsageError, validated
from gradmem_cli.lm.dtypes import DTYPES
from gradmem_cli.lm.memlm import lr_at
from gradmem_cli.lm.spaces import SPACES
from gradmem_cli.objectives import OBJECTIVES

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel
    from gradmem_cli.writers.start import Start

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
INITS = ("tokens", "random", "fitted", "learned")
CYCLE_STEPS_PER_TOKEN = 150 / 64  # tuned on benchmarks/tuning: 64-token segments settle best in cycles of 150
# kv writes exactly in a fraction of embed's steps and wall time on real prose (docs/performance.md,
# benchmarks/results/memory_space/); embed stays for what only it does (see WriteConfig.default_space).
DEFAULT_SPACE = "kv"


@dataclass(frozen=True)
class WriteConfig:
    """Settings of a WRITE. Fields left at None take the model's default (:meth:`resolve`): the
    value in parentheses in their help for a plain LM (per memory space where it says so), the
    trained writer's own for a ``gradmem train`` checkpoint. Values are checked when the settings
    are made."""

    space: str | None = field(default=None, metadata={
        "help": "Where the memory lives: " + "; ".join(f"{s.name} = {s.help}" for s in SPACES.values())
                + f" (default: {DEFAULT_SPACE} where the model can hold it; embed for --init fitted, --start, "
                  "the distill and mix objectives, and models a prefix cache cannot serve)."})
    mem_tokens: int | None = field(default=None, metadata={
        "help": "m: memory slots per segment (default: " + ", ".join(
            f"{s.name} {s.defaults['mem_tokens']}" for s in SPACES.values()) + "; a trained writer's m)."})
    segment_tokens: int | None = field(default=None, metadata={
        "help": "Longest segment in tokens; longer texts are split into near-equal segments, each with m slots "
                "(default: " + ", ".join(f"{s.name} {s.defaults['segment_tokens']}" for s in SPACES.values())
                + "; a trained writer: what its positions hold)."})
    steps: int | None = field(default=None, metadata={
        "help": "Most optimisation steps per segment (it stops earlier once the stopping test passes) "
                "(default: 400; 40 for --objective distill; a trained writer runs exactly its K)."})
    lr: float | None = field(default=None, metadata={
        "help": "Peak learning rate (default: " + ", ".join(f"{s.name} {s.defaults['lr']}" for s in SPACES.values())
                + "; a trained writer's alpha)."})
    optimizer: str | None = field(default=None, metadata={
        "help": "adam (betas 0.9/0.9, as in Cramming) or sgd (plain SGD, the paper's inner-loop rule) "
                "(default: adam; a trained writer: sgd, or forward for an RMT writer)."})
    betas: tuple[float, float] = field(default=(0.9, 0.9), metadata={"help": "Adam's betas.", "cli": False})
    schedule: str | None = field(default=None, metadata={
        "help": "cosine: linear warm-up, then cosine decay to 0 at --steps; constant: --lr throughout "
                "(default: " + ", ".join(f"{s.name} {s.defaults['schedule']}" for s in SPACES.values())
                + "; constant for a trained writer)."})
    cycle: int | None = field(default=None, metadata={
        "help": "Cosine only: the rate warms up and decays to 0 over this many steps, then starts again from the "
                "peak (warm restarts) until the stopping test passes or --steps run out; 0 = one decay over --steps. "
                "A short decay settles most segments sooner; the restarts keep hard ones going "
                "(default: 150 per 64 --segment-tokens: 150 at 64, 300 at 128)."})
    warmup: float = field(default=0.03, metadata={
        "help": "Warm-up length as a fraction of a cycle (of --steps with --cycle 0; cosine only)."})
    init: str | None = field(default=None, metadata={
        "help": "Initial memory: tokens = the embeddings of the segment's first m tokens (cycled if shorter); "
                "random = Gaussian noise with the std of the embedding matrix (Cramming); fitted = a start fitted "
                "on many texts for this model (gradmem fit-start; see --start); learned = a trained writer's M0 and "
                "its trained write rule, no stopping test (default: fitted where gradmem ships a start for the model "
                "and m (reconstruct only), else tokens; learned for a trained writer)."})
    start: str | None = field(default=None, metadata={
        "help": "A start file written by gradmem fit-start, for --init fitted (default: the start gradmem ships "
                "for the model, if any). A .gmem records the start's sha256, not its path."})
    target_acc: float = field(default=1.0, metadata={"help": "Stop once teacher-forced token accuracy reaches this."})
    margin: float = field(default=1.0, metadata={
        "help": "At --target-acc 1, also require every token's logit to beat the runner-up by this much, so that "
                "greedy decoding (whose arithmetic differs slightly) rebuilds the text exactly."})
    seed: int = field(default=0, metadata={"help": "Seeds the random initial memory."})
    batch_tokens: int = field(default=2048, metadata={
        "help": "Tokens optimised together per step (segments of several texts share a batch)."})
    store_dtype: str | None = field(default=None, metadata={
        "help": "How the .gmem stores the slots: float32, float16 or bfloat16. The write optimises the "
                "slots as they will be stored (rounded), so the stopping test holds for the file (default: "
                + ", ".join(f"{s.name} {s.defaults['store_dtype']}" for s in SPACES.values()) + ")."})
    objective: str = field(default="reconstruct", metadata={
        "help": "What the memory is optimised for: " + "; ".join(f"{o.name} = {o.help}" for o in OBJECTIVES.values())
                + "."})
    probes: int = field(default=6, metadata={
        "help": "distill/mix: probes per segment (model-written questions, summary and cloze prompts)."})
    probe_tokens: int = field(default=24, metadata={"help": "distill/mix: most tokens of each teacher answer."})
    distill_weight: float = field(default=1.0, metadata={"help": "mix: weight of the distillation loss."})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> WriteConfig:
        """Check the values that are set (None fields are checked once resolved)."""
        checks = [
            (self.space in (None, *SPACES), f"--space must be one of {', '.join(SPACES)}"),
            (self.mem_tokens is None or self.mem_tokens >= 1, "--mem-tokens must be at least 1"),
            (self.segment_tokens is None or self.segment_tokens >= 1, "--segment-tokens must be at least 1"),
            (self.steps is None or self.steps >= 0, "--steps must be 0 or more"),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)), "--lr must be a positive number"),
            (self.optimizer in (None, *OPTIMIZERS, "forward"), "--optimizer must be adam or sgd"),
            (all(0 <= b < 1 for b in self.betas), "Adam betas must be in [0, 1)"),
            (self.schedule in (None, *SCHEDULES), "--schedule must be cosine or constant"),
            (self.cycle is None or self.cycle >= 0, "--cycle must be 0 or more"),
            (0 <= self.warmup < 1, "--warmup must be in [0, 1)"),
            (self.init in (None, *INITS), "--init must be tokens, random, fitted or learned"),
            (self.start is None or self.init in (None, "fitted"), "--start goes with --init fitted"),
            (0 < self.target_acc <= 1, "--target-acc must be in (0, 1]"),
            (self.margin >= 0 and math.isfinite(self.margin), "--margin must be 0 or more"),
            (self.batch_tokens >= 1, "--batch-tokens must be at least 1"),
            (self.store_dtype in (None, *DTYPES), "--store-dtype must be float32, float16 or bfloat16"),
            (self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}"),
            (self.probes >= 1, "--probes must be at least 1"),
            (self.probe_tokens >= 1, "--probe-tokens must be at least 1"),
            (self.distill_weight >= 0, "--distill-weight must be 0 or more"),
        ]
        return validated(self, checks)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a ``.gmem`` records them. ``start`` appears only when a start was used,
        ``cycle`` only when the schedule restarts and ``space`` only for a memory outside the embedding
        space, so files and stores written before any of them existed still match the settings they
        were written with."""
        values = {f.name: getattr(self, f.name) for f in fields(WriteConfig)}
        for name, absent in (("start", None), ("cycle", 0), ("space", "embed")):
            if values[name] in (absent, None):
                del values[name]
        return values

    def resolve(self, lm: LoadedModel) -> ResolvedWrite:
        """Every None field set to the model's default (see the class docstring), checked against
        the model's window; lower layers take only the result."""
        writer = lm.writer
        init = self.init or ("learned" if writer is not None else "tokens")
        if init != "learned":
            space = SPACES[self.space or self.default_space(lm)]
            self._check_space(lm, space.name)
            plain = {"steps": OBJECTIVES[self.objective].default_steps, "optimizer": "adam", **space.defaults}
            values = {k: v if getattr(self, k) is None else getattr(self, k) for k, v in plain.items()}
            # A longer segment takes more steps to settle: the cycle grows with it (150 at 64 tokens).
            values["cycle"] = (round(CYCLE_STEPS_PER_TOKEN * values["segment_tokens"]) if self.cycle is None
                               else self.cycle)
            if values["optimizer"] == "forward":
                raise UsageError("--optimizer forward is the rule of an RMT writer (--init learned)")
            start = self._start(lm, values["mem_tokens"], space.name)
            init = "fitted" if start is not None else init
            return ResolvedWrite(**{**asdict(self), **values, "space": space.name, "init": init,
                                    "start": start.digest if start is not None else None},
                                 start_weights=start).fits(lm)
        if writer is None:
            raise UsageError("--init learned needs a checkpoint trained by gradmem train (it has no writer)")
        rule = "forward" if writer.cfg.kind == "rmt" else "sgd"
        m = writer.cfg.mem_tokens
        room = lm.window - 2 * m - len(lm.prefix_ids) - 64
        checks = [
            (self.mem_tokens in (None, m), f"--mem-tokens: this writer was trained with {m} memory vectors"),
            (self.optimizer in (None, rule), f"--optimizer: this writer's rule is {rule} "
                                             "(use --init tokens or random for another optimiser)"),
            (self.schedule in (None, "constant"), "--schedule: a trained writer uses a constant rate"),
            (self.objective == "reconstruct", "--objective: a trained writer writes with the objective it was "
                                              "trained on (use --init tokens or random for distill/mix)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.start is not None:
            raise UsageError("--start: a trained writer starts from its own M0")
        if self.space not in (None, "embed"):
            raise UsageError("--space: a trained writer writes embedding memories (--space embed)")
        return ResolvedWrite(**{
            **asdict(self), "space": "embed", "init": init, "mem_tokens": m, "optimizer": rule,
            "schedule": "constant", "cycle": 0, "store_dtype": self.store_dtype or "float32",
            "segment_tokens": self.segment_tokens or max(1, room),
            "steps": writer.cfg.steps if self.steps is None else self.steps,
            "lr": writer.cfg.inner_lr if self.lr is None else self.lr,
        }).fits(lm)

    def default_space(self, lm: LoadedModel) -> str:
        """The space when ``--space`` is not given: the space of the attached reader of memories, if any
        (write what it reads); else kv, unless these settings ask for what only the
        embedding space has (a fitted start, the distill or mix objective), the model is a ``gradmem train``
        checkpoint (its memory projection reads embedding memories) or it cannot hold a prefix cache
        (sliding-window or other non-full attention, no rotary embedding)."""
        if lm.reader is not None and lm.reader.memory_space is not None:
            return lm.reader.memory_space
        wants_embed = (self.objective != "reconstruct" or self.init == "fitted" or self.start is not None
                       or lm.writer is not None)
        return "embed" if wants_embed or SPACES[DEFAULT_SPACE].refusal(lm) else DEFAULT_SPACE

    def _check_space(self, lm: LoadedModel, space: str) -> None:
        """Refuse, before any work, a space this model or these settings cannot write."""
        if space == "embed":
            return
        reason = SPACES[space].refusal(lm)
        if reason:
            raise UsageError(f"--space {space}: '{lm.spec}' cannot hold such a memory: {reason}")
        if self.objective != "reconstruct":
            raise UsageError(f"--objective {self.objective} writes embedding memories only (--space embed)")

    def _start(self, lm: LoadedModel, mem_tokens: int, space: str) -> Start | None:
        """The start of a fitted write: ``--start``, else the shipped start for this model and m when
        ``--init`` is fitted or (for reconstruction) left to its default; None for other inits."""
        from gradmem_cli.writers.start import load_start, shipped_start

        if space != "embed":
            if self.init == "fitted" or self.start is not None:
                raise UsageError(f"--init fitted: fitted starts are for embedding memories (not --space {space})")
            return None
        if self.start is not None:
            return load_start(self.start, lm, mem_tokens)
        if self.init == "fitted" or (self.init is None and self.objective == "reconstruct"):
            start = shipped_start(lm, mem_tokens)
            if start is None and self.init == "fitted":
                raise UsageError(f"--init fitted needs --start FILE: gradmem ships no start for this model "
                                 f"with {mem_tokens} memory vectors (gradmem fit-start makes one)")
            return start
        return None


@dataclass(frozen=True)
class ResolvedWrite(WriteConfig):
    """A :class:`WriteConfig` with every field set for one model: what writers receive. ``start``
    holds the digest of the start used (``--init fitted``), and ``start_weights`` the start itself."""

    start_weights: Start | None = field(default=None, compare=False, repr=False)

    def fits(self, lm: LoadedModel) -> ResolvedWrite:
        """Refuse sizes the model's window cannot hold, before any work (a write would fail or crawl)."""
        used = len(lm.prefix_ids) + self.mem_tokens + len(SPACES[self.space].lead_ids(lm)) + self.segment_tokens
        if used > lm.window:
            raise UsageError(f"--mem-tokens {self.mem_tokens} + --segment-tokens {self.segment_tokens} do not fit "
                             f"the model's window of {lm.window} positions")
        if self.objective != "reconstruct" and self.probe_tokens >= lm.window:
            raise UsageError(f"--probe-tokens must be below the model's window of {lm.window}")
        return self

    def lr_at(self, step: int) -> float:
        """The learning rate of optimisation step ``step`` (warm-up and cycles apply to cosine only)."""
        if self.schedule != "cosine" or not self.steps:
            return lr_at(step, self.lr, self.steps, 0, self.schedule)
        cycle = self.cycle if self.cycle and self.cycle < self.steps else 0
        warmup = max(1, round(self.warmup * (cycle or self.steps)))
        return lr_at(step, self.lr, self.steps, warmup, self.schedule, cycle)

