"""Folder writes on several processes: worker processes, torchrun shards, --skip-existing, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST
from gradmem_cli.memory import memfile


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(4):
        (src / f"n{i}.txt").write_text(f"Note {i}: the spare key for door {i} is under the blue pot.")
    return src


def _memories(out: Path) -> dict[str, torch.Tensor]:
    return {p.name: memfile.load(p).memory for p in sorted(out.glob("*.gmem"))}


def test_workers_write_what_a_serial_run_writes(run, folder, tiny_model, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert run("write", folder, "-o", serial, "-m", tiny_model, *FAST, "--workers", "1", "-q").code == 0
    result = run("write", folder, "-o", parallel, "-m", tiny_model, *FAST, "--workers", "2", "--json", "-q")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert sorted(f["output"] for f in report["files"]) == [str(parallel / f"n{i}.gmem") for i in range(4)]
    a, b = _memories(serial), _memories(parallel)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [(memfile.load(serial / k).header.steps, memfile.load(parallel / k).header.steps) for k in a]
    assert all(x == y for x, y in steps)


def test_skip_existing_leaves_current_files_alone(run, folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    assert run("write", folder, "-o", out, "-m", tiny_model, *FAST, "-q").code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gmem")}
    again = json.loads(run("write", folder, "-o", out, "-m", tiny_model, *FAST, "--skip-existing", "--json", "-q").out)
    assert again["files"] == [] and len(again["skipped"]) == 4
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gmem")} == before
    (folder / "n2.txt").write_text("A changed note.")
    stale = run("write", folder, "-o", out, "-m", tiny_model, *FAST, "--skip-existing", "-q")
    assert stale.code == 1 and "n2.gmem already exists" in stale.err  # a stale memory is replaced only with --force
    forced = json.loads(run("write", folder, "-o", out, "-m", tiny_model, *FAST, "--skip-existing", "--force",
                            "--json", "-q").out)
    assert [f["input"] for f in forced["files"]] == [str(folder / "n2.txt")] and len(forced["skipped"]) == 3
    other = json.loads(run("write", folder, "-o", out, "-m", tiny_model, *FAST, "--seed", "3", "--skip-existing",
                           "--force", "--json", "-q").out)
    assert len(other["files"]) == 4  # other write settings: nothing is current


def test_torchrun_shards_the_folder(folder, tiny_model, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "gradmem_cli", "write", str(folder), "-o",
                           str(out), "-m", tiny_model, *FAST, "--json", "-q"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0 alone reports, for every rank
    assert sorted(f["output"] for f in report["files"]) == [str(out / f"n{i}.gmem") for i in range(4)]
    assert len(proc.stdout.strip().splitlines()) == 1


def test_interrupt_keeps_finished_files_and_no_partial_one(folder, tiny_model, tmp_path):
    for i in range(4, 12):
        (folder / f"n{i}.txt").write_text(f"Another note {i}, a little longer than the others, about door {i}.")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gradmem_cli", "write", str(folder), "-o", str(out), "-m",
                             tiny_model, "--lr", "0.3", "--steps", "300", "--workers", "2", "-q"],
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(out.glob("*.gmem")) and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, as in a terminal
    _, err = proc.communicate(timeout=120)
    finished = list(out.glob("*.gmem"))
    assert proc.returncode in (130, 0), err
    if proc.returncode == 130:  # (the stop may land after the last file: then all 12 are kept, as they should be)
        assert "interrupted" in err
    assert finished and all(memfile.load(p).memory.shape[0] >= 1 for p in finished)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
