"""The gradmem command on tiny models: write, ask, inspect, and every bad input."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import FAST, TEXT, one_line_error as _one_line_error
from gradmem_cli.memory import memfile



def test_write_json_and_file(run, doc, tiny_model, tmp_path):
    out = tmp_path / "doc.gmem"
    result = run("write", doc, "-o", out, "-m", tiny_model, *FAST, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)["files"][0]
    assert set(report) == {"input", "output", "tokens", "segments", "steps", "seconds", "final_loss", "accuracy"}
    assert report["output"] == str(out) and report["segments"] == 1 and report["accuracy"] == [1.0]
    header = memfile.load(out).header
    assert header.model_id.endswith("plain") and header.write["lr"] == 0.3 and header.write["objective"] == "reconstruct"
    assert header.source["tokens"] == report["tokens"] and header.source["bytes"] == len(TEXT)
    assert header.steps == report["steps"] and header.tokens_per_segment == [report["tokens"]]


def test_source_text_not_in_file(written):
    data = written.read_bytes().decode("latin-1")
    pieces = {TEXT[i:i + 6] for i in range(len(TEXT) - 5)}
    assert not [p for p in pieces if p in data]
    assert "Okafor" not in data and "lighthouse" not in data


def test_inspect_reconstruct_against(run, written, doc, tiny_model):
    result = run("inspect", written, "--against", doc, "--json", "-m", tiny_model)
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["reconstruction"]["exact_match"] is True
    assert info["reconstruction"]["token_accuracy"] == 1.0
    assert info["reconstruction"]["text"] == TEXT
    sizes = info["sizes"]
    assert sizes["file_bytes"] == written.stat().st_size
    assert sizes["memory_bytes"] == 8 * 64 * 4
    tokens = info["header"]["source"]["tokens"]
    assert sizes["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 4 * tokens  # K+V, 2 layers, 2 KV heads, head 16, fp32


def test_inspect_against_other_text(run, written, tmp_path, tiny_model):
    other = tmp_path / "other.txt"
    other.write_text("Something else entirely, not the source.")
    info = json.loads(run("inspect", written, "--against", other, "--json", "-m", tiny_model).out)
    assert info["reconstruction"]["exact_match"] is False
    assert info["reconstruction"]["token_accuracy"] < 0.5


def test_inspect_human_output(run, written, tiny_model):
    result = run("inspect", written, "--reconstruct", "-m", tiny_model)
    assert result.code == 0
    assert "mem_tokens" in result.err and "KV cache" in result.err
    assert result.out.strip() == TEXT  # the rebuilt text is the data, on stdout


def test_ask_streams_and_json(run, written, tiny_model):
    plain = run("ask", written, "Who keeps the lighthouse?", "--max-new-tokens", "8", "-m", tiny_model)
    assert plain.code == 0, plain.err
    result = run("ask", written, "Who keeps the lighthouse?", "--max-new-tokens", "8", "--json", "-m", tiny_model)
    answer = json.loads(result.out)
    assert answer["question"] == "Who keeps the lighthouse?" and 0 < answer["tokens"] <= 8
    assert plain.out.strip() == answer["answer"]


def test_ask_questions_from_stdin(run, written, tiny_model):
    result = run("ask", written, "-", "--max-new-tokens", "5", "--json", "-m", tiny_model, stdin="first?\n\nsecond?\n")
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [x["question"] for x in lines] == ["first?", "second?"]


def test_cached_and_uncached_ask_agree(run, written, tiny_model):
    a = run("ask", written, "Where is the lighthouse?", "--max-new-tokens", "12", "--json", "-m", tiny_model)
    b = run("ask", written, "Where is the lighthouse?", "--max-new-tokens", "12", "--json", "--no-cache", "-m", tiny_model)
    assert json.loads(a.out)["answer"] == json.loads(b.out)["answer"]


def test_chat_model_with_bos(run, doc, tiny_chat_model, tmp_path):
    out = tmp_path / "chat.gmem"
    assert run("write", doc, "-o", out, "-m", tiny_chat_model, *FAST, "-q").code == 0
    assert memfile.load(out).header.prefix_ids == [1]
    info = json.loads(run("inspect", out, "--against", doc, "--json", "-m", tiny_chat_model).out)
    assert info["reconstruction"]["exact_match"] is True
    a = run("ask", out, "Where?", "--max-new-tokens", "6", "--json", "-m", tiny_chat_model)
    b = run("ask", out, "Where?", "--max-new-tokens", "6", "--json", "--no-cache", "-m", tiny_chat_model)
    assert a.code == 0 and json.loads(a.out)["answer"] == json.loads(b.out)["answer"]


def test_long_text_is_segmented(run, tiny_model, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text(TEXT + " " + TEXT.upper())
    out = tmp_path / "long.gmem"
    result = run("write", path, "-o", out, "-m", tiny_model, *FAST, "--segment-tokens", "12", "--json")
    report = json.loads(result.out)["files"][0]
    mem = memfile.load(out)
    assert report["segments"] == mem.memory.shape[0] >= 2
    assert max(mem.header.tokens_per_segment) <= 12 and sum(mem.header.tokens_per_segment) == report["tokens"]
    info = json.loads(run("inspect", out, "--against", path, "--json", "-m", tiny_model).out)
    assert info["reconstruction"]["exact_match"] is True


def test_stdin_input(run, tiny_model, tmp_path):
    out = tmp_path / "in.gmem"
    result = run("write", "-", "-o", out, "-m", tiny_model, *FAST, "--json", stdin=TEXT)
    assert result.code == 0, result.err
    assert json.loads(result.out)["files"][0]["input"] == "<stdin>"
    assert memfile.load(out).header.source["name"] == "<stdin>"


def test_folder_to_folder(run, tiny_model, tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    for i, text in enumerate(["First small note.", "Second small note here.", "A third one."]):
        (src / f"n{i}.txt").write_text(text)
    out = tmp_path / "mems"
    result = run("write", src, "-o", out, "-m", tiny_model, *FAST, "--json")
    assert result.code == 0, result.err
    files = json.loads(result.out)["files"]
    assert sorted(f["output"] for f in files) == [str(out / f"n{i}.gmem") for i in range(3)]
    for i in range(3):
        info = json.loads(run("inspect", out / f"n{i}.gmem", "--against", src / f"n{i}.txt", "--json", "-m", tiny_model).out)
        assert info["reconstruction"]["exact_match"] is True


def test_several_files_without_output_go_next_to_inputs(run, tiny_model, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Alpha text.")
    b.write_text("Beta text.")
    assert run("write", a, b, "-m", tiny_model, *FAST, "-q").code == 0
    assert (tmp_path / "a.gmem").is_file() and (tmp_path / "b.gmem").is_file()


# --- bad input: one line on stderr, exit 1 (2 for usage), nothing written -------------------------------


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"), (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"), (b"\xff\xfe bad", "not UTF-8"),
])
def test_write_bad_text(run, tiny_model, tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    line = _one_line_error(run("write", path, "-o", tmp_path / "bad.gmem", "-m", tiny_model))
    assert message in line
    assert not (tmp_path / "bad.gmem").exists()


def test_write_missing_file_and_empty_folder(run, tiny_model, tmp_path):
    assert "no such file" in _one_line_error(run("write", tmp_path / "nope.txt", "-m", tiny_model))
    (tmp_path / "empty").mkdir()
    assert "no .txt files" in _one_line_error(run("write", tmp_path / "empty", "-m", tiny_model))


def test_write_unwritable_output(run, doc, tiny_model, tmp_path):
    line = _one_line_error(run("write", doc, "-o", tmp_path / "missing" / "x.gmem", "-m", tiny_model))
    assert "cannot write" in line
    line = _one_line_error(run("write", doc, "-o", doc / "x.gmem", "-m", tiny_model))
    assert "cannot write" in line


def test_stdin_needs_output(run, tiny_model):
    assert "-o/--output is required" in _one_line_error(run("write", "-", "-m", tiny_model, stdin="x"), code=2)


@pytest.mark.parametrize("option, value, message", [
    ("--steps", "-1", "--steps"), ("--mem-tokens", "0", "--mem-tokens"), ("--lr", "0", "--lr"),
    ("--target-acc", "1.5", "--target-acc"), ("--optimizer", "lion", "--optimizer"),
    ("--segment-tokens", "0", "--segment-tokens"), ("--init", "zeros", "--init"),
    ("--dtype", "int8", "dtype"), ("--device", "tpu", "device"),
])
def test_write_invalid_values(run, doc, tiny_model, tmp_path, option, value, message):
    out = tmp_path / "x.gmem"
    result = run("write", doc, "-o", out, "-m", tiny_model, option, value)
    assert result.code in (1, 2)
    assert message in _one_line_error(result, code=result.code)
    assert not out.exists()


def test_non_number_is_usage_error(run, doc, tiny_model):
    result = run("write", doc, "-m", tiny_model, "--steps", "many")
    assert result.code == 2 and "Traceback" not in result.err


def test_unknown_model_offline(run, doc, tmp_path):
    line = _one_line_error(run("write", doc, "-o", tmp_path / "x.gmem", "-m", "nobody/no-such-model", "--offline"))
    assert "cannot load model 'nobody/no-such-model'" in line
    assert not (tmp_path / "x.gmem").exists()
    assert "GGUF file not found" in _one_line_error(run("write", doc, "-m", tmp_path / "x.gguf"))
    assert "not a model" in _one_line_error(run("write", doc, "-m", tmp_path))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF but not really" * 10)
    assert "cannot read GGUF file" in _one_line_error(run("write", doc, "-m", junk, "-q"))


def test_model_mismatch_refused(run, written, other_tiny_model, tiny_chat_model):
    line = _one_line_error(run("ask", written, "Who?", "-m", other_tiny_model))
    assert "model mismatch" in line and "plain" in line and "other" in line and "weights differ" in line
    line = _one_line_error(run("inspect", written, "--reconstruct", "-m", tiny_chat_model))
    assert "model mismatch" in line


def test_model_named_by_file_is_not_loaded_on_its_word(run, written, tiny_model, tmp_path, monkeypatch):
    """A memory names its model, but only an alias or $GRADMEM_MODEL is loaded without --model."""
    line = _one_line_error(run("ask", written, "Who?"))
    assert "does not load on a file's word" in line and f"--model '{tiny_model}'" in line
    monkeypatch.setenv("GRADMEM_MODEL", tiny_model)
    assert run("ask", written, "Who?", "--max-new-tokens", "2").code == 0
    mem = memfile.load(written)
    mem.header.model_id = str(tmp_path / "moved-model")
    moved = tmp_path / "moved.gmem"
    memfile.save(moved, mem.memory, mem.header)
    monkeypatch.setenv("GRADMEM_MODEL", str(tmp_path / "moved-model"))
    assert "cannot load model" in _one_line_error(run("ask", moved, "Who?", "--offline"))


def test_bad_gmem_files(run, tmp_path, written, tiny_model):
    truncated = tmp_path / "t.gmem"
    truncated.write_bytes(written.read_bytes()[:100])
    for command in (["inspect"], ["ask"]):
        extra = ["q"] if command == ["ask"] else []
        assert "corrupt or truncated" in _one_line_error(run(*command, truncated, *extra))
    foreign = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    assert "not a gradmem memory" in _one_line_error(run("inspect", foreign))
    assert "no such file" in _one_line_error(run("ask", tmp_path / "none.gmem", "q"))
    newer = tmp_path / "newer.gmem"
    mem = memfile.load(written)
    mem.header.format_version = "3.1"
    memfile.save(newer, mem.memory, mem.header)
    assert "format 3.1" in _one_line_error(run("inspect", newer))


def test_interrupted_write_leaves_no_file(run, doc, tiny_model, tmp_path, monkeypatch):
    import gradmem_cli.objectives.reconstruct as write_mod

    calls = {"n": 0}
    real = write_mod.token_stats

    def interrupt_later(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(write_mod, "token_stats", interrupt_later)
    out = tmp_path / "int.gmem"
    result = run("write", doc, "-o", out, "-m", tiny_model, *FAST, "-q")
    assert result.code == 130 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_debug_shows_traceback(run, tmp_path, monkeypatch, tiny_model):
    from gradmem_cli.errors import GradmemError

    monkeypatch.setenv("GRADMEM_DEBUG", "1")
    with pytest.raises(GradmemError):
        run("inspect", tmp_path / "none.gmem")


def test_console_script_exit_code(tmp_path):
    """The installed entry point, in a fresh process: one line on stderr, exit 1."""
    proc = subprocess.run([sys.executable, "-m", "gradmem_cli", "inspect", str(tmp_path / "x.gmem")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: no such file: {tmp_path / 'x.gmem'}"
    assert proc.stdout == ""
    version = subprocess.run([sys.executable, "-m", "gradmem_cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("gradmem ")


def test_bfloat16_memory_read_in_its_dtype(run, doc, tiny_model, tmp_path):
    out = tmp_path / "bf16.gmem"
    assert run("write", doc, "-o", out, "-m", tiny_model, *FAST, "--dtype", "bfloat16", "-q").code == 0
    mem = memfile.load(out)
    assert mem.header.dtype == "bfloat16" and mem.memory.dtype == torch.float32
    info = json.loads(run("inspect", out, "--against", doc, "--json", "-m", tiny_model).out)
    assert info["reconstruction"]["exact_match"] is True
    assert info["sizes"]["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 2 * mem.header.source["tokens"]


def test_float16_storage_rebuilds(run, doc, tiny_model, tmp_path):
    out = tmp_path / "f16.gmem"
    assert run("write", doc, "-o", out, "-m", tiny_model, *FAST, "--store-dtype", "float16", "-q").code == 0
    mem = memfile.load(out)
    assert mem.memory.dtype == torch.float16 and mem.header.write["store_dtype"] == "float16"
    info = json.loads(run("inspect", out, "--against", doc, "--json", "-m", tiny_model).out)
    assert info["reconstruction"]["exact_match"] is True
    assert info["sizes"]["memory_bytes"] == 8 * 64 * 2


def test_ask_via_text_equals_full_context(run, written, tiny_model):
    from gradmem_cli.lm.loading import load_model
    from gradmem_cli.lm.generate import Reader, with_context

    result = run("ask", written, "Who keeps it?", "--via", "text", "--max-new-tokens", "6", "--json", "-m", tiny_model)
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert answer["via"] == "text" and answer["rebuild_seconds"] > 0
    lm = load_model(tiny_model, device="cpu")
    expected = Reader(lm, None).answer(with_context(TEXT, "Who keeps it?"), max_new_tokens=6).text
    assert answer["answer"] == expected  # the memory rebuilds TEXT exactly, so this is the full-context answer
    assert run("ask", written, "q", "--via", "telepathy", "-m", tiny_model).code == 2
    none = json.loads(run("ask", written, "Who keeps it?", "--via", "none", "--max-new-tokens", "6", "--json",
                          "-m", tiny_model).out)
    assert none["answer"] == Reader(lm, None).answer("Who keeps it?", max_new_tokens=6).text  # no memory read


def test_write_help_shows_every_model_default(run):
    """Defaults in brackets starting with a letter were eaten by rich as markup; they are in parentheses now."""
    import re

    text = re.sub(r"\s+", " ", run("write", "--help").out.replace("│", " "))
    for shown in ("(default: adam;", "(default: embed cosine, kv constant;", "(default: embed 8, kv 2;",
                  "(default: fitted where gradmem ships a start for the model and m (reconstruct only), else tokens;"):
        assert shown in text, shown


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"]])
def test_help_and_version_answer_without_loading_torch(argv):
    """`gradmem`, `gradmem --help` and `--version` print at once: no torch, no commands loaded."""
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['gradmem', *sys.argv[1:]]\nfrom gradmem_cli.cli import main\nmain()\n"
            "assert 'torch' not in sys.modules and 'gradmem_cli.cli.commands' not in sys.modules, 'loaded'")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from gradmem_cli.version import __version__

    if argv == ["--version"]:
        assert done.stdout.strip() == f"gradmem {__version__}"
    else:
        assert "Commands:" in done.stdout and "train-reader" in done.stdout


def test_the_quick_command_list_is_the_commands_own():
    import typer

    from gradmem_cli.cli import app
    from gradmem_cli.cli.summary import COMMANDS

    commands = typer.main.get_command(app).commands
    assert list(COMMANDS) == list(commands)
    for name, command in commands.items():
        assert COMMANDS[name] == " ".join(command.help.split("\n\n")[0].split()), name


def test_a_closed_pipe_ends_quietly():
    """`gradmem --help | head -0`: the reader is gone before gradmem writes (its read end is closed at once, so
    the write fails for certain); gradmem prints no traceback and no error line."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "gradmem_cli", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1 and err == ""
