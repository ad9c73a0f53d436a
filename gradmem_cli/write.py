"""WRITE: optimise memory vectors by gradient descent so a frozen LM reproduces a text.

For each segment t_1..t_N the model sees ``[prefix; M; t_1..t_N]`` (prefix = the tokenizer's BOS,
if it adds one) and the loss is the next-token cross-entropy of the text, the last memory slot
predicting t_1, averaged over the segment's tokens. Only ``M`` is optimised; the model's weights
are frozen. Segments of one or many documents are optimised together in batches; a segment
leaves its batch as soon as it meets the stopping test, and a waiting one takes its place.

A checkpoint trained by ``gradmem train`` carries a learned writer (``lm.writer``); by default
its memories are written the way it was trained (``init = "learned"``): from its M0, exactly K
plain SGD steps of rate alpha on its write head's loss (or K forward passes for an RMT writer).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from gradmem_cli.errors import UsageError
from gradmem_cli.distill import ProbeSet, build_probes, distill_stats
from gradmem_cli.memfile import STORE_DTYPES
from gradmem_cli.models import LoadedModel
from gradmem_cli.read import memory_prefix
from gradmem_cli.writer import write_logits, write_memory

OBJECTIVES = ("reconstruct", "distill", "mix")


@dataclass
class WriteConfig:
    """Settings of a WRITE; every field is recorded in the ``.gmem`` it produces and, unless marked
    ``cli: False``, is a ``gradmem write`` / ``gradmem eval`` option of the same name.

    Fields left at None take the model's default (:meth:`resolve`): the value in brackets in their
    help for a plain LM, the trained writer's own for a ``gradmem train`` checkpoint.
    """

    mem_tokens: int | None = field(default=None, metadata={
        "help": "m: memory vectors per segment [8; a trained writer's m]."})
    segment_tokens: int | None = field(default=None, metadata={
        "help": "Longest segment in tokens; longer texts are split into near-equal segments, each with m vectors "
                "[64; a trained writer: what its positions hold]."})
    steps: int | None = field(default=None, metadata={
        "help": "Most optimisation steps per segment (it stops earlier once the stopping test passes) "
                "[400; 40 for --objective distill; a trained writer runs exactly its K]."})
    lr: float | None = field(default=None, metadata={"help": "Peak learning rate [0.05; a trained writer's alpha]."})
    optimizer: str | None = field(default=None, metadata={
        "help": "adam (betas 0.9/0.9, as in Cramming) or sgd (plain SGD, the paper's inner-loop rule) "
                "[adam; a trained writer: sgd, or forward for an RMT writer]."})
    betas: tuple[float, float] = field(default=(0.9, 0.9), metadata={"help": "Adam's betas.", "cli": False})
    schedule: str | None = field(default=None, metadata={
        "help": "cosine: linear warm-up, then cosine decay to 0 at --steps; constant: --lr throughout "
                "[cosine; constant for a trained writer]."})
    warmup: float = field(default=0.1, metadata={"help": "Warm-up length as a fraction of --steps (cosine only)."})
    init: str | None = field(default=None, metadata={
        "help": "Initial memory: tokens = the embeddings of the segment's first m tokens (cycled if shorter); "
                "random = Gaussian noise with the std of the embedding matrix (Cramming); learned = a trained "
                "writer's M0 and its trained write rule, no stopping test [tokens; learned for a trained writer]."})
    target_acc: float = field(default=1.0, metadata={"help": "Stop once teacher-forced token accuracy reaches this."})
    margin: float = field(default=1.0, metadata={
        "help": "At --target-acc 1, also require every token's logit to beat the runner-up by this much, so that "
                "greedy decoding (whose arithmetic differs slightly) rebuilds the text exactly."})
    seed: int = field(default=0, metadata={"help": "Seeds the random initial memory."})
    batch_tokens: int = field(default=2048, metadata={
        "help": "Tokens optimised together per step (segments of several texts share a batch)."})
    store_dtype: str = field(default="float32", metadata={
        "help": "How the .gmem stores the vectors: float32, float16 or bfloat16. The write optimises the "
                "vectors as they will be stored (rounded), so the stopping test holds for the file."})
    objective: str = field(default="reconstruct", metadata={
        "help": "What the memory is optimised for: reconstruct = next-token loss of the text (stops at "
                "--target-acc/--margin); distill = the model with [memory; probe] answers like the model with "
                "[text; probe] (stops once greedy decoding agrees with the teacher's answers at --target-acc); "
                "mix = both (stops when both pass)."})
    probes: int = field(default=6, metadata={
        "help": "distill/mix: probes per segment (model-written questions, summary and cloze prompts)."})
    probe_tokens: int = field(default=24, metadata={"help": "distill/mix: most tokens of each teacher answer."})
    distill_weight: float = field(default=1.0, metadata={"help": "mix: weight of the distillation loss."})

    def validate(self) -> WriteConfig:
        """Check the values that are set (None fields are checked once resolved)."""
        checks = [
            (self.mem_tokens is None or self.mem_tokens >= 1, "--mem-tokens must be at least 1"),
            (self.segment_tokens is None or self.segment_tokens >= 1, "--segment-tokens must be at least 1"),
            (self.steps is None or self.steps >= 0, "--steps must be 0 or more"),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)), "--lr must be a positive number"),
            (self.optimizer in (None, "adam", "sgd", "forward"), "--optimizer must be adam or sgd"),
            (all(0 <= b < 1 for b in self.betas), "Adam betas must be in [0, 1)"),
            (self.schedule in (None, "cosine", "constant"), "--schedule must be cosine or constant"),
            (0 <= self.warmup < 1, "--warmup must be in [0, 1)"),
            (self.init in (None, "tokens", "random", "learned"), "--init must be tokens, random or learned"),
            (0 < self.target_acc <= 1, "--target-acc must be in (0, 1]"),
            (self.margin >= 0 and math.isfinite(self.margin), "--margin must be 0 or more"),
            (self.batch_tokens >= 1, "--batch-tokens must be at least 1"),
            (self.store_dtype in STORE_DTYPES, "--store-dtype must be float32, float16 or bfloat16"),
            (self.objective in OBJECTIVES, "--objective must be reconstruct, distill or mix"),
            (self.probes >= 1, "--probes must be at least 1"),
            (self.probe_tokens >= 1, "--probe-tokens must be at least 1"),
            (self.distill_weight >= 0, "--distill-weight must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def resolve(self, lm: LoadedModel) -> WriteConfig:
        """A copy with every None field set to the model's default (see the class docstring)."""
        writer = lm.writer
        init = self.init or ("learned" if writer is not None else "tokens")
        if init != "learned":
            # distill rarely reaches full agreement with the teacher, so its step count is its budget:
            # 40 steps of 6 probes x 24 tokens is the setting measured in README ("Objectives").
            plain = {"mem_tokens": 8, "segment_tokens": 64, "steps": 40 if self.objective == "distill" else 400,
                     "lr": 0.05, "optimizer": "adam", "schedule": "cosine"}
            values = {k: v if getattr(self, k) is None else getattr(self, k) for k, v in plain.items()}
            if values["optimizer"] == "forward":
                raise UsageError("--optimizer forward is the rule of an RMT writer (--init learned)")
            return replace(self, init=init, **values).validate().fits(lm)
        if writer is None:
            raise UsageError("--init learned needs a checkpoint trained by gradmem train (it has no writer)")
        rule = "forward" if writer.cfg.kind == "rmt" else "sgd"
        m = writer.cfg.mem_tokens
        room = int(getattr(lm.model.config, "max_position_embeddings", 2048)) - 2 * m - len(lm.prefix_ids) - 64
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
        return replace(
            self, init=init, mem_tokens=m, optimizer=rule, schedule="constant",
            segment_tokens=self.segment_tokens or max(1, room),
            steps=writer.cfg.steps if self.steps is None else self.steps,
            lr=writer.cfg.inner_lr if self.lr is None else self.lr,
        ).validate().fits(lm)

    def fits(self, lm: LoadedModel) -> WriteConfig:
        """Refuse sizes the model's window cannot hold, before any work (a write would fail or crawl)."""
        used = len(lm.prefix_ids) + self.mem_tokens + self.segment_tokens
        if used > lm.window:
            raise UsageError(f"--mem-tokens {self.mem_tokens} + --segment-tokens {self.segment_tokens} do not fit "
                             f"the model's window of {lm.window} positions")
        if self.objective != "reconstruct" and self.probe_tokens >= lm.window:
            raise UsageError(f"--probe-tokens must be below the model's window of {lm.window}")
        return self

    def lr_at(self, step: int) -> float:
        if self.schedule == "constant" or self.steps == 0:
            return self.lr
        warm = max(1, round(self.warmup * self.steps))
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = (step - warm) / max(1, self.steps - warm)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class SegmentResult:
    """A written segment: its memory [m, d] (in the storage dtype) and how the write went."""

    index: int
    tokens: int
    memory: torch.Tensor
    steps: int  # optimisation steps run
    kept_step: int  # the step whose memory is kept: the solving step, else the best one seen
    loss: float
    accuracy: float
    margin: float
    solved: bool


