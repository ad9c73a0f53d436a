"""The distillation objective on a tiny chat model: probes from the text, KL falls, files record it."""

import json

from gradmem_cli.memory import memfile
from gradmem_cli.objectives.distill import build_probes, probe_questions, sentences
from gradmem_cli.lm.loading import load_model
from gradmem_cli.engine import write_segments
from gradmem_cli.lm.memlm import pad
from gradmem_cli.objectives.distill import shared_prompt_forward
from gradmem_cli.writers.config import WriteConfig

TEXT = "Mary went to the kitchen. John picked up the apple. The apple is in the garden."


def test_probes_come_from_the_text(tiny_chat_model):
    lm = load_model(tiny_chat_model, device="cpu")
    assert sentences(TEXT) == ["Mary went to the kitchen.", "John picked up the apple.", "The apple is in the garden."]
    questions = probe_questions(lm, TEXT, limit=10)
    assert 'In the text, what comes right after "Mary went to the"?' in questions
    assert "What is the text about?" in questions
    probes = build_probes(lm, TEXT, limit=4, answer_tokens=5)
    assert 1 <= len(probes.answers) <= 4
    for prompt, answer, idx, logp in zip(probes.prompts, probes.answers, probes.top_idx, probes.top_logp):
        assert 1 <= len(answer) <= 5 and idx.shape == logp.shape == (len(answer), 32)
        assert (logp <= 0).all() and (idx[:, 0] == torch_tensor(answer)).all()  # greedy answers = teacher argmax
        # The prompt holds the probe alone: never the text, nor any whole sentence of it (a cloze quotes
        # at most the first four words of one).
        assert not any(sentence in lm.decode(prompt) for sentence in sentences(TEXT))


def torch_tensor(x):
    import torch

    return torch.tensor(x)


def test_shared_prompt_forward_matches_full_rows(tiny_chat_model):
    """Running the probes' common chat-template tokens once per memory gives the full rows' logits
    and gradients."""
    import torch

    lm = load_model(tiny_chat_model, device="cpu")
    probes = build_probes(lm, TEXT, limit=3, answer_tokens=5)
    d = lm.model.get_input_embeddings().weight.shape[1]
    mems = [torch.randn(2, d, generator=torch.Generator().manual_seed(i), requires_grad=True) for i in range(2)]
    owner = [b for b in range(2) for _ in probes.answers]
    seqs = [p + a for _ in range(2) for p, a in zip(probes.prompts, probes.answers)]
    starts = [len(p) for _ in range(2) for p in probes.prompts]
    ids, mask = pad(seqs)
    full = lm.forward(torch.stack([mems[b] for b in owner]), ids, mask)
    shared, index = shared_prompt_forward(lm, torch.stack(mems), owner, seqs, starts)
    assert all(i < s - 1 for i, s in zip(index, starts))  # some prompt tokens were shared
    picks = [(full[i, s:len(q)], shared[i, j:j + len(q) - s]) for i, (q, s, j) in enumerate(zip(seqs, starts, index))]
    for a, b in picks:
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    weights = [torch.randn(a.shape, generator=torch.Generator().manual_seed(9)) for a, _ in picks]
    grads = [torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, side)), mems)
             for side in zip(*picks)]
    for g_full, g_shared in zip(*grads):
        torch.testing.assert_close(g_full, g_shared, atol=1e-4, rtol=1e-3)


def test_distill_lowers_kl(tiny_chat_model):
    lm = load_model(tiny_chat_model, device="cpu")
    losses = []
    cfg = WriteConfig(objective="distill", steps=40, lr=0.3, probes=4, probe_tokens=6)
    (res,) = write_segments(lm, [lm.tokenize(TEXT)], cfg, lambda s: losses.append(s.loss))
    assert res.steps == 40 and not res.solved and res.accuracy < 1.0  # no full agreement yet: runs all steps
    assert min(losses) < 0.7 * losses[0]


def test_distill_stops_on_teacher_agreement(tiny_chat_model):
    """distill stops once greedy decoding agrees with the teacher's answers at --target-acc."""
    lm = load_model(tiny_chat_model, device="cpu")
    cfg = WriteConfig(objective="distill", steps=150, lr=0.3, probes=4, probe_tokens=6, target_acc=0.75)
    (res,) = write_segments(lm, [lm.tokenize(TEXT)], cfg)
    assert res.solved and res.accuracy >= 0.75 and 0 < res.steps < 150 and res.kept_step == res.steps


def test_distill_defaults(tiny_chat_model):
    """A plain model's distill write runs the measured budget (40 steps) unless --steps says otherwise;
    reconstruct and mix keep 400, since their stopping test usually ends them first."""
    lm = load_model(tiny_chat_model, device="cpu")
    assert WriteConfig(objective="distill").resolve(lm).steps == 40
    assert WriteConfig(objective="distill", steps=7).resolve(lm).steps == 7
    assert WriteConfig(objective="mix").resolve(lm).steps == WriteConfig().resolve(lm).steps == 400


def test_mix_objective_cli(run, tiny_chat_model, tmp_path):
    doc = tmp_path / "story.txt"
    doc.write_text(TEXT)
    out = tmp_path / "story.gmem"
    result = run("write", doc, "-o", out, "-m", tiny_chat_model, "--lr", "0.3", "--steps", "20", "--objective", "mix", "--probes", "3",
                 "--probe-tokens", "4", "--json")
    assert result.code == 0, result.err
    header = memfile.load(out).header
    assert header.write["objective"] == "mix" and header.write["probes"] == 3
    assert json.loads(result.out)["files"][0]["steps"][0] > 0
    bad = run("write", doc, "-m", tiny_chat_model, "--objective", "recite")
    assert bad.code == 2 and "--objective" in bad.err
