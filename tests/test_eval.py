"""The evaluation harness: data loading and its errors, gap_closed, and a tiny end-to-end eval."""

import json

import pytest

from conftest import FAST
from gradmem_cli.errors import GradmemError
from gradmem_cli.evaluation.harness import bootstrap_intervals, f1_to_full_context, gap_closed
from gradmem_cli.tasks.metrics import f1
from gradmem_cli.tasks import babi, get_task
from gradmem_cli.tasks.base import Options


def load(task, data, limit, seed, **options):
    return get_task(task).load(data, limit, seed, Options(**options))


def test_gap_closed():
    m = {"memory": {"f1": 0.5}, "no_context": {"f1": 0.2}, "full_context": {"f1": 0.8}}
    assert gap_closed(m, "f1") == pytest.approx(0.5)
    m["full_context"]["f1"] = 0.2
    assert gap_closed(m, "f1") is None
    m["full_context"]["f1"] = 0.1  # context hurts: no gap, whatever memory scores
    assert gap_closed(m, "f1") is None
    assert gap_closed({"memory": {"f1": 1.0}}, "f1") is None


def test_f1_to_full_context():
    """Scored against the full-context answer, not the gold one: a memory that answers like the text wins."""
    record = {"answers": ["garden"], "memory": {"answer": "Mary is in the kitchen."},
              "full_context": {"answer": "The kitchen."}}
    assert f1_to_full_context(record, "memory") == pytest.approx(0.4)  # "kitchen" of "mary is in kitchen"
    record["memory"]["answer"] = "The garden."
    assert f1_to_full_context(record, "memory") == 0.0


def test_babi_qa1_answer_is_last_location():
    for ex in babi.dataset("qa1", 50, seed=1):
        person = ex["question"].split()[-1].rstrip("?")
        moves = [s for s in ex["context"].split(". ") if s.startswith(person + " ")]
        assert moves[-1].rstrip(".").split()[-1] == ex["answers"][0]


def test_builtin_squad_answers_are_spans():
    ds = load("squad", None, None, seed=0)
    assert len(ds.examples) >= 30
    for ex in ds.examples:
        assert all(a in ex.context for a in ex.answers)
    assert ds.source["builtin"] == "squad_mini.jsonl"


def test_squad_v11_json_is_converted(tmp_path):
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Paris is the capital of France.", "qas": [
            {"id": "q1", "question": "What is the capital of France?",
             "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps(squad))
    (ex,) = load("squad", path, None, seed=0).examples
    assert ex.id == "q1" and ex.answers == ["Paris"] and ex.context.startswith("Paris")


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"context": "c", "question": "q?", "answers": ["a"]}\n\n{"context": "c", "question": "q"}\n')
    with pytest.raises(GradmemError, match=r"qa.jsonl line 3: 'answers'"):
        load("qa", path, None, seed=0)
    path.write_text('{"context": "c", "question": "q?", "answers": ["a"]}\nnot json\n')
    with pytest.raises(GradmemError, match="line 2: not valid JSON"):
        load("qa", path, None, seed=0)
    path.write_text('{"context": "!ab:cd!|", "query": "?!ab:", "target": "cd!|"}\n{"context": "x", "query": "y", "target": "z"}\n')
    with pytest.raises(GradmemError, match="line 2: not in the kv format"):
        load("kv", path, None, seed=0)
    path.write_text('{"text": "hello"}\n{"text": ""}\n')
    with pytest.raises(GradmemError, match="line 2: 'text'"):
        load("recon", path, None, seed=0)


def test_data_errors(tmp_path):
    with pytest.raises(GradmemError, match="no such file"):
        load("qa", tmp_path / "none.jsonl", None, seed=0)
    with pytest.raises(GradmemError, match="unknown task"):
        load("mmlu", None, None, seed=0)
    with pytest.raises(GradmemError, match="--limit"):
        load("kv", None, 0, seed=0)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(GradmemError, match="is empty"):
        load("qa", empty, None, seed=0)


def test_generators_respect_seed_and_limit():
    a = load("kv", None, 5, seed=1, pairs=4).examples
    assert len(a) == 5 and a == load("kv", None, 5, seed=1, pairs=4).examples
    assert a != load("kv", None, 5, seed=2, pairs=4).examples
    assert len(load("babi", None, 7, seed=0, variant="qa3").examples) == 7
    assert len(load("recon", None, 3, seed=0).examples) == 3