@dataclass
class StepStats:
    """Progress of one segment after a forward pass (passed to the progress callback)."""

    index: int
    step: int
    loss: float
    accuracy: float
    done: bool


class _Segment:
    """Optimisation state of one segment: its memory parameter and the best memory seen."""

    def __init__(self, index: int, ids: list[int], memory: torch.Tensor, store: torch.dtype):
        self.index = index
        self.ids = ids
        self.store = store
        self.param = torch.nn.Parameter(memory)
        self.step = 0
        self.best: tuple[float, float] | None = None
        self.best_result: SegmentResult | None = None

    def stored(self) -> torch.Tensor:
        """The memory as the file will hold it; gradients pass straight through the rounding."""
        if self.store == torch.float32:
            return self.param
        return self.param + (self.param.detach().to(self.store).float() - self.param.detach())

    def record(self, loss: float, acc: float, margin: float, solved: bool) -> None:
        key = (acc, -loss)
        if self.best is None or key > self.best or solved:
            self.best = key
            self.best_result = SegmentResult(
                self.index, len(self.ids), self.param.detach().to("cpu", self.store), self.step, self.step, loss, acc, margin,
                solved,
            )


def initial_memory(lm: LoadedModel, ids: list[int], cfg: WriteConfig, generator: torch.Generator) -> torch.Tensor:
    """The documented starting point M0 of a segment's memory (see ``WriteConfig.init``)."""
    cfg = cfg.resolve(lm)
    weight = lm.model.get_input_embeddings().weight.detach()
    if cfg.init == "random":
        std = weight.float().std().item()
        noise = torch.randn(cfg.mem_tokens, weight.shape[1], generator=generator) * std
        return noise.to(weight.device)
    cycled = [ids[i % len(ids)] for i in range(cfg.mem_tokens)]
    return weight[torch.tensor(cycled, device=weight.device)].float().clone()


