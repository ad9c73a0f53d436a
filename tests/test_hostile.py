"""Hard edges, round 2 (issue 22): each numbered case of the hostile-input probe, and the rules behind them.

Every case ends in one ``error:`` line and a non-zero exit (or a warning and a correct result, for a
forged store entry), and every input file is byte-identical afterwards.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import FAST, TEXT, one_line_error as _one_line_error
from gradmem_cli.memory import memfile

OTHER = "John picked up the apple and went to the garden."


def _digests(*paths):
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@pytest.fixture
def qa_data(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / "qa.jsonl"
    path.write_text(json.dumps({"id": "q1", "context": TEXT, "question": "Who keeps it?", "answers": ["Mira"]}) + "\n")
    return path


# --- 1.-3. no file is overwritten ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--output", "--log-samples"])
def test_1_eval_never_writes_over_its_data(run, qa_data, tiny_model, option):
    before = _digests(qa_data)
    result = run("eval", "qa", "--data", qa_data, option, qa_data, "--limit", "1", "--conditions", "no-context",
                 "-m", tiny_model, "--force")
    assert "is an input of this command" in _one_line_error(result)
    assert _digests(qa_data) == before


@pytest.mark.parametrize("option", ["--output", "--log-samples"])
def test_2_eval_never_writes_over_an_unrelated_file(run, qa_data, tiny_model, tmp_path, option):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    before = _digests(qa_data, notes)
    for force in ([], ["--force"]):
        result = run("eval", "qa", "--data", qa_data, option, notes, "--limit", "1", "--conditions", "no-context",
                     "-m", tiny_model, *force)
        assert "refusing to overwrite" in _one_line_error(result) and "not even with --force" in result.err
    assert _digests(qa_data, notes) == before


def test_2_eval_replaces_its_own_result_only_with_force(run, qa_data, tiny_model, tmp_path):
    output, samples = tmp_path / "r.json", tmp_path / "s.jsonl"
    args = ["eval", "qa", "--data", qa_data, "--output", output, "--log-samples", samples, "--limit", "1",
            "--conditions", "no-context", "-m", tiny_model, "--max-new-tokens", "2", "-q"]
    assert run(*args).code == 0
    assert json.loads(output.read_text())["format"] == "gradmem.eval-result"
    assert json.loads(samples.read_text().splitlines()[0])["format"] == "gradmem.eval-samples"
    before = _digests(output, samples, qa_data)
    assert "already exists (use --force" in _one_line_error(run(*args))
    assert _digests(output, samples, qa_data) == before
    assert run(*args, "--force").code == 0 and _digests(qa_data) == {str(qa_data): before[str(qa_data)]}
    new = tmp_path / "new.json"
    same = ["eval", "qa", "--data", qa_data, "--output", new, "--log-samples", new, "-m", tiny_model]
    assert "are the same file" in _one_line_error(run(*same), code=2)


def test_3_self_study_never_writes_over_an_unrelated_file(run, doc, tiny_model, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("keep me")
    before = _digests(doc, keep)
    for force in ([], ["--force"]):
        line = _one_line_error(run("self-study", doc, "-o", keep, "-m", tiny_model, *force))
        assert "refusing to overwrite" in line
    assert "is an input" in _one_line_error(run("self-study", doc, "-o", doc, "-m", tiny_model, "--force"))
    assert _digests(doc, keep) == before


def test_an_output_txt_inside_an_input_folder_is_refused(run, tiny_model, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT)
    line = _one_line_error(run("self-study", folder, "-o", folder / "qa.txt", "-m", tiny_model))
    assert "input folder" in line and not (folder / "qa.txt").exists()


# --- symbolic links and folders, on purpose ------------------------------------------------------------


def test_a_symlinked_output_replaces_its_target_and_keeps_the_link(run, doc, written, tiny_model, tmp_path):
    link = tmp_path / "latest.gmem"
    link.symlink_to(written)
    assert "already exists" in _one_line_error(run("write", doc, "-o", link, "-m", tiny_model, *FAST))
    assert run("write", doc, "-o", link, "-m", tiny_model, *FAST, "--seed", "4", "--force", "-q").code == 0
    assert link.is_symlink() and memfile.load(written).header.write["seed"] == 4
    dangling = tmp_path / "nothing.gmem"
    dangling.symlink_to(tmp_path / "missing" / "x.gmem")
    assert "symbolic link to nothing" in _one_line_error(run("write", doc, "-o", dangling, "-m", tiny_model))


def test_an_output_folder_inside_the_input_folder_writes_beside_the_texts(run, tiny_model, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT)
    before = _digests(folder / "a.txt")
    assert run("write", folder, "-o", folder / "mems", "-m", tiny_model, *FAST, "-q").code == 0
    assert run("write", folder, "-o", folder, "-m", tiny_model, *FAST, "-q").code == 0  # folders are not recursive
    assert (folder / "mems" / "a.gmem").is_file() and (folder / "a.gmem").is_file()
    assert _digests(folder / "a.txt") == before


def test_run_and_store_folders_are_never_someone_elses(run, tiny_chat_model, tiny_model, qa_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = _digests(mine / "thesis.tex")
    line = _one_line_error(run("train", "--set", f"out={mine}", "--set", "max_steps=1"))
    assert "holds files that are not a gradmem train run" in line
    line = _one_line_error(run("train-reader", "--set", f"model={tiny_chat_model}", "--set", f"out={mine}"))
    assert "not a gradmem train-reader run" in line
    line = _one_line_error(run("eval", "qa", "--data", qa_data, "--memories", mine, "-m", tiny_model))
    assert "not a gradmem memory store" in line
    assert _digests(mine / "thesis.tex") == before and sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


# --- 4.-6. bounds before work ------------------------------------------------------------------------------


def test_4_a_one_megabyte_question_is_measured_not_allocated(run, written, tiny_model):
    line = _one_line_error(run("ask", written, "-", "-m", tiny_model, stdin="lighthouse " * 90_000 + "\n"))
    assert "the question is" in line and "window of 512 positions" in line


def test_4_stdin_past_the_cap_is_refused_without_reading_it_all(run, written, tiny_model):
    line = _one_line_error(run("ask", written, "-", "-m", tiny_model, stdin=b"y\n" * (1 << 20)))
    assert "larger than 1 MiB" in line


def test_4_an_endless_pipe_does_not_hang(written, tiny_model):
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        done = subprocess.run([sys.executable, "-m", "gradmem_cli", "ask", str(written), "-", "-m", tiny_model],
                              stdin=yes.stdout, capture_output=True, text=True, timeout=120)
    finally:
        yes.kill()
        yes.wait()
    assert done.returncode == 1 and "larger than 1 MiB" in done.stderr and "Traceback" not in done.stderr


def test_5_a_question_past_the_window_is_refused_before_any_answer(run, written, tiny_model):
    line = _one_line_error(run("ask", written, "lighthouse " * 700, "-m", tiny_model))
    assert "the question is" in line and "512" in line
    line = _one_line_error(run("ask", written, "Who?", "-m", tiny_model, "--max-new-tokens", "100000"))
    assert "100000 for the answer" in line


@pytest.mark.parametrize("space, words", [("embed", 20_000), ("kv", 80_000)])  # kv holds 128 tokens a slot
def test_6_a_huge_context_is_refused_before_any_write(run, tiny_model, tmp_path, space, words):
    data = tmp_path / "huge.jsonl"
    data.write_text(json.dumps({"id": "big", "context": "lighthouse " * words, "question": "Who?",
                                "answers": ["Mira"]}) + "\n")
    before = _digests(data)
    for conditions in ("full-context", "memory"):
        line = _one_line_error(run("eval", "qa", "--data", data, "--limit", "1", "--conditions", conditions,
                                   "-m", tiny_model, "--space", space))
        assert f"example big ({conditions}) is" in line and "window of 512" in line
    assert _digests(data) == before


# --- 7.-8. processes ---------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(6):
        (src / f"n{i}.txt").write_text(f"Note {i}: the spare key for door {i} is under the blue pot. " * 2)
    return src


def _write_in_workers(folder, out, model, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "gradmem_cli", "write", str(folder), "-o", str(out), "-m", model,
                             "--lr", "0.01", "--steps", "5000", "--workers", "2", "-q"],
                            stderr=subprocess.PIPE, text=True, env=env, **popen)


def _children(pid, count, timeout=240):
    import psutil

    parent = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = parent.children(recursive=True)
        if len(kids) >= count:
            return kids
        time.sleep(0.2)
    raise AssertionError("the workers did not start")


def _gone(kids, seconds):
    import psutil

    deadline = time.monotonic() + seconds
    alive = kids
    while time.monotonic() < deadline:
        alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def test_7_workers_die_with_a_killed_parent(folder, tiny_model, tmp_path):
    before = _digests(*folder.iterdir())
    proc = _write_in_workers(folder, tmp_path / "out", tiny_model)
    kids = _children(proc.pid, 3)  # two workers and multiprocessing's resource tracker
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _gone(kids, 5) == [], "a worker outlived its killed parent"
    assert _digests(*folder.iterdir()) == before


def test_7_sigterm_is_handled_like_ctrl_c(folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = _write_in_workers(folder, out, tiny_model)
    kids = _children(proc.pid, 3)
    time.sleep(3)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # The last line is the one-line error. (Rarely, the stop lands while Python reports an ignored exception
    # from a finalizer, which leaves that half-line above it: Python's, not one gradmem can withhold.)
    assert proc.returncode == 143 and err.strip().splitlines()[-1].endswith("error: terminated")
    assert _gone(kids, 10) == []
    assert not out.exists() or all(memfile.load(p) for p in out.iterdir())  # no partial file, no empty folder


def test_8_a_full_disk_gives_one_line_and_removes_the_empty_folder(folder, tiny_model, tmp_path):
    import resource

    out = tmp_path / "new" / "out"

    def small_files():  # writes past 1 KiB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "gradmem_cli", "write", str(folder), "-o", str(out), "-m",
                           tiny_model, *FAST, "--workers", "2", "-q"], capture_output=True, text=True, env=env,
                          preexec_fn=small_files, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: cannot write"), done.stderr
    assert not out.exists() and not out.parent.exists()


# --- 9.-11. hostile content accepted -------------------------------------------------------------------------


def test_9_a_forged_store_entry_is_checked_against_its_text_and_rewritten(tiny_model, tmp_path):
    from gradmem_cli.lm.loading import load_model
    from gradmem_cli.engine.store import MemoryStore
    from gradmem_cli.writers.config import WriteConfig

    lm = load_model(tiny_model, device="cpu")
    cfg = WriteConfig(space="embed", lr=0.3, steps=300).resolve(lm)
    warnings = []
    store = MemoryStore(tmp_path / "store", lm, cfg, on_rewrite=warnings.append)
    assert store.fill([TEXT, OTHER]) == 2 and store.get(TEXT) is not None
    honest, other = memfile.load(store.path(TEXT)), memfile.load(store.path(OTHER))
    assert honest.memory.shape == other.memory.shape  # one segment each: the vectors can be swapped
    # Another text's valid memory under this text's name, its header saying it is this text's.
    save_file({"memory": other.memory}, str(store.path(TEXT)), metadata=honest.header.to_metadata())
    fresh = MemoryStore(tmp_path / "store", lm, cfg, on_rewrite=warnings.append)
    assert fresh.get(TEXT) is None and len(warnings) == 1 and "not this text's memory" in warnings[0]
    assert fresh.fill([TEXT, OTHER]) == 1  # written again; the honest entry is reused
    rewritten = MemoryStore(tmp_path / "store", lm, cfg, on_rewrite=warnings.append).get(TEXT)  # checked again
    assert rewritten is not None and len(warnings) == 1 and not torch.equal(rewritten.memory, other.memory)


def test_9_eval_warns_and_rewrites_a_forged_entry(run, tiny_model, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text(json.dumps({"text": TEXT}) + "\n" + json.dumps({"text": OTHER}) + "\n")
    store = tmp_path / "store"
    args = ["eval", "recon", "--data", data, "--memories", store, "--conditions", "memory", "-m", tiny_model, *FAST,
            "--json"]
    first = run(*args)
    assert first.code == 0 and "warning" not in first.err
    files = sorted(store.glob("*.gmem"))
    a, b = memfile.load(files[0]), memfile.load(files[1])
    save_file({"memory": b.memory}, str(files[0]), metadata=a.header.to_metadata())
    again = run(*args)
    assert again.code == 0 and "writing it again" in again.err
    exact = [json.loads(r.out)["metrics"]["memory"]["exact"] for r in (first, again)]
    assert exact[0] == exact[1]


@pytest.mark.parametrize("number", ["Infinity", "NaN", "-Infinity", "1e999"])
def test_10_a_reader_config_with_a_non_finite_number_is_refused(run, written, tiny_model, tmp_path, number):
    from gradmem_cli.lm.loading import load_model
    import dataclasses

    fingerprint = dataclasses.asdict(load_model(tiny_model, device="cpu").fingerprint)
    reader = tmp_path / "reader"
    reader.mkdir()
    config = json.dumps({"format": "gradmem.reader", "format_version": "1.0", "base_model": tiny_model,
                         "base_fingerprint": fingerprint, "rank": 2, "alpha": 1.5, "targets": ["q_proj"]})
    (reader / "gradmem_reader.json").write_text(config.replace("1.5", number))
    before = _digests(reader / "gradmem_reader.json", written)
    line = _one_line_error(run("ask", written, "Who?", "-m", tiny_model, "--reader", reader))
    assert "not a readable reader config" in line
    assert _digests(reader / "gradmem_reader.json", written) == before


@pytest.mark.parametrize("option", [["--temperature", "nan"], ["--temperature", "inf"], ["--temperature", "-1"]])
def test_11_float_options_are_finite_and_in_range(run, written, tiny_model, option):
    line = _one_line_error(run("ask", written, "Who?", "-m", tiny_model, *option), code=2)
    assert "--temperature" in line


@pytest.mark.parametrize("args", [["write", "x.txt", "--lr", "nan"], ["write", "x.txt", "--margin", "inf"],
                                  ["write", "x.txt", "--distill-weight", "inf"], ["fit-start", "x", "-o", "y",
                                                                                  "--outer-lr", "nan"],
                                  ["train", "--set", "lr=.nan"], ["train", "--set", "max_minutes=.inf"]])
def test_11_every_float_setting_is_checked_by_one_rule(run, args):
    assert "must be a finite number" in _one_line_error(run(*args), code=2)


# --- 12.-13. what reaches the terminal -----------------------------------------------------------------------


def _with_header(written, tmp_path, name, **fields):
    mem = memfile.load(written)
    for key, value in fields.items():
        if key == "source_name":
            mem.header.source = {**mem.header.source, "name": value}
        else:
            setattr(mem.header, key, value)
    path = tmp_path / f"{name}.gmem"
    memfile.save(path, mem.memory, mem.header)
    return path


@pytest.mark.parametrize("markup", ["[/]", "[/bold]", "[bold red]x[/bold red]", "[link=file:///etc]x"])
def test_12_markup_in_a_file_is_shown_as_text(run, written, tmp_path, markup):
    path = _with_header(written, tmp_path, "markup", source_name=markup, model_id=markup)
    result = run("inspect", path)
    assert result.code == 0, result.err
    assert markup in result.err  # literally, not interpreted


def test_13_escapes_from_a_file_never_reach_the_terminal(run, written, tmp_path, tiny_model):
    hostile = "\x1b[2J\x1b[31mred\x9b1m\u202eevil\x07\n"
    path = _with_header(written, tmp_path, "esc", source_name=hostile, model_id=hostile)
    result = run("inspect", path)
    assert result.code == 0, result.err
    for raw in ("\x1b", "\x9b", "\u202e", "\x07"):
        assert raw not in result.err + result.out
    assert "\\x1b[2J" in result.err and "\\u202e" in result.err
    line = _one_line_error(run("ask", path, "Who?"))  # a refusal that quotes the file's model id
    assert "\\x1b[2J" in line and "\x1b" not in line


def test_13_a_huge_string_from_a_file_is_cut(run, written, tmp_path):
    huge = "m" * 5_000_000
    path = _with_header(written, tmp_path, "huge", model_id=huge)
    line = _one_line_error(run("ask", path, "Who?"))
    assert len(line) < 1000 and "(5000000 characters)" in line
    result = run("inspect", path)
    assert result.code == 0 and len(result.err) < 20_000


def test_shown_escapes_controls_bidi_and_cuts():
    from gradmem_cli.errors import shown

    assert shown("a\x1bb\x9bc\u202ed\u2028e\ud800") == "a\\x1bb\\x9bc\\u202ed\\u2028e\\ud800"
    assert shown("x" * 300) == "x" * 200 + "… (300 characters)"
    assert shown("Ünïcode ok 文字") == "Ünïcode ok 文字"


# --- 14.-15. model folders that would run code --------------------------------------------------------------


def test_14_a_model_folder_with_pickle_weights_is_refused_before_loading(run, written, doc, tiny_model, tmp_path,
                                                                          monkeypatch):
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model, folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    for args in (["ask", written, "Who?", "-m", folder], ["write", doc, "-o", tmp_path / "p.gmem", "-m", folder]):
        line = _one_line_error(run(*args))
        assert "pickle" in line and "safetensors and GGUF" in line and "weights_only" not in line
    assert loads == []


@pytest.mark.parametrize("where", ["config", "tokenizer_auto_map", "tokenizer_class"])
def test_15_a_model_folder_that_needs_custom_code_says_so(run, doc, tiny_model, tmp_path, where):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "RAN"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    name = "config.json" if where == "config" else "tokenizer_config.json"
    data = json.loads((folder / name).read_text())
    if where == "tokenizer_class":
        data["tokenizer_class"] = "EvilTokenizer"
    else:
        data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / name).write_text(json.dumps(data))
    line = _one_line_error(run("write", doc, "-o", tmp_path / "c.gmem", "-m", folder))
    assert "needs custom code" in line and "never runs" in line
    assert not marker.exists() and not (tmp_path / "c.gmem").exists()


def test_yaml_tags_in_a_train_config_are_refused(run, tmp_path):
    config = tmp_path / "evil.yaml"
    config.write_text("lr: !!python/object/apply:os.system ['touch " + str(tmp_path / "RAN") + "']\n")
    assert "not valid YAML" in _one_line_error(run("train", config))
    assert not (tmp_path / "RAN").exists()


# --- exit codes ------------------------------------------------------------------------------------------


def test_exit_codes(run, written, tiny_model, doc, tmp_path):
    assert run("ask", written, "Who?", "--via", "nowhere").code == 2  # a usage error
    assert run("inspect", tmp_path / "missing.gmem").code == 1  # an error
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for sig, code, word in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")):
        proc = subprocess.Popen([sys.executable, "-m", "gradmem_cli", "write", str(doc), "-o",
                                 str(tmp_path / f"s{code}.gmem"), "-m", tiny_model, "--lr", "0.001", "--steps",
                                 "100000", "--target-acc", "1", "-q"], stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if str(Path(tiny_model) / "model.safetensors") in _maps(proc.pid):  # the model is loaded: writing
                break
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code and err.strip() == f"error: {word}", err
        assert not (tmp_path / f"s{code}.gmem").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _maps(pid):
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


# --- the probe (benchmarks/hostile_probe.py, run by hand) runs and judges cases as it claims -------------


def test_the_hostile_probe_judges_a_handful_of_cases(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import hostile_probe as probe

    w = probe.Workshop(tmp_path)
    fuzz = probe.fuzz_cases(w)
    assert sum(c.name.startswith("inspect:") for c in fuzz) >= 148
    picks = [fuzz[0], next(c for c in fuzz if "escapes" in c.name), next(c for c in fuzz if "NaN" in c.name),
             probe.payload_cases(w)[0], probe.destructive_cases(w)[0], probe.bounds_cases(w)[0]]
    rows = [probe.run_case(w, case) for case in picks]
    assert all(r["clean"] for r in rows), [r for r in rows if not r["clean"]]
    # A case that is not clean is reported as such: an exit code the case does not expect.
    wrong = probe.Case("odd", "expects success", ["inspect", str(w.root / "missing.gmem")], expect="ok")
    row = probe.run_case(w, wrong)
    assert not row["clean"] and row["problems"] == ["exit 1 on good input"]
