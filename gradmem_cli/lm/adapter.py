"""A trained reader: a LoRA adapter on a frozen model that is switched on only while it reads.

Writing (test-time optimisation) and rebuilding stay with the frozen model, so every ``.gmem`` that
model wrote can be read with the adapter. On disk a reader is a folder:

- ``gradmem_reader.json``: :class:`ReaderConfig` (the base model's fingerprint, the LoRA shape, how
  and on what it was trained);
- ``adapter_model.safetensors``: the LoRA weights (PEFT's names and layout).

A reader folder is untrusted input like a ``.gmem``: only these two files are read, the LoRA is
built from validated fields (never from a config that could name code or other files), and a
reader for another base model is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradmem_cli.errors import GradmemError, shown
from gradmem_cli.lm.fingerprint import Fingerprint
from gradmem_cli.fileio import read_config_json

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel

READER_JSON = "gradmem_reader.json"
READER_WEIGHTS = "adapter_model.safetensors"
READER_FORMAT = "gradmem.reader"
READER_FORMAT_VERSION = "1.0"
ADAPTER = "reader"


@dataclass
class ReaderConfig:
    """What a reader is; saved as ``gradmem_reader.json``."""

    base_model: str
    """The model it reads for (the ``--model`` value it was trained on)."""
    base_fingerprint: dict[str, Any]
    """That model's fingerprint; a reader loads only onto the same model."""
    rank: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA scale numerator (the update is scaled by alpha / rank)."""
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names the LoRA attaches to."""
    training: dict[str, Any] = field(default_factory=dict)
    """How it was trained: task, data, steps, held-out scores (informational)."""
    format: str = READER_FORMAT
    format_version: str = READER_FORMAT_VERSION

    @property
    def memory_space(self) -> str | None:
        """The memory space this reader reads (readers trained before spaces existed read embedding
        memories); None for a reader of text in the prompt (``input: context``), which reads any space's
        rebuilt text."""
        if self.training.get("input", "memory") != "memory":
            return None
        space = self.training.get("space", "embed")
        return space if isinstance(space, str) else "embed"

    def validate(self) -> ReaderConfig:
        ok = (isinstance(self.rank, int) and not isinstance(self.rank, bool) and 1 <= self.rank <= 4096
              and isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
              and 0 < self.alpha <= 1e6 and isinstance(self.targets, list) and self.targets
              and all(isinstance(t, str) and t.replace("_", "").isalnum() for t in self.targets)
              and isinstance(self.base_model, str) and isinstance(self.base_fingerprint, dict)
              and isinstance(self.training, dict))
        if not ok:
            raise GradmemError("corrupt reader config (rank, alpha, targets, base_fingerprint or training)")
        return self


def attach(lm: LoadedModel, cfg: ReaderConfig) -> None:
    """Put a fresh (zero-effect) LoRA reader on ``lm.model``, switched off until :func:`reading`."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.targets), lora_dropout=0.0,
                      bias="none")
    try:
        inject_adapter_in_model(lora, lm.model, adapter_name=ADAPTER)
    except ValueError as exc:  # no module of that name
        raise GradmemError(f"cannot attach a reader: {str(exc).splitlines()[0]}") from None
    lm.reader = cfg
    _switch(lm.model, False)


def _lora_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _switch(model: torch.nn.Module, on: bool) -> None:
    for layer in _lora_layers(model):
        layer.enable_adapters(on)


@contextmanager
def reading(lm: LoadedModel) -> Iterator[None]:
    """The reader (if any) is on inside this block and off again after it."""
    if lm.reader is None:
        yield
        return
    _switch(lm.model, True)
    try:
        yield
    finally:
        _switch(lm.model, False)


def reader_parameters(lm: LoadedModel) -> list[torch.nn.Parameter]:
    """The LoRA weights, made trainable (everything else stays frozen)."""
    params = [p for name, p in lm.model.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    return params


def save(lm: LoadedModel, folder: Path) -> None:
    """Write the reader of ``lm`` to ``folder`` (created; files replaced)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in get_peft_model_state_dict(lm.model, adapter_name=ADAPTER).items()}
    save_file(state, str(folder / READER_WEIGHTS), metadata={"format": READER_FORMAT})
    (folder / READER_JSON).write_text(json.dumps(dataclasses.asdict(lm.reader), indent=2) + "\n")


def read_config(folder: Path) -> ReaderConfig:
    path = Path(folder) / READER_JSON
    if not path.exists():
        raise GradmemError(f"{folder} is not a reader folder (no {READER_JSON})")
    return read_config_json(path, ReaderConfig, READER_FORMAT, READER_FORMAT_VERSION, "reader config")


def load(lm: LoadedModel, folder: Path | str) -> ReaderConfig:
    """Attach the reader saved in ``folder`` to ``lm``; refused for another base model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_config(folder)
    try:
        reason = Fingerprint.from_dict(cfg.base_fingerprint).mismatch(lm.fingerprint)
    except (KeyError, TypeError, ValueError):
        raise GradmemError(f"{folder}: corrupt reader config (base_fingerprint)") from None
    if reason:
        raise GradmemError(f"reader mismatch: {folder} reads for '{shown(cfg.base_model)}', not '{lm.spec}' ({reason})")
    try:
        state = load_file(str(folder / READER_WEIGHTS))
    except Exception as exc:  # missing, truncated or not safetensors
        raise GradmemError(f"{folder / READER_WEIGHTS}: cannot load the reader weights "
                           f"({shown(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})") from None
    attach(lm, cfg)
    result = set_peft_model_state_dict(lm.model, state, adapter_name=ADAPTER)
    if result.unexpected_keys or any("lora_" in k for k in result.missing_keys):
        raise GradmemError(f"{folder}: the reader weights do not fit the model")
    lm.model.to(lm.device)
    return cfg
