"""Meta-training: the gradient through the WRITE loop, grad modes, attention, resume, the tiny run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from gradmem_cli.cli.commands import _parse_steps
from gradmem_cli.training import config as training_config
from gradmem_cli.training import loop as training
from gradmem_cli.training import model as metamodel
from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.tasks import get_task, kv
from gradmem_cli.tasks.base import Options
from gradmem_cli.lm.learned import write_memory

KV_TASK = get_task("kv")

# A model small enough that float64 finite differences and 20-step runs take seconds.
TINY = {"layers": 1, "hidden": 16, "heads": 2, "ffn": 32, "mem_tokens": 2, "pairs": 1, "batch_size": 4,
        "eval_samples": 16, "eval_batch_size": 16, "warmup_steps": 0, "log_every": 1, "threads": 1}


def tiny_config(tmp_path, **changes) -> training_config.TrainConfig:
    return training_config.TrainConfig(**{"out": str(tmp_path / "run"), **TINY, **changes}).validate()


def _model(cfg: training_config.TrainConfig, dtype=torch.float64):
    model, tokenizer = metamodel.build(cfg, torch.device("cpu"))
    model.to(dtype)
    batch = metamodel.encode(tokenizer, KV_TASK, KV_TASK.load(None, 3, 1, Options(pairs=cfg.pairs)).examples)
    return model, batch


def _outer_grads(model, batch, grad_mode: str) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss, _, _ = model(batch, grad_mode=grad_mode)
    loss.backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


def test_second_order_meta_gradient_matches_finite_differences(tmp_path):
    """The float64 model's central differences agree with the second-order meta-gradient (to the
    float32 noise of HF's RMSNorm, which computes in float32), and the first-order one does not."""
    cfg = tiny_config(tmp_path, inner_steps=2, inner_lr=0.5)
    model, batch = _model(cfg)
    second = _outer_grads(model, batch, "second")
    first = _outer_grads(model, batch, "first")
    params = dict(model.named_parameters())
    off_first = []
    for name in ("writer.m0", "writer.write_head.weight", "lm.model.layers.0.self_attn.q_proj.weight",
                 "lm.model.embed_tokens.weight"):
        flat = params[name].view(-1)
        for index in torch.topk(second[name].reshape(-1).abs(), 2).indices.tolist():
            eps, values = 1e-3, []
            for sign in (1, -1):
                with torch.no_grad():
                    flat[index] += sign * eps
                values.append(model(batch, grad_mode="none")[0].item())
                with torch.no_grad():
                    flat[index] -= sign * eps
            numeric = (values[0] - values[1]) / (2 * eps)
            assert abs(numeric - second[name].reshape(-1)[index].item()) <= 0.02 * abs(numeric), name
            if name in ("writer.m0", "lm.model.layers.0.self_attn.q_proj.weight"):
                off_first.append(abs(numeric - first[name].reshape(-1)[index].item()) > 0.05 * abs(numeric))
    assert all(off_first)


def test_grad_modes_differ_as_documented(tmp_path):
    cfg = tiny_config(tmp_path, inner_steps=2, inner_lr=0.5)
    model, batch = _model(cfg)
    none, first, second = (_outer_grads(model, batch, mode) for mode in ("none", "first", "second"))
    # none: M0 and the write head get nothing; the backbone learns through READ only.
    assert none["writer.m0"] is None and none["writer.write_head.weight"] is None
    # first: M_K = M0 - alpha * sum(g) with g constant, so dL/dM0 = sum over the batch of dL/dM_K;
    # the write head gets nothing (it only shapes g).
    trace = write_memory(model.mlm, model.writer, batch.ctx, batch.ctx_mask, grad_mode="none")
    memory = trace.memory.clone().requires_grad_(True)
    logits = model.mlm.forward(memory, batch.read)
    read_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1))
    (d_memory,) = torch.autograd.grad(read_loss, memory)
    assert torch.allclose(first["writer.m0"], d_memory.sum(0))
    assert first["writer.write_head.weight"] is None
    # second: the write head and the backbone are also trained through the inner gradients.
    assert second["writer.write_head.weight"].abs().sum() > 0
    assert not torch.allclose(second["writer.m0"], first["writer.m0"])
    q = "lm.model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(none[q], first[q])  # the READ path is the same; first adds nothing to weights
    assert not torch.allclose(second[q], first[q])


