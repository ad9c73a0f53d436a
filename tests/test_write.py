"""The WRITE loop on a tiny random Llama: loss falls, texts are solved, weights stay frozen."""

import torch

from gradmem_cli.lm.loading import load_model
from gradmem_cli.lm.generate import reconstruct
from gradmem_cli.engine import write_segments
from gradmem_cli.writers.config import ResolvedWrite, WriteConfig
from gradmem_cli.writers.optimizer import initial_memory

TEXT = "Mira Okafor keeps the old lighthouse on Gull Point and writes the weather."


def _results(lm, segments, cfg, on_step=None):
    return sorted(write_segments(lm, segments, cfg, on_step), key=lambda r: r.index)


def test_loss_falls_and_text_is_rebuilt(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    ids = lm.tokenize(TEXT)[:16]
    losses = []
    (res,) = _results(lm, [ids], WriteConfig(space="embed", lr=0.3, steps=300), lambda s: losses.append(s.loss))
    assert res.solved and res.accuracy == 1.0 and res.margin >= 1.0
    assert losses[-1] < 0.5 * losses[0]
    assert res.steps == res.kept_step == len(losses) - 1
    assert reconstruct(lm, res.memory[None], [len(ids)])[0] == ids


def test_weights_frozen_and_unchanged(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    assert not any(p.requires_grad for p in lm.model.parameters())
    _results(lm, [lm.tokenize(TEXT)[:10]], WriteConfig(space="embed", lr=0.3, steps=20))
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batched_and_one_by_one_both_rebuild(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    ids = lm.tokenize(TEXT)
    segments = [ids[:12], ids[12:24], ids[5:15]]
    cfg = WriteConfig(space="embed", lr=0.3, steps=300)
    batched = _results(lm, segments, cfg)
    single = [_results(lm, [s], cfg)[0] for s in segments]
    for results in (batched, single):
        assert all(r.solved for r in results)
        rebuilt = reconstruct(lm, torch.stack([r.memory for r in results]), [len(s) for s in segments])
        assert rebuilt == segments


def test_token_budget_rotates_segments(tiny_model):
    """With room for one segment per batch, the others wait and still get written."""
    lm = load_model(tiny_model, device="cpu")
    ids = lm.tokenize(TEXT)
    segments = [ids[:10], ids[10:20], ids[20:30]]
    batches = []
    results = _results(lm, segments, WriteConfig(space="embed", lr=0.3, steps=300, batch_tokens=1),
                       lambda s: batches.append(s.index))
    assert [r.index for r in results] == [0, 1, 2] and all(r.solved for r in results)
    firsts = [batches.index(i) for i in range(3)]
    assert firsts == sorted(firsts) and batches[: firsts[1]] == [0] * firsts[1]


def test_unsolved_keeps_best_memory(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    ids = lm.tokenize(TEXT)
    accs = []
    (res,) = _results(lm, [ids], WriteConfig(space="embed", lr=0.3, steps=5), lambda s: accs.append(s.accuracy))
    assert not res.solved and res.steps == 5
    assert res.accuracy == max(accs) and accs[res.kept_step] == res.accuracy


def test_initial_memory_choices(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    ids = lm.tokenize(TEXT)[:3]
    gen = torch.Generator().manual_seed(0)
    tokens = initial_memory(lm, ids, WriteConfig(space="embed", init="tokens").resolve(lm), gen)
    emb = lm.model.get_input_embeddings().weight
    assert torch.equal(tokens[3], emb[ids[0]])  # cycled: the 4th vector is token 0 again
    random = initial_memory(lm, ids, WriteConfig(space="embed", init="random").resolve(lm), gen)
    assert random.shape == (8, lm.hidden_size)
    assert abs(random.std().item() - emb.std().item()) < 0.3 * emb.std().item()


def test_bos_prefix_model(tiny_chat_model):
    lm = load_model(tiny_chat_model, device="cpu")
    assert lm.prefix_ids == [lm.tokenizer.bos_token_id]
    ids = lm.tokenize(TEXT)[:12]
    (res,) = _results(lm, [ids], WriteConfig(space="embed", lr=0.3, steps=300))
    assert res.solved
    assert reconstruct(lm, res.memory[None], [len(ids)])[0] == ids


def test_sgd_optimizer_runs(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    losses = []
    _results(lm, [lm.tokenize(TEXT)[:12]], WriteConfig(space="embed", optimizer="sgd", lr=1.0, steps=30),
             lambda s: losses.append(s.loss))
    assert losses[-1] < losses[0]


def test_cosine_schedule():
    cfg = ResolvedWrite(lr=0.1, steps=100, warmup=0.1, schedule="cosine")
    assert cfg.lr_at(0) < cfg.lr_at(9) == 0.1
    assert abs(cfg.lr_at(55) - 0.05) < 1e-9 and cfg.lr_at(100) == 0.0
    assert ResolvedWrite(schedule="constant", lr=0.1, steps=100).lr_at(77) == 0.1


def test_the_cycle_grows_with_the_segment_and_is_recorded_only_when_it_restarts(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    assert WriteConfig(space="embed").resolve(lm).cycle == 150
    assert WriteConfig(space="embed", segment_tokens=128).resolve(lm).cycle == 300
    assert WriteConfig(space="embed").resolve(lm).to_dict()["cycle"] == 150
    # --cycle 0 decays once over --steps, as every file written before cycles existed records it: no key
    assert "cycle" not in WriteConfig(space="embed", cycle=0).resolve(lm).to_dict()


def test_cosine_cycles_restart_until_the_steps_run_out():
    cfg = ResolvedWrite(lr=0.1, steps=300, warmup=0.1, schedule="cosine", cycle=100)
    assert [cfg.lr_at(s) for s in (0, 9, 99)] == [cfg.lr_at(s) for s in (100, 109, 199)]
    assert cfg.lr_at(9) == 0.1 and cfg.lr_at(99) < 1e-4 and cfg.lr_at(100) == cfg.lr_at(0) < 0.1
    # --cycle 0, or a cycle longer than --steps: one decay over --steps, as without cycles
    for cycle in (0, 500):
        one = ResolvedWrite(lr=0.1, steps=300, warmup=0.1, schedule="cosine", cycle=cycle)
        assert one.lr_at(29) == 0.1 and abs(one.lr_at(165) - 0.05) < 1e-9 and one.lr_at(299) < 1e-4
