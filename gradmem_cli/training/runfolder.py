"""A training run's folder: its config, logs and checkpoints, and the state that makes resume exact.

Layout::

    config.yaml            the resolved TrainConfig (a resume must agree with it)
    command.txt            every command line that started or resumed the run
    train.log              human-readable log; metrics.jsonl: one JSON record per log/eval
    checkpoints/step-N/    model/ (a checkpoint folder, or a reader folder) and state/ (resume
                           only: optimizer and RNG tensors in safetensors, step/stage/best in JSON)
    latest                 the name of the newest complete checkpoint
    best/                  the checkpoint folder with the best held-out EM at the final pair count

Checkpoints appear atomically (a temporary folder, then a rename, then the ``latest`` pointer), so
a run killed at any moment resumes from its last complete checkpoint. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from gradmem_cli.errors import UsageError
from gradmem_cli.fileio import MAX_CONFIG_BYTES, atomic_write_bytes, loads_json, read_capped
from gradmem_cli.memory.outputs import FolderKind, claim_folder

if TYPE_CHECKING:
    from gradmem_cli.training.config import TrainConfig

# Fields a resumed run may change; any other difference from the saved config is refused.
# (A moved folder, a memory store elsewhere, a longer run: the same training.)
RESUMABLE_CHANGES = {"out", "memories", "cached_only", "max_steps", "eval_every", "log_every", "threads",
                     "keep_checkpoints", "stop_em", "max_minutes", "device", "eval_batch_size"}


# What a run folder holds (the module docstring; ``memories``: a reader run's default memory store).
ENTRIES = {"config.yaml", "command.txt", "train.log", "metrics.jsonl", "checkpoints", "latest", "best", "memories",
           ".latest.tmp", ".best.tmp"}


def run_kind(cls: type, noun: str) -> FolderKind:
    """Run folders of the command whose settings are the dataclass ``cls``: only the entries a run
    folder has, and a ``config.yaml`` whose keys are all settings of ``cls``."""
    import yaml

    fields = {f.name for f in dataclasses.fields(cls)}

    def recognise(folder: Path) -> bool:
        names = {p.name for p in folder.iterdir()}
        if not names <= ENTRIES or "config.yaml" not in names:
            return False
        try:
            saved = yaml.safe_load(read_capped(folder / "config.yaml", MAX_CONFIG_BYTES))
        except Exception:  # unreadable, not YAML: not a run folder
            return False
        return isinstance(saved, dict) and "out" in saved and set(saved) <= fields

    return FolderKind(noun, recognise)


def write_state(folder: Path, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_file(tensors, str(folder / "training_state.safetensors"))
    meta = {**meta, "param_groups": state["param_groups"]}
    (folder / "trainer_state.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "training_state.safetensors"))
    meta = loads_json(read_capped(folder / "trainer_state.json", MAX_CONFIG_BYTES))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return meta


class Run:
    """A run folder (see the module docstring); only the main process writes to it."""

    def __init__(self, cfg: TrainConfig | Any, main_process: bool = True):
        self.cfg = cfg
        self.root = Path(cfg.out)
        self.main = main_process

    def claim(self, kind: FolderKind, resume: bool, inputs: Iterable[Path | str] = ()) -> None:
        """Before any work: the out folder is new, empty, or (with ``resume``) a run of this command;
        another folder is refused (:func:`~gradmem_cli.memory.outputs.claim_folder`)."""
        if self.main:
            claim_folder(self.root, kind, inputs, resume)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        folder = self.checkpoints / pointer.read_text().strip()
        return folder if (folder / "state" / "trainer_state.json").is_file() else None

    def check_config(self) -> None:
        """Refuse to resume with settings that change what is being trained."""
        import yaml

        saved_path = self.root / "config.yaml"
        if not saved_path.is_file():
            return
        saved = yaml.safe_load(saved_path.read_text()) or {}
        current = self.cfg.to_dict()
        changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k, current[k]) != current[k])
        if changed:
            raise UsageError(f"{self.root} holds a run with different settings ({', '.join(changed)}); "
                             "choose another out folder")

    def start(self, command: str) -> None:
        import yaml

        if not self.main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode())
        with open(self.root / "command.txt", "a") as fh:
            fh.write(command + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop metric records newer than the checkpoint a resume starts from."""
        path = self.root / "metrics.jsonl"
        if not self.main or not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if line and loads_json(line).get("step", 0) <= step]
        atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())

    def log(self, message: str, record: dict[str, Any] | None = None) -> None:
        if not self.main:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, file=sys.stderr, flush=True)
        with open(self.root / "train.log", "a") as fh:
            fh.write(line + "\n")
        if record is not None:
            with open(self.root / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def save(self, write_model: Callable[[Path], None], optimizer: torch.optim.Optimizer, meta: dict[str, Any],
             best: bool) -> None:
        """Write checkpoint ``step-N`` atomically (temp folder, rename, then the ``latest`` pointer);
        ``write_model(folder)`` writes what the checkpoint holds (a model folder, a reader folder)."""
        if not self.main:
            return
        name = f"step-{meta['step']:08d}"
        tmp = self.checkpoints / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write_model(tmp / "model")
        write_state(tmp / "state", optimizer, meta)
        final = self.checkpoints / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = self.root / ".latest.tmp"
        pointer.write_text(name + "\n")
        os.replace(pointer, self.root / "latest")
        if best:
            tmp_best = self.root / ".best.tmp"
            shutil.rmtree(tmp_best, ignore_errors=True)
            shutil.copytree(final / "model", tmp_best)
            shutil.rmtree(self.root / "best", ignore_errors=True)
            os.replace(tmp_best, self.root / "best")
        kept = sorted(p for p in self.checkpoints.iterdir() if p.name.startswith("step-"))
        for old in kept[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