def test_eager_attention_has_double_backward_and_sdpa_does_not(tmp_path):
    """Training builds the backbone with eager attention (plain matmul/softmax), which autograd can
    differentiate twice; torch's CPU SDPA kernel cannot, which is why training does not use it."""
    cfg = tiny_config(tmp_path)
    model, batch = _model(cfg, dtype=torch.float32)
    assert model.lm.config._attn_implementation == "eager"
    loss, _, _ = model(batch, grad_mode="second")
    loss.backward()
    assert model.lm.model.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0
    model.lm.set_attn_implementation("sdpa")
    model.zero_grad()
    with pytest.raises(RuntimeError, match="derivative"):
        model(batch, grad_mode="second")[0].backward()


def _params(folder):
    from safetensors.torch import load_file

    return {**load_file(str(folder / "model.safetensors")), **load_file(str(folder / "gradmem_writer.safetensors"))}


def test_resume_gives_identical_next_steps(tmp_path):
    straight = tiny_config(tmp_path / "a", max_steps=6, eval_every=3, lr=3e-3)
    training.train(straight)
    first_half = tiny_config(tmp_path / "b", max_steps=3, eval_every=3, lr=3e-3)
    assert training.train(first_half).step == 3
    resumed = training.train(tiny_config(tmp_path / "b", max_steps=6, eval_every=3, lr=3e-3), resume=True)
    assert resumed.step == 6
    a = _params(tmp_path / "a" / "run" / "checkpoints" / "step-00000006" / "model")
    b = _params(tmp_path / "b" / "run" / "checkpoints" / "step-00000006" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [[json.loads(x).get("loss") for x in log if "eval" not in x] for log in (log_a, log_b)]
    assert losses[0] == losses[1]
    assert "resumed" in (tmp_path / "b" / "run" / "train.log").read_text()


def test_resume_refuses_changed_settings(tmp_path):
    training.train(tiny_config(tmp_path, max_steps=1, eval_every=1))
    with pytest.raises(GradmemError, match="holds a gradmem train run: pass --resume"):
        training.train(tiny_config(tmp_path, max_steps=2, eval_every=1))
    with pytest.raises(UsageError, match="inner_lr"):
        training.train(tiny_config(tmp_path, max_steps=2, eval_every=1, inner_lr=0.3), resume=True)


def test_twenty_step_run_lowers_the_outer_loss(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=20, eval_every=10, lr=1e-2)
    result = training.train(cfg)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "eval" not in r]
    assert len(losses) == 20 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert result.step == 20 and (tmp_path / "run" / "best" / "gradmem_writer.json").is_file()


def test_batches_are_a_function_of_step():
    cfg = training_config.TrainConfig(batch_size=3)
    assert training.train_samples(cfg, 7, 0, 4) == training.train_samples(cfg, 7, 0, 4)
    assert training.train_samples(cfg, 7, 0, 4) != training.train_samples(cfg, 8, 0, 4)
    assert training.train_samples(cfg, 7, 0, 4) != training.train_samples(cfg, 7, 1, 4)
    # Separate streams even where the seeds coincide: the held-out draw is not the training draw.
    same_seeds = training_config.TrainConfig(batch_size=3, seed=5, eval_seed=5, eval_samples=3)
    held_out = [s.context for s in training.eval_samples(same_seeds, 1)]
    assert held_out != [s.context for s in training.train_samples(same_seeds, 0, 0, 1)]


