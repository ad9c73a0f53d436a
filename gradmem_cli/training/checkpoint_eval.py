"""Teacher-forced EM of a trained checkpoint: during training, and for ``gradmem train-eval``'s
table of EM against the number of write steps at read time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gradmem_cli.errors import UsageError
from gradmem_cli.tasks import get_task
from gradmem_cli.tasks.base import Example, Options, Task
from gradmem_cli.tasks.kv import load_kv
from gradmem_cli.training.model import MetaModel, encode, length_batches, scores


@torch.no_grad()
def teacher_forced_em(model: MetaModel, tokenizer: Any, task: Task, samples: list[Example], batch_size: int,
                      device: torch.device, steps: int | None = None, inner_lr: float | None = None
                      ) -> dict[str, float]:
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
            batch = encode(tokenizer, task, group).to(device)
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


def steps_table(model_dir: str, pairs: int = 8, data: Path | None = None, steps: list[int] | None = None,
                samples: int = 1000, seed: int = 12345, batch_size: int = 250, device: str = "auto",
                dtype: str = "float32") -> list[dict[str, Any]]:
    """EM of a checkpoint on kv samples for each write step count K_eval (one row per K_eval).

    The checkpoint is loaded the way ``gradmem write`` loads it (``load_model``). A full-context
    checkpoint (no writer) gives one row, with the context in its input.
    """
    from gradmem_cli.lm.loading import load_model

    lm = load_model(model_dir, device=device, dtype=dtype, quiet=True)
    if data is not None:
        items = load_kv(data)
    else:
        if pairs < 1 or samples < 1:
            raise UsageError("--pairs and --samples must be at least 1")
        items = get_task("kv").load(None, samples, seed, Options(pairs=pairs)).examples
    model = MetaModel(lm.model, lm.writer, lm.prefix_ids).to(lm.device)
    counts: list[int | None] = [None] if lm.writer is None else (steps or [lm.writer.cfg.steps])
    rows = []
    for k in counts:
        result = teacher_forced_em(model, lm.tokenizer, get_task("kv"), items, batch_size, lm.device, steps=k)
        rows.append({"steps": k, **result})
    return rows
