"""The distillation WRITE objective: memory that makes the model answer as if the text were in its prompt.

A reconstruction memory teaches the model to *recite* the text; asked a question, a frozen model
reading such a memory tends to derail. Here the teacher is the same frozen model with the text in
its prompt, and the memory is trained so that ``[memory; probe]`` gives the teacher's next-token
distributions on the teacher's own answer to ``[text; probe]`` (context distillation, as in
Cartridges, but from probes a CPU can afford). Probes come from the text alone, never from test
questions:

- cloze prompts: for each sentence, "In the text, what comes right after '<its first words>'?";
- "What is the text about?" and "List the names, places, numbers and things the text mentions.";
- questions the model itself writes about the text when it is in its prompt.

The teacher's answers (greedy, up to ``probe_tokens`` tokens) and its top-k log-probabilities at
every answer position are computed once per segment; each optimisation step then costs one
forward/backward of ``[memory; probe; answer]`` per probe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from gradmem_cli.models import LoadedModel
from gradmem_cli.read import Reader, prompt_ids, with_context

TOP_K = 32
QUESTION_PROMPT = "Write three short questions that can be answered from the text above, one per line."


@dataclass
class ProbeSet:
    """The probes of one segment and the teacher's answers to them."""

    prompts: list[list[int]]  # chat-formatted probe prompts, as the memory will be read
    answers: list[list[int]]  # the teacher's answer tokens (with its end-of-turn token when it stopped)
    top_idx: list[torch.Tensor]  # per probe [len(answer), TOP_K]: the teacher's most likely tokens
    top_logp: list[torch.Tensor]  # per probe [len(answer), TOP_K]: their log-probabilities
    questions: list[str]  # the probe texts, for logs and tests


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if len(s.split()) >= 3]


def probe_questions(lm: LoadedModel, text: str, limit: int) -> list[str]:
    """Questions derived from the text alone (see the module docstring), at most ``limit``:
    the model's own questions and the two summary prompts first, then cloze prompts in order."""
    written = Reader(lm, None).answer(with_context(text, QUESTION_PROMPT), max_new_tokens=60).text
    generated = [q.strip(" -*0123456789.") for q in written.splitlines() if q.strip().endswith("?")][:3]
    summary = ["What is the text about?", "List the names, places, numbers and things the text mentions."]
    cloze = []
    for sentence in sentences(text):
        words = sentence.split()
        cloze.append(f'In the text, what comes right after "{" ".join(words[:min(4, len(words) - 1)])}"?')
    return (generated + summary + cloze)[:limit]


def build_probes(lm: LoadedModel, text: str, limit: int, answer_tokens: int) -> ProbeSet:
    """Ask the teacher (text in the prompt) every probe and keep its answer distributions."""
    teacher = Reader(lm, None)
    prefix = teacher.prefix
    out = ProbeSet([], [], [], [], [])
    for question in probe_questions(lm, text, limit):
        answer = teacher.answer(with_context(text, question), max_new_tokens=answer_tokens)
        ids = answer.ids
        if not ids:
            continue
        context = prompt_ids(lm, with_context(text, question))
        seq = torch.tensor([context + ids], device=lm.device)
        embeds = lm.embed(seq)
        if prefix is not None:
            embeds = torch.cat([prefix, embeds], dim=1)
        with torch.no_grad():
            logits = lm.model(inputs_embeds=embeds, logits_to_keep=len(ids) + 1, use_cache=False).logits[0, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        top = logp.topk(TOP_K, dim=-1)
        out.prompts.append(prompt_ids(lm, question))
        out.answers.append(ids)
        out.top_idx.append(top.indices)
        out.top_logp.append(top.values)
        out.questions.append(question)
    return out


def distill_stats(logits: torch.Tensor, rows: list[tuple[ProbeSet, int]], starts: list[int]):
    """Per-row KL(teacher || memory) over the answer positions, and greedy agreement with the teacher.

    ``logits[i, j]`` predicts token j of row i; the answer of row i starts at ``starts[i]``. The KL
    is taken over the teacher's top-k tokens (whose mass is nearly all of it).
    """
    losses, agree = [], []
    for i, (probes, k) in enumerate(rows):
        n = len(probes.answers[k])
        logq = torch.log_softmax(logits[i, starts[i]:starts[i] + n].float(), dim=-1)
        idx, logp = probes.top_idx[k], probes.top_logp[k]
        kl = (logp.exp() * (logp - logq.gather(1, idx))).sum(-1)
        losses.append(kl.mean())
        with torch.no_grad():
            agree.append((logq.argmax(-1) == idx[:, 0]).float().mean())
    return torch.stack(losses), torch.stack(agree)
