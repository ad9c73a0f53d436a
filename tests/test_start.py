"""Learned starting points (``gradmem fit-start``, ``--init fitted``, ``--start``) on tiny models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.lm.loading import load_model
from gradmem_cli.memory import memfile
from gradmem_cli.writers import start as starts
from gradmem_cli.writers.config import WriteConfig
from gradmem_cli.writers.optimizer import initial_memory
from gradmem_cli.writers.fitting import FitConfig, fit_start
from gradmem_cli.writers.start import Start, read_start, save_start

TEXT = "Mira keeps the old lighthouse on Gull Point and writes the weather in a blue notebook every morning."


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_model) -> Path:
    """A start fitted through the CLI on the sample paragraphs."""
    from conftest import invoke

    path = tmp_path_factory.mktemp("start") / "tiny.safetensors"
    result = invoke("fit-start", "samples/paragraphs", "-o", path, "-m", tiny_model, "--outer-steps", "4",
                    "--batch", "4", "--inner-steps", "4", "--json", "-q")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["texts"] == 8 and report["segments"] > 8 and len(report["history"]) == 4
    return path


def test_the_zero_start_is_the_token_start(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    ids = lm.tokenize(TEXT)[:5]
    gen = torch.Generator().manual_seed(0)
    tokens = WriteConfig(space="embed", init="tokens").resolve(lm)
    zero = initial_memory(lm, ids, dataclasses.replace(tokens, init="fitted"), gen, Start(8, lm.hidden_size))
    assert torch.equal(zero, initial_memory(lm, ids, tokens, gen))


def test_fitting_moves_the_start_towards_the_writes(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    segments = [lm.tokenize(TEXT)[i:i + 12] for i in range(0, 36, 12)]
    cfg = WriteConfig(space="embed", init="tokens", lr=0.3).resolve(lm)
    history = []
    start = fit_start(lm, segments, cfg, FitConfig(outer_steps=6, batch=3, inner_steps=5, outer_lr=0.05),
                      history.append)
    assert len(history) == 6 and start.bias.abs().max() > 0.01
    # The pull is towards where the writes went: the distance from M0 to them shrinks.
    assert history[-1].moved < history[0].moved


def test_a_fitted_write_records_the_start_and_rebuilds(run, fitted, tiny_model, tmp_path):
    out = tmp_path / "l.gmem"
    result = run("write", "-", "-o", out, "-m", tiny_model, "--init", "fitted", "--start", fitted, "--lr", "0.3",
                 "--steps", "300", "-q", stdin="Mira keeps the lighthouse.")
    assert result.code == 0, result.err
    write = memfile.load(out).header.write
    assert write["init"] == "fitted" and write["start"] == read_start(fitted).digest
    rebuilt = run("inspect", out, "-m", tiny_model, "--reconstruct", "--json")
    assert json.loads(rebuilt.out)["reconstruction"]["text"] == "Mira keeps the lighthouse."
    again = run("write", "-", "-o", out, "-m", tiny_model, "--init", "fitted", "--start", fitted, "--lr", "0.3",
                "--steps", "300", "--skip-existing", "--json", "-q", stdin="Mira keeps the lighthouse.")
    assert json.loads(again.out)["skipped"] == [str(out)]


def test_a_start_of_another_model_or_size_is_refused(run, fitted, other_tiny_model, tiny_model, tmp_path):
    other = run("write", "-", "-o", tmp_path / "o.gmem", "-m", other_tiny_model, "--init", "fitted", "--start",
                fitted, stdin="text")
    assert other.code == 2 and "was fitted for" in other.err and len(other.err.strip().splitlines()) == 1
    size = run("write", "-", "-o", tmp_path / "s.gmem", "-m", tiny_model, "--start", fitted, "--mem-tokens", "4",
               stdin="text")
    assert size.code == 2 and "starts 8 memory vectors" in size.err
    no_start = run("write", "-", "-o", tmp_path / "n.gmem", "-m", tiny_model, "--init", "fitted", stdin="text")
    assert no_start.code == 2 and "--init fitted needs --start" in no_start.err
    mixed = run("write", "-", "-o", tmp_path / "m.gmem", "-m", tiny_model, "--init", "tokens", "--start", fitted,
                stdin="text")
    assert mixed.code == 2 and "--start goes with --init fitted" in mixed.err
    assert not list(tmp_path.glob("*.gmem"))


@pytest.mark.parametrize("damage", ["truncated", "nan", "shapes", "positions", "names", "not-json"])
def test_damaged_start_files_are_one_line_errors(fitted, tmp_path, damage):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = tmp_path / "bad.safetensors"
    tensors = load_file(fitted)
    with safe_open(str(fitted), framework="pt") as fh:
        meta = fh.metadata()
    if damage == "truncated":
        path.write_bytes(fitted.read_bytes()[:200])
    else:
        if damage == "nan":
            tensors["bias"][0, 0] = float("nan")
        elif damage == "shapes":
            tensors["scale"] = torch.ones(3)
        elif damage == "positions":
            tensors["positions"] = torch.ones(3, 4)
        elif damage == "names":
            tensors["extra"] = torch.ones(1)
        else:
            meta = {**meta, "model_fingerprint": "{not json"}
        save_file(tensors, str(path), metadata=meta)
    with pytest.raises(GradmemError) as err:
        read_start(path)
    assert "\n" not in str(err.value)


def test_fit_start_never_overwrites_other_files(run, tiny_model, tmp_path, fitted):
    precious = tmp_path / "notes.safetensors"
    precious.write_text("mine")
    result = run("fit-start", "samples/paragraphs", "-o", precious, "-m", tiny_model, "--force", "--outer-steps", "1")
    assert result.code == 1 and "not a gradmem start file" in result.err and precious.read_text() == "mine"
    existing = run("fit-start", "samples/paragraphs", "-o", fitted, "-m", tiny_model, "--outer-steps", "1")
    assert existing.code == 1 and "--force" in existing.err
    nowhere = run("fit-start", "samples/paragraphs", "-o", tmp_path / "missing" / "s.safetensors", "-m", tiny_model)
    assert nowhere.code == 1 and "no such folder" in nowhere.err and "fitting" not in nowhere.err


def test_the_shipped_start_is_the_default_where_it_fits(tiny_model, other_tiny_model, fitted, monkeypatch):
    lm = load_model(tiny_model, device="cpu")
    monkeypatch.setattr(starts, "shipped_starts", lambda: [fitted])
    digest = read_start(fitted).digest
    cfg = WriteConfig(space="embed").resolve(lm)
    assert cfg.init == "fitted" and cfg.start == digest and cfg.start_weights is not None
    assert WriteConfig(space="embed", init="tokens").resolve(lm).to_dict().get("start") is None
    assert WriteConfig(space="embed", mem_tokens=4).resolve(lm).init == "tokens"  # fitted for m = 8 only
    assert WriteConfig(space="embed", objective="mix").resolve(lm).init == "tokens"  # fitted for reconstruction
    assert WriteConfig(space="embed").resolve(load_model(other_tiny_model, device="cpu")).init == "tokens"


def test_settings_without_a_start_match_older_files(tiny_model):
    """Files written before starts existed record no ``start``; their settings still match."""
    lm = load_model(tiny_model, device="cpu")
    assert "start" not in WriteConfig(space="embed").resolve(lm).to_dict()


def test_save_and_read_round_trip(tiny_model, tmp_path):
    lm = load_model(tiny_model, device="cpu")
    start = Start(8, lm.hidden_size, 16)
    with torch.no_grad():
        start.bias.normal_()
        start.positions.normal_()
    save_start(tmp_path / "s.safetensors", start, lm, {"texts": 1})
    back = read_start(tmp_path / "s.safetensors")
    assert torch.equal(back.bias, start.bias) and torch.equal(back.positions, start.positions)
    assert json.loads(back.meta["fitted"]) == {"texts": 1}
    with pytest.raises(UsageError):
        starts.load_start(tmp_path / "s.safetensors", lm, 4)


def test_the_shipped_start_records_the_texts_in_this_repository():
    """The shipped start is valid, belongs to the default model with 8 vectors, and was fitted on exactly the
    files under samples/start-texts and benchmarks/tuning (by SHA-256), none of them an evaluation text."""
    import hashlib

    (path,) = starts.shipped_starts()
    start = read_start(path)
    assert start.meta["model_id"] == "smollm2-135m-instruct" and tuple(start.bias.shape) == (8, 576)
    assert tuple(start.positions.shape) == (8, 64) and start.positions.abs().max() > 0  # format 1.1, fitted
    fitted = json.loads(start.meta["fitted"])
    files = sorted([*Path("samples/start-texts").glob("*.txt"), *Path("benchmarks/tuning").glob("*.txt")])
    recorded = sorted((s["name"], s["sha256"]) for s in fitted["sources"])
    assert recorded == sorted((f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files)
    assert not any(Path("samples/paragraphs", name).exists() for name, _ in recorded)


def test_the_python_api_fits_and_writes_from_a_start(tiny_model, tmp_path):
    import gradmem_cli as gm

    model = gm.load(tiny_model, device="cpu")
    path = tmp_path / "api.safetensors"
    report = model.fit_start(["Mira keeps the old lighthouse.", "The ferry leaves at nine."], path, outer_steps=2,
                             batch=2, inner_steps=2)
    assert report["segments"] == 2 and path.is_file()
    memory = model.write("Mira keeps the lighthouse.", init="fitted", start=str(path), steps=3)
    assert memory.header.write["start"] == read_start(path).digest
    with pytest.raises(GradmemError, match="--force"):
        model.fit_start(["text"], path, outer_steps=1)


def test_positions_blend_the_segments_tokens_into_each_slot(tiny_model):
    """M0[j] gains sum_i positions[j, i] E[t_i] over the segment's first P tokens (P = 4 here)."""
    lm = load_model(tiny_model, device="cpu")
    ids = lm.tokenize(TEXT)[:10]
    start = Start(8, lm.hidden_size, 4)
    with torch.no_grad():
        start.positions[2, 3] = 0.5
        start.positions[5, 0] = -1.0
    embed = lm.model.get_input_embeddings().weight.detach()
    moved = start(lm, [ids]) - Start(8, lm.hidden_size)(lm, [ids])
    torch.testing.assert_close(moved[0, 2], 0.5 * embed[ids[3]])
    torch.testing.assert_close(moved[0, 5], -embed[ids[0]])
    assert moved[0, [0, 1, 3, 4, 6, 7]].abs().max() == 0
    assert start(lm, [ids[:2]]).shape == (1, 8, lm.hidden_size)  # a segment shorter than P uses what it has


def test_a_format_1_0_start_reads_as_one_without_positions(tiny_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    lm = load_model(tiny_model, device="cpu")
    old = Start(8, lm.hidden_size)
    save_start(tmp_path / "s.safetensors", old, lm, {"texts": 1})
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as fh:
        meta = {**fh.metadata(), "format_version": "1.0"}
        tensors = {name: fh.get_tensor(name) for name in fh.keys() if name != "positions"}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    back = read_start(tmp_path / "old.safetensors")
    assert tuple(back.positions.shape) == (8, 0)
    ids = lm.tokenize(TEXT)[:10]
    assert torch.equal(back(lm, [ids]), old(lm, [ids]))
