"""Self-study (questions a model writes about your texts) and readers trained on them (task: qa)."""

import json

import pytest

from gradmem_cli.lm import adapter
from gradmem_cli.memory.documents import Document
from gradmem_cli.training import selfstudy
from gradmem_cli.training.selfstudy import SelfStudyConfig, answer_spans, candidates, passages, study

FERRY = ("The ferry Tern leaves the island of Brack at six every morning. Its captain, Ida Moll, has run the crossing "
         "for eleven years. The trip to the port of Sallow takes fifty minutes.")


def test_passages_join_short_paragraphs_and_cut_long_ones():
    short = "One two three four five.\n\nSix seven eight nine ten."
    assert passages(short, 8, 20) == ["One two three four five. Six seven eight nine ten."]
    long = " ".join(f"Sentence {i} has five words." for i in range(10))
    cut = passages(long, 5, 12)
    assert len(cut) == 5 and all(len(p.split()) == 10 for p in cut)
    assert passages("Too short.", 5, 12) == []


def test_answer_spans_are_names_and_quantities_of_the_passage():
    spans = answer_spans(FERRY)
    assert {"Tern", "Brack", "Ida Moll", "Sallow", "eleven years", "fifty minutes"} <= set(spans)
    assert "The" not in spans and "Its" not in spans  # capitalised sentence starts are not names
    assert all(s in FERRY for s in spans)
    assert "six every" not in spans and "six" in spans  # "every" does not say what six counts


class _Scripted:
    """Stands in for the model: writes the same question for every span, and answers with a fixed reply."""

    question, reply = "How long does the trip to the port take?", "It takes fifty minutes."

    def __init__(self, lm, memory):
        pass

    def answer(self, prompt, max_new_tokens=0, template=True):
        class A:
            text = self.question if not template else self.reply
        return A()


def test_study_keeps_what_the_round_trip_confirms(monkeypatch):
    monkeypatch.setattr(selfstudy, "Reader", _Scripted)
    doc = Document.from_text("ferry.txt", FERRY)
    seen = []
    cfg = SelfStudyConfig(per_passage=20, min_words=5)
    records = list(study(None, candidates([doc], cfg), cfg, seen.append))
    assert len(seen) == len(answer_spans(FERRY))
    # only "fifty minutes" is in the reply; the question shares words with its sentence only there
    assert [r["answers"] for r in records] == [["fifty minutes"]]
    assert records[0]["context"] == FERRY and records[0]["question"] == _Scripted.question
    cfg = SelfStudyConfig(per_passage=20, min_words=5, check=False)
    unchecked = list(study(None, candidates([doc], cfg), cfg))
    assert len(unchecked) > 1 and all(r["question"] == _Scripted.question for r in unchecked)


def test_questions_that_give_the_answer_away_or_miss_the_sentence_are_dropped():
    sentence = "The trip to the port of Sallow takes fifty minutes."
    assert selfstudy._question("How long is the trip to Sallow?\nmore", "fifty minutes", sentence)
    assert selfstudy._question("Does the trip take fifty minutes?", "fifty minutes", sentence) is None
    assert selfstudy._question("What is the answer to this question?", "fifty minutes", sentence) is None
    assert selfstudy._question("How long is the trip to Sallow", "fifty minutes", sentence) is None