def test_tiny_eval_end_to_end(run, tiny_chat_model, tmp_path):
    samples, output = tmp_path / "samples.jsonl", tmp_path / "result.json"
    args = ["eval", "babi", "-m", tiny_chat_model, "--limit", "2", *FAST, "--max-new-tokens", "4",
            "--log-samples", samples, "--output", output, "--json"]
    result = run(*args)
    assert result.code == 0, result.err
    res = json.loads(result.out)
    assert res["task"] == "babi" and res["n"] == 2 and res["main_metric"] == "f1"
    assert set(res["metrics"]) == {"memory", "no_context", "full_context"}
    mem = res["metrics"]["memory"]
    assert {"em", "f1", "em_tf", "contains", "write_steps", "write_seconds", "read_seconds", "write_wall_seconds_per_example"} <= set(mem)
    assert mem["write_steps"] > 0
    cfg = res["config"]
    assert cfg["write"]["lr"] == 0.3 and cfg["seed"] == 0 and cfg["model_fingerprint"]["config"]
    assert json.loads(output.read_text()) == {"format": "gradmem.eval-result", **res}
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(lines) == 2 and {"memory", "no_context", "full_context", "question", "answers"} <= set(lines[0])
    # f1_to_full_context is each memory answer's F1 against the same example's full-context answer.
    expected = [f1(x["memory"]["answer"], [x["full_context"]["answer"]]) for x in lines]
    assert [x["memory"]["f1_to_full_context"] for x in lines] == expected
    assert mem["f1_to_full_context"] == sum(expected) / 2
    # write_accuracy: each memory's teacher-forced token accuracy, averaged (how far a write got depends on
    # the machine's arithmetic, so only that it is an accuracy and the mean of the examples' is asserted).
    accuracies = [x["memory"]["write_accuracy"] for x in lines]
    assert mem["write_accuracy"] == pytest.approx(sum(accuracies) / 2) and all(0 < a <= 1 for a in accuracies)
    assert res["intervals"]["memory"]["f1"][0] <= mem["f1"] <= res["intervals"]["memory"]["f1"][1]
    assert "already exists (use --force" in run(*args).err  # the result files of the first run
    again = json.loads(run(*args, "--force").out)
    for c in res["metrics"]:  # same seed, same numbers (timings aside)
        for k, v in res["metrics"][c].items():
            if "seconds" not in k:
                assert again["metrics"][c][k] == v


@pytest.mark.parametrize("task", ["kv", "recon", "qa"])
def test_tiny_eval_other_tasks(run, tiny_model, tmp_path, task):
    extra = {"kv": ["--pairs", "2"], "recon": [], "qa": []}[task]
    if task == "recon":
        folder = tmp_path / "texts"
        folder.mkdir()
        (folder / "a.txt").write_text("Mira keeps the lighthouse.")
        extra = ["--data", folder]
    result = run("eval", task, "-m", tiny_model, "--limit", "1", *FAST, "--max-new-tokens", "3", "--json", *extra)
    assert result.code == 0, result.err
    res = json.loads(result.out)
    main = res["main_metric"]
    assert all(main in res["metrics"][c] for c in res["metrics"])
    if task == "recon":
        assert res["metrics"]["memory"]["exact"] == 1.0 and res["metrics"]["memory"]["tokens_per_slot"] > 0


def test_eval_conditions_and_errors(run, tiny_model, tmp_path):
    result = run("eval", "kv", "-m", tiny_model, "--limit", "1", "--conditions", "no-context", "--json")
    assert result.code == 0, result.err
    res = json.loads(result.out)
    assert list(res["metrics"]) == ["no_context"] and res["gap_closed"] is None
    bad = run("eval", "kv", "-m", tiny_model, "--conditions", "oracle")
    assert bad.code == 2 and "--conditions" in bad.err
    bad = run("eval", "nope", "-m", tiny_model)
    assert bad.code == 1 and "unknown task" in bad.err
    bad = run("eval", "kv", "-m", tiny_model, "--steps", "-3")
    assert bad.code == 2 and "--steps" in bad.err