def token_stats(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """Per-row mean cross-entropy, token accuracy and minimum logit margin over real tokens."""
    logits = logits.float()
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    real = mask.float()
    counts = real.sum(1).clamp(min=1)
    loss = (ce * real).sum(1) / counts
    with torch.no_grad():
        gold = logits.gather(2, targets.unsqueeze(-1)).squeeze(-1)
        others = logits.scatter(2, targets.unsqueeze(-1), float("-inf")).amax(2)
        margin = torch.where(mask, gold - others, torch.full_like(gold, float("inf"))).amin(1)
        acc = ((gold > others) & mask).float().sum(1) / counts
    return loss, acc, margin


def memory_forward(lm: LoadedModel, memories: list[torch.Tensor], seqs: list[list[int]]):
    """Logits for every text token of each row of ``[prefix; M_i; t_i]`` (right-padded batch).

    Returns (logits [B, L, V], targets [B, L], mask [B, L]); position j of row i holds the
    prediction of token j from everything before it, the last memory slot predicting token 0.
    """
    targets, mask = _right_padded(lm, seqs)
    embeds = torch.cat([_memory_prefix(lm, memories), lm.embed(targets)], dim=1)
    attention = torch.cat(
        [torch.ones((len(seqs), embeds.shape[1] - targets.shape[1]), dtype=torch.long, device=lm.device),
         mask.long()], dim=1
    )
    out = lm.model(inputs_embeds=embeds, attention_mask=attention, logits_to_keep=targets.shape[1] + 1,
                   use_cache=False)
    return out.logits[:, :-1], targets, mask


def _right_padded(lm: LoadedModel, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] right-padded to the longest row, and the mask of real tokens."""
    longest = max(len(s) for s in seqs)
    pad_id = lm.prefix_ids[0] if lm.prefix_ids else 0
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long, device=lm.device)
    mask = torch.zeros((len(seqs), longest), dtype=torch.bool, device=lm.device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def _memory_prefix(lm: LoadedModel, memories: list[torch.Tensor]) -> torch.Tensor:
    """Input embeddings ``[prefix; M_i]`` for each memory, as READ builds them (:func:`memory_prefix`)."""
    return torch.cat([memory_prefix(lm, m) for m in memories])


def shared_prompt_forward(lm: LoadedModel, memories: list[torch.Tensor], owner: list[int], seqs: list[list[int]],
                          starts: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Logits for the tokens from ``starts[i]`` on of each row ``[prefix; M_owner[i]; seqs[i]]``, running
    the rows' common leading tokens (the chat template's system turn, before the question) once per
    memory instead of once per row.

    Pass 1 runs ``[prefix; M_b; shared]`` for each memory b and keeps its KV cache (with its graph);
    the cache is gathered to the rows and pass 2 runs each row's rest on top of it. Returns the
    logits of pass 2 and, per row, the index in them that predicts token ``starts[i]``; the values
    are those of :func:`memory_forward` on the full rows.
    """
    from transformers import DynamicCache

    shared = min(len(os.path.commonprefix(seqs)), min(starts) - 1)
    head = _memory_prefix(lm, memories)
    if shared:
        common = lm.embed(torch.tensor(seqs[0][:shared], dtype=torch.long, device=lm.device))
        head = torch.cat([head, common.unsqueeze(0).expand(len(memories), -1, -1)], dim=1)
    cache = DynamicCache(config=lm.model.config)
    lm.model(inputs_embeds=head, cache=cache, use_cache=True, logits_to_keep=1)
    cache.reorder_cache(torch.tensor(owner, dtype=torch.long, device=lm.device))
    ids, mask = _right_padded(lm, [s[shared:] for s in seqs])
    attention = torch.cat([torch.ones((len(seqs), head.shape[1]), dtype=torch.long, device=lm.device),
                           mask.long()], dim=1)
    logits = lm.model(inputs_embeds=lm.embed(ids), attention_mask=attention, cache=cache, use_cache=True).logits
    return logits, [start - shared - 1 for start in starts]


def _batches(pending: deque, active: list[_Segment], budget: int, cost: Callable[[_Segment], int]) -> None:
    """Move waiting segments into the active batch while the token budget allows (at least one)."""
    used = sum(cost(s) for s in active)
    while pending and (not active or used + cost(pending[0]) <= budget):
        seg = pending.popleft()
        active.append(seg)
        used += cost(seg)


def _objective_stats(lm: LoadedModel, cfg: WriteConfig, active: list[_Segment], probes: dict[int, ProbeSet]):
    """Per-segment loss, accuracy and margin of the batch under the configured objective.

    reconstruct: cross-entropy of the text, token accuracy, smallest logit margin. distill: KL to the
    teacher over the probe answers, greedy agreement with the teacher, no margin (inf). mix: the sum
    of the losses; the accuracy is the smaller one.
    """
    memories = [s.stored() for s in active]
    loss = acc = margin = None
    if cfg.objective in ("reconstruct", "mix"):
        logits, targets, mask = memory_forward(lm, memories, [s.ids for s in active])
        loss, acc, margin = token_stats(logits, targets, mask)
    if cfg.objective in ("distill", "mix"):
        rows, owner = [], []
        for b, seg in enumerate(active):
            for k in range(len(probes[seg.index].answers)):
                rows.append((probes[seg.index], k))
                owner.append(b)
        kl = torch.zeros(len(active), device=lm.device)
        agree = torch.ones(len(active), device=lm.device)
        if rows:
            seqs = [p.prompts[k] + p.answers[k] for p, k in rows]
            logits, starts = shared_prompt_forward(lm, memories, owner, seqs, [len(p.prompts[k]) for p, k in rows])
            row_kl, row_agree = distill_stats(logits, rows, starts)
            index = torch.tensor(owner, device=lm.device)
            counts = torch.zeros(len(active), device=lm.device).index_add(0, index, torch.ones_like(row_kl))
            kl = torch.zeros(len(active), device=lm.device).index_add(0, index, row_kl) / counts.clamp(min=1)
            agree = torch.where(counts > 0, torch.zeros_like(agree).index_add(0, index, row_agree) / counts.clamp(min=1),
                                agree)
        if loss is None:
            return kl, agree, torch.full_like(kl, float("inf"))
        loss, acc = loss + cfg.distill_weight * kl, torch.minimum(acc, agree)
    return loss, acc, margin


def write_segments(
    lm: LoadedModel,
    segments: list[list[int]],
    cfg: WriteConfig,
    on_step: Callable[[StepStats], None] | None = None,
) -> Iterator[SegmentResult]:
    """Write each segment into its own memory; yields results as segments finish (any order)."""
    cfg = cfg.resolve(lm)
    if any(len(s) == 0 for s in segments):
        raise ValueError("empty segment")
    if cfg.init == "learned":
        yield from _learned_segments(lm, segments, cfg, on_step)
        return
    states = []
    for index, ids in enumerate(segments):
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
        states.append(_Segment(index, ids, initial_memory(lm, ids, cfg, generator), STORE_DTYPES[cfg.store_dtype]))
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam([{"params": [s.param]} for s in states], lr=cfg.lr, betas=cfg.betas)
    else:
        optimizer = torch.optim.SGD([{"params": [s.param]} for s in states], lr=cfg.lr)
    groups = {id(s.param): g for s, g in zip(states, optimizer.param_groups)}
    pending: deque[_Segment] = deque(states)
    active: list[_Segment] = []
    prefix = len(lm.prefix_ids) + cfg.mem_tokens
    probes: dict[int, ProbeSet] = {}

    def cost(seg: _Segment) -> int:
        """Tokens a segment adds to a batch; distillation probes are built (once) when first costed."""
        total = len(seg.ids) + prefix if cfg.objective != "distill" else 0
        if cfg.objective != "reconstruct":
            if seg.index not in probes:
                probes[seg.index] = build_probes(lm, lm.decode(seg.ids), cfg.probes, cfg.probe_tokens)
            total += sum(len(p) + len(a) + prefix for p, a in zip(probes[seg.index].prompts, probes[seg.index].answers))
        return total

    while pending or active:
        _batches(pending, active, cfg.batch_tokens, cost)
        with torch.enable_grad():
            loss, acc, margin = _objective_stats(lm, cfg, active, probes)
        keep, finished = [], []
        for row, seg in enumerate(active):
            lo, a, m = loss[row].item(), acc[row].item(), margin[row].item()
            # For distill, acc is greedy agreement with the teacher's answers and the margin is inf.
            solved = a >= cfg.target_acc - 1e-9 and (cfg.target_acc < 1 or m >= cfg.margin)
            seg.record(lo, a, m, solved)
            done = solved or seg.step >= cfg.steps
            if on_step:
                on_step(StepStats(seg.index, seg.step, lo, a, done))
            (finished if done else keep).append((row, seg))
        if keep:
            optimizer.zero_grad(set_to_none=True)
            rows = torch.tensor([row for row, _ in keep], device=loss.device)
            if loss.requires_grad:  # (not when no distill teacher answered: nothing to learn)
                loss.index_select(0, rows).sum().backward()
            for _, seg in finished:
                seg.param.grad = None
            for _, seg in keep:
                groups[id(seg.param)]["lr"] = cfg.lr_at(seg.step)
                seg.step += 1
            optimizer.step()
        del loss
        active = [seg for _, seg in keep]
        for _, seg in finished:
            seg.best_result.steps = seg.step
            probes.pop(seg.index, None)
            yield seg.best_result
            # Free the optimiser state of a finished segment.
            optimizer.state.pop(seg.param, None)


def _learned_batches(segments: list[list[int]], budget: int, equal_lengths: bool) -> Iterator[list[int]]:
    """Indices of segments to write together: up to ``budget`` tokens, of one length if asked."""
    order = sorted(range(len(segments)), key=lambda i: len(segments[i]))
    batch: list[int] = []
    for i in order:
        full = batch and sum(len(segments[j]) for j in batch) + len(segments[i]) > budget
        if batch and (full or (equal_lengths and len(segments[batch[0]]) != len(segments[i]))):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _learned_segments(
    lm: LoadedModel, segments: list[list[int]], cfg: WriteConfig, on_step: Callable[[StepStats], None] | None,
) -> Iterator[SegmentResult]:
    """The trained write rule: M0, then exactly ``cfg.steps`` SGD steps (or RMT passes), no early stop.

    The memory kept is the last one, M_K, which is what the checkpoint was trained to read; its
    loss and accuracy are those of the write objective at M_K.
    """
    writer = lm.writer
    prefix = lm.embed(torch.tensor(lm.prefix_ids, dtype=torch.long)) if lm.prefix_ids else None
    for rows in _learned_batches(segments, cfg.batch_tokens, equal_lengths=writer.cfg.kind == "rmt"):
        seqs = [segments[i] for i in rows]
        ids = torch.zeros((len(seqs), max(len(x) for x in seqs)), dtype=torch.long, device=lm.device)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for r, x in enumerate(seqs):
            ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = True
        memory = write_memory(lm.model, writer, ids, mask, steps=cfg.steps, inner_lr=cfg.lr, prefix=prefix).memory
        with torch.no_grad():
            loss, acc, margin = token_stats(write_logits(lm.model, writer, memory, ids, mask, prefix), ids, mask)
        for r, index in enumerate(rows):
            lo, a, m = loss[r].item(), acc[r].item(), margin[r].item()
            if on_step:
                on_step(StepStats(index, cfg.steps, lo, a, True))
            stored = memory[r].detach().to("cpu", STORE_DTYPES[cfg.store_dtype])
            yield SegmentResult(index, len(seqs[r]), stored, cfg.steps, cfg.steps, lo, a, m, a >= 1.0)