def test_self_study_cli_refuses_bad_input_before_loading(run, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(FERRY)
    result = run("self-study", text, "-o", tmp_path / "missing" / "qa.jsonl", "-m", "/nonexistent")
    assert result.code == 1 and "no such folder" in result.err
    (tmp_path / "tiny.txt").write_text("Too short to ask about.")
    result = run("self-study", tmp_path / "tiny.txt", "-o", tmp_path / "qa.jsonl", "-m", "/nonexistent")
    assert result.code == 1 and "no passage" in result.err and not (tmp_path / "qa.jsonl").exists()
    assert run("self-study", text, "-o", tmp_path / "qa.jsonl", "--per-passage", "0").code == 2
    result = run("self-study", text, "-o", text, "-m", "/nonexistent")
    assert result.code == 1 and "is an input" in result.err and text.read_text() == FERRY


def test_self_study_cli_writes_jsonl_on_a_model(run, tiny_chat_model, tmp_path):
    text = tmp_path / "ferry.txt"
    text.write_text(FERRY)
    out = tmp_path / "qa.jsonl"
    result = run("self-study", text, "-o", out, "-m", tiny_chat_model, "--min-words", "5", "--per-passage", "2",
                 "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["candidates"] == 2 and out.is_file()  # a random model's questions may all be dropped
    assert len(out.read_text().splitlines()) == report["questions"]


@pytest.fixture
def qa_files(tmp_path):
    held = [{"context": "Mira Okafor keeps the old lighthouse on Gull Point and climbs ninety steps each night.",
             "question": "Who keeps the lighthouse?", "answers": ["Mira Okafor"]}]
    train = [{"context": "Ida Moll runs the ferry Tern from Brack to Sallow.", "question": "Who runs the ferry?",
              "answers": ["Ida Moll"]},
             {"context": "Tom Rey bakes rye bread in Lyon every morning.", "question": "Where does Tom bake?",
              "answers": ["Lyon"]},
             # shares an 8-word run with the held-out passage: must not be trained on
             {"context": "Every year Mira Okafor keeps the old lighthouse on Gull Point alone.",
              "question": "Where is the lighthouse?", "answers": ["Gull Point"]}]
    paths = []
    for name, rows in (("held.jsonl", held), ("train.jsonl", train)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(tmp_path / name)
    return paths


@pytest.mark.parametrize("kind", ["context", "memory"])
def test_reader_trains_on_qa_passages(run, tiny_chat_model, tmp_path, qa_files, kind):
    held, train = qa_files
    out = tmp_path / "run"
    result = run("train-reader", "--set", f"model={tiny_chat_model}", "--set", f"out={out}", "--set", "task=qa",
                 "--set", f"train_data={train}", "--set", f"eval_data={held}", "--set", f"input={kind}",
                 "--set", "max_steps=2", "--set", "eval_every=2", "--set", "batch_size=2", "--set", "rank=2",
                 "--set", "threads=1", "--json")
    assert result.code == 0, result.err
    training = adapter.read_config(out / "best").training
    assert training["task"] == "qa" and training["train_stories"] == 2 and training["train_questions"] == 2
    assert training["train_data"]["data"] == str(train) and len(training["train_data"]["sha256"]) == 64
    assert "qa_em" in training["held_out"]
    assert "dropped 1 training contexts" in (out / "train.log").read_text()


def test_reader_qa_needs_training_data(run, tiny_chat_model, tmp_path):
    result = run("train-reader", "--set", f"model={tiny_chat_model}", "--set", f"out={tmp_path}", "--set", "task=qa")
    assert result.code == 2 and "train_data" in result.err
    result = run("train-reader", "--set", f"model={tiny_chat_model}", "--set", f"out={tmp_path}", "--set", "task=qa",
                 "--set", f"train_data={tmp_path / 'none.jsonl'}")
    assert result.code == 1 and "none.jsonl" in result.err


def test_the_python_api_studies_like_the_cli(monkeypatch):
    from gradmem_cli.api import Gradmem

    monkeypatch.setattr(selfstudy, "Reader", _Scripted)
    records = Gradmem(None).self_study([FERRY], per_passage=20, min_words=5)
    assert [(r["question"], r["answers"]) for r in records] == [(_Scripted.question, ["fifty minutes"])]


def test_shipped_readers_record_what_they_were_trained_on():
    """Every shipped reader loads, and a qa reader's training data is the file in the repository."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    folders = sorted(p for p in (root / "samples" / "readers").iterdir() if p.is_dir())
    assert any(adapter.read_config(f).training["task"] == "qa" for f in folders)
    for folder in folders:
        training = adapter.read_config(folder).training
        assert training["input"] in ("memory", "context", "none") and training["steps"] >= 1
        if training["task"] == "qa":
            data = root / training["train_data"]["data"]
            assert hashlib.sha256(data.read_bytes()).hexdigest() == training["train_data"]["sha256"]
            assert training["train_questions"] == len(data.read_text().splitlines())