def test_via_text_condition(run, tiny_model, tmp_path):
    data_file = tmp_path / "qa.jsonl"
    data_file.write_text(json.dumps({"context": "Mira keeps the lighthouse.", "question": "Who?", "answers": ["Mira"]}) + "\n")
    result = run("eval", "qa", "--data", data_file, "-m", tiny_model, *FAST, "--max-new-tokens", "3", "--json",
                 "--conditions", "via-text,full-context,no-context")
    assert result.code == 0, result.err
    res = json.loads(result.out)
    via, full = res["metrics"]["via_text"], res["metrics"]["full_context"]
    assert via["rebuilt_exact"] == 1.0 and via["rebuild_seconds"] > 0 and via["write_steps"] > 0
    assert via["f1"] == full["f1"] and via["em_tf"] == full["em_tf"]  # exact rebuild: same prompt as full context
    assert via["f1_to_full_context"] == 1.0  # ... and so the same answer
    assert "gap_closed_via_text" in res
    bad = run("eval", "recon", "-m", tiny_model, "--conditions", "via-text")
    assert bad.code == 2


def test_shared_context_written_once(run, tiny_model, tmp_path, monkeypatch):
    from gradmem_cli import engine

    seen = []
    real = engine.memorize

    def counting(lm, docs, cfg, on_step=None):
        seen.extend(d.text for d in docs)
        return real(lm, docs, cfg, on_step)

    monkeypatch.setattr(engine, "memorize", counting)
    data_file = tmp_path / "qa.jsonl"
    lines = [{"context": "Mira keeps the lighthouse.", "question": q, "answers": ["Mira"]} for q in ("Who?", "Which?")]
    data_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = run("eval", "qa", "--data", data_file, "-m", tiny_model, *FAST, "--max-new-tokens", "2", "--json",
                 "--conditions", "memory")
    assert result.code == 0, result.err
    assert seen == ["Mira keeps the lighthouse."]
    assert json.loads(result.out)["n"] == 2


def test_bootstrap_intervals_on_known_scores():
    """Constant scores have a zero-width interval; 0/1 scores at n = 6 a wide one; gap_closed is
    resampled with the conditions paired, and undefined where full context does not beat no context."""
    per = {"memory": {"f1": [1.0, 0, 0, 1.0, 0, 0], "read_seconds": [1.0] * 6},
           "no_context": {"f1": [0.0] * 6}, "full_context": {"f1": [1.0, 1.0, 0, 1.0, 0, 0]}}
    out = bootstrap_intervals(per, "f1")
    assert out["no_context"]["f1"] == [0.0, 0.0] and "read_seconds" not in out["memory"]
    low, high = out["memory"]["f1"]
    assert low <= 1 / 3 <= high and high - low > 0.5  # one answer is 1/6 of the mean: n = 6 says little
    assert out["gap_closed"][1] <= 1.0 and 0.5 < out["gap_closed_defined"] < 1.0
    assert bootstrap_intervals(per, "f1") == out  # fixed seed, same interval


def test_memory_inside_the_prompt(run, tiny_chat_model):
    """--memory-at context puts the memory where full context puts the text, and says so."""
    from gradmem_cli.lm.generate import MEMORY_SLOT, framed_prompt, prompt_ids, with_context
    from gradmem_cli.lm.loading import load_model

    lm = load_model(tiny_chat_model, device="cpu")
    ids, at = framed_prompt(lm, with_context(MEMORY_SLOT, "Where?"))
    full = prompt_ids(lm, with_context("Mira", "Where?"))
    assert 0 < at < len(ids) and ids[:at] == full[:at]  # the template's head, then the memory, then the rest
    assert framed_prompt(lm, "Where?") == (prompt_ids(lm, "Where?"), 0)
    res = run("eval", "babi", "-m", tiny_chat_model, "--limit", "1", *FAST, "--max-new-tokens", "3", "--json",
              "--memory-at", "context", "--conditions", "memory")
    assert res.code == 0, res.err and json.loads(res.out)["config"]["memory_at"] == "context"
    assert run("eval", "babi", "-m", tiny_chat_model, "--memory-at", "middle").code == 2