def test_exact_match_counts_only_the_value(tmp_path):
    from gradmem_cli.training.chartok import build_char_tokenizer

    tok = build_char_tokenizer()
    batch = metamodel.encode(tok, KV_TASK, [KV_TASK.train_example(random.Random(0), Options(pairs=2))])
    logits = torch.zeros(*batch.read.shape, len(tok))
    logits.scatter_(2, batch.read[..., None], 1.0)
    wrong_tail = logits.clone()
    wrong_tail[0, -1] = 0
    wrong_tail[0, -1, (batch.read[0, -1] + 1) % len(tok)] = 1.0  # the closing "|" mispredicted: still an exact match
    assert metamodel.scores(wrong_tail, batch)["em"].item() == 1.0
    wrong_value = logits.clone()
    wrong_value[0, 5] = 0
    wrong_value[0, 5, (batch.read[0, 5] + 1) % len(tok)] = 1.0
    assert metamodel.scores(wrong_value, batch)["em"].item() == 0.0
    assert batch.scored.sum().item() == kv.VALUE_CHARS and (batch.labels != -100).sum().item() == 4


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pairs: 16\ncurriculum: [4, 8]\ninner_lr: 0.1\n")
    cfg = training_config.load_config(path, ["inner_steps=5", "lr=1e-4", "out=runs/x", "inner_lr=1"])
    assert (cfg.pairs, cfg.curriculum, cfg.inner_steps, cfg.lr, cfg.out, cfg.inner_lr) == (
        16, [4, 8], 5, 1e-4, "runs/x", 1.0)
    with pytest.raises(UsageError, match="unknown field"):
        path.write_text("pairz: 3\n")
        training_config.load_config(path)
    with pytest.raises(UsageError, match="pairs must be int"):
        training_config.load_config(None, ["pairs=many"])
    with pytest.raises(UsageError, match="curriculum"):
        training_config.load_config(None, ["curriculum=[8, 4]", "pairs=16"])


def test_parse_steps():
    assert _parse_steps("1-4") == [1, 2, 3, 4]
    assert _parse_steps("1,5") == [1, 5]
    with pytest.raises(UsageError):
        _parse_steps("a-b")


def test_warm_start_from_a_checkpoint(tmp_path):
    training.train(tiny_config(tmp_path / "a", max_steps=2, eval_every=2, lr=1e-2))
    source = tmp_path / "a" / "run" / "best"
    cfg = tiny_config(tmp_path / "b", max_steps=1, eval_every=1, init_from=str(source), pairs=2)
    model, _ = metamodel.build(cfg, torch.device("cpu"))
    metamodel.load_model_weights(model, source)
    assert torch.equal(model.writer.m0, _params(source)["m0"])
    assert training.train(cfg).step == 1
    assert "weights from" in (tmp_path / "b" / "run" / "train.log").read_text()


def test_torchrun_two_processes(tmp_path):
    """Data-parallel training (gloo on CPU here; NCCL on GPUs): gradients are averaged over processes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    args = [f"{k}={v}" for k, v in {**TINY, "max_steps": 2, "eval_every": 2, "out": tmp_path / "run"}.items()]
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "gradmem_cli", "train", *sum((["--set", a] for a in args), [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "processes 2" in log and "stopped at step 2" in log
    summary = json.loads((tmp_path / "run" / "best" / "gradmem_writer.json").read_text())["training"]
    assert summary["batch_size"] == 2 * TINY["batch_size"]


def test_babi_trains_through_the_registry(tmp_path, tiny_chat_model):
    """A pretrained backbone meta-trained on bAbI stories: the task comes from the registry, held-out
    stories from the evaluation stream, and the outer loss falls on a few repeated steps."""
    cfg = training_config.TrainConfig(out=str(tmp_path / "babi"), task="babi", variant="qa1", backbone=tiny_chat_model,
                                      mem_tokens=2, inner_steps=1, inner_lr=0.1, batch_size=2, eval_samples=4,
                                      eval_batch_size=4, max_steps=3, eval_every=3, warmup_steps=0, log_every=1,
                                      threads=1, lr=1e-3).validate()
    batch = training.train_samples(cfg, 0, 0, cfg.pairs)
    assert all(ex.answers[0] in ex.context for ex in batch)
    held_out = training.eval_samples(cfg, cfg.pairs)
    assert [ex.context for ex in held_out] == [ex.context for ex in get_task("babi").load(None, 4, cfg.eval_seed,
                                                                                          Options(variant="qa1")).examples]
    result = training.train(cfg)
    assert result.step == 3 and (tmp_path / "babi" / "best" / "gradmem_writer.json").is_file()
    with pytest.raises(UsageError, match="kv only"):
        training_config.TrainConfig(task="babi", curriculum=[2]).validate()
