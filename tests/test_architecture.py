"""The house rules that keep the code walkable, checked on the source: layers that only import downward,
no import circles, no duplicated code, one place that assembles model inputs, registries that take a new
task or objective without other edits."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST
from gradmem_cli.lm.loading import load_model
from gradmem_cli.lm.memlm import lr_at, pad
from gradmem_cli.lm.spaces.embed import frame

PACKAGE = Path(__file__).resolve().parents[1] / "gradmem_cli"


ROOT = PACKAGE.parent


def test_layers_only_import_downward():
    """The layers contract in pyproject.toml ([tool.importlinter]): no exceptions listed; imports inside
    functions and under TYPE_CHECKING count."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "1 kept, 0 broken" in done.stdout, done.stdout[-3000:] + done.stderr


def test_no_import_circles():
    """No module reaches itself through the package's imports, function-local ones included."""
    import grimp

    graph = grimp.build_graph("gradmem_cli")
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            assert graph.find_shortest_chain(importer=imported, imported=module) is None, (module, imported)


@pytest.mark.full
def test_no_duplicate_code():
    """pylint's duplicate-code check (R0801) over the package: no six-line block twice."""
    done = subprocess.run([sys.executable, "-m", "pylint", "--disable=all", "--enable=duplicate-code",
                           "--min-similarity-lines=6", "gradmem_cli"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-5000:]


def test_model_inputs_are_built_in_one_place():
    """Only the LM layer (and distillation's cached second pass, on embeddings it gets from there)
    hands inputs_embeds to a model; nothing else concatenates memory and embeddings by hand."""
    allowed = {"lm/memlm.py", "lm/spaces/embed.py", "lm/cache.py", "objectives/distill.py"}
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "inputs_embeds=" in p.read_text()}
    assert users <= allowed, users - allowed


def test_forward_aligns_each_position_with_its_token(tiny_chat_model):
    """Position j of MemoryLM.forward predicts token j from [prefix; memory; tokens before j]."""
    lm = load_model(tiny_chat_model, device="cpu")
    memory = torch.randn(2, 3, lm.hidden_size)
    ids, mask = pad([[5, 6, 7, 8], [9, 10]])
    logits = lm.forward(memory, ids, mask)
    for row, n in ((0, 4), (1, 2)):
        embeds = torch.cat([lm.embed(torch.tensor([lm.prefix_ids])), memory[row:row + 1],
                            lm.embed(ids[row:row + 1, :n])], dim=1)
        direct = lm.model(inputs_embeds=embeds).logits[0, -n - 1:-1]
        torch.testing.assert_close(logits[row, :n], direct, atol=1e-4, rtol=1e-4)
    framed = frame(lm, memory[:1], ids[:1], at=2)
    assert framed.shape[1] == len(lm.prefix_ids) + 3 + 4
    torch.testing.assert_close(framed[0, len(lm.prefix_ids) + 2:len(lm.prefix_ids) + 5], memory[0])


def test_learning_rate_schedules():
    assert lr_at(0, 0.1, 100, warmup=10, schedule="cosine") == pytest.approx(0.01)
    assert lr_at(9, 0.1, 100, warmup=10, schedule="cosine") == pytest.approx(0.1)
    assert lr_at(100, 0.1, 100, warmup=10, schedule="cosine") == pytest.approx(0.0)
    assert lr_at(55, 0.1, 100, warmup=10, schedule="constant") == 0.1


# --- registries: a new task or objective is one class and one registry entry -------------------------


def test_a_registered_toy_task_runs_in_eval(run, tiny_model, monkeypatch):
    from gradmem_cli import tasks
    from gradmem_cli.tasks.base import Dataset, Example, Task

    class Echo(Task):
        name = "echo"
        help = "say the word the context names"
        main_metric = "em"
        max_new_tokens = 3

        def examples(self, data, limit, seed, options):
            return Dataset([Example(str(i), f"The word is {w}.", "Which word?", [w])
                            for i, w in enumerate(["fox", "dog"][:limit])], {"generator": "echo"})

    monkeypatch.setitem(tasks.TASKS, "echo", Echo())
    result = run("eval", "echo", "-m", tiny_model, *FAST, "--json", "--limit", "2")
    assert result.code == 0, result.err
    res = json.loads(result.out)
    assert res["task"] == "echo" and res["main_metric"] == "em" and res["n"] == 2
    assert set(res["metrics"]) == {"memory", "no_context", "full_context"}


def test_a_registered_toy_objective_writes(run, tiny_model, tmp_path, monkeypatch):
    from gradmem_cli import objectives
    from gradmem_cli.lm.memlm import token_stats
    from gradmem_cli.memory import memfile
    from gradmem_cli.objectives.base import Objective, Stats

    class FirstHalf(Objective):
        """Reconstruct only the first half of each segment."""

        name = "first-half"
        help = "the first half of the text"

        def cost(self, lm, segment, cfg):
            return len(segment.ids)

        def stats(self, lm, memories, segments, cfg):
            ids, mask = pad([s.ids[: max(1, len(s.ids) // 2)] for s in segments])
            return Stats(*token_stats(lm.forward(memories, ids, mask), ids, mask))

    monkeypatch.setitem(objectives.OBJECTIVES, "first-half", FirstHalf())
    doc = tmp_path / "d.txt"
    doc.write_text("Mira keeps the old lighthouse on Gull Point.")
    out = tmp_path / "d.gmem"
    result = run("write", doc, "-o", out, "-m", tiny_model, *FAST, "--objective", "first-half", "-q")
    assert result.code == 0, result.err
    header = memfile.load(out).header
    assert header.write["objective"] == "first-half" and header.accuracy == [1.0]
