"""The GPU work of one device session, as two steps that each fit one device call (see run.md).

    python3 benchmarks/gpu/session.py kv OUT        # polish kv8 (configs/gpu/kv8-polish-cosine.yaml)
    python3 benchmarks/gpu/session.py fit OUT       # fit a start for the default model on project texts
    python3 benchmarks/gpu/session.py babi OUT      # configs/gpu/babi-qa1-gradmem-short.yaml

It calls the library rather than the ``gradmem`` command, because the device's typer does not import
without pydantic. Results and logs go to OUT.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gradmem_cli.engine import fit_start_file  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.memory.documents import read_inputs  # noqa: E402
from gradmem_cli.training.checkpoint_eval import steps_table  # noqa: E402
from gradmem_cli.training.config import load_config  # noqa: E402
from gradmem_cli.training.loop import train  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402
from gradmem_cli.writers.fitting import FitConfig  # noqa: E402

# The project's own prose (never an evaluation text: benchmarks/start_steps.py checks the overlap).
FIT_TEXTS = ["samples/start-texts", "benchmarks/tuning"]


def kv(out: Path) -> None:
    cfg = load_config(Path("configs/gpu/kv8-polish-cosine.yaml"), ["out=/tmp/kv8-polish"])
    result = train(cfg, command="benchmarks/gpu/session.py kv")
    fresh = {name: steps_table(path, pairs=8, samples=1000, seed=777, device="cuda")
             for name, path in (("polished", "/tmp/kv8-polish/best"), ("shipped", "samples/models/kv8-gradmem"))}
    (out / "kv8-polish.json").write_text(json.dumps({"result": result.__dict__, "fresh_seed_777": fresh}, indent=1))


def fit(out: Path) -> None:
    log = (out / "fit-start.log").open("w")
    fit_cfg = FitConfig(outer_steps=50, batch=64, inner_steps=24, outer_lr=0.01)
    started = time.perf_counter()

    def on_step(step) -> None:
        print(json.dumps({**step.__dict__, "seconds": round(time.perf_counter() - started, 1)}), file=log, flush=True)

    write = WriteConfig(mem_tokens=8, segment_tokens=64, init="tokens", batch_tokens=8192)
    lm = load_model("smollm2-135m-instruct", device="cuda", quiet=True)
    report = fit_start_file(lm, read_inputs(FIT_TEXTS), out / "smollm2-135m-instruct-m8.safetensors", write, fit_cfg,
                            on_step=on_step, command="gradmem fit-start " + " ".join(FIT_TEXTS)
                            + " -o smollm2-135m-instruct-m8.safetensors --outer-steps 50 --batch 64 --inner-steps 24 "
                              "--outer-lr 0.01 --batch-tokens 8192 --device cuda")
    print(json.dumps(report), file=log, flush=True)


def babi(out: Path) -> None:
    cfg = load_config(Path("configs/gpu/babi-qa1-gradmem-short.yaml"), ["out=/tmp/babi-short"])
    result = train(cfg, command="benchmarks/gpu/session.py babi")
    (out / "babi-qa1-short.json").write_text(json.dumps(result.__dict__, indent=1))


if __name__ == "__main__":
    {"kv": kv, "fit": fit, "babi": babi}[sys.argv[1]](Path(sys.argv[2]))
