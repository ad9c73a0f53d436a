"""A learned starting point for test-time writes with a frozen model (``--init fitted``).

The token start (``--init tokens``) begins each segment's memory at the embeddings of its first m
tokens. A *start* generalises it slot by slot::

    M0[j] = scale[j] * E[t_j] + mix[j] * mean_i E[t_i] + sum_i positions[j, i] * E[t_i] + bias[j]

(t cycled when shorter than m in the first term; the sum runs over the segment's first P positions),
which is the token start at ``scale = 1, mix = 0, positions = 0, bias = 0``. ``positions`` lets a
slot begin as a weighted blend of the tokens it will have to hold, not only the one at its own place.
Its parameters are fitted on many texts with Reptile (:mod:`writers.fitting`). A start belongs to one
model: its file records the model's fingerprint, and a write uses it only for a model with that
fingerprint and that m.

On disk a start is a safetensors file: tensors ``scale`` [m], ``mix`` [m], ``bias`` [m, d],
``positions`` [m, P] (format 1.1; a 1.0 file has none, which reads as P = 0) and string metadata
(format, the model's id and fingerprint, how it was fitted). Loading it never runs
code; every defect is a one-line error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradmem_cli.errors import GradmemError, UsageError, shown
from gradmem_cli.lm.fingerprint import Fingerprint
from gradmem_cli.fileio import FileState, atomic_write_bytes, loads_json, open_safetensors
from gradmem_cli.memory.outputs import Claim, Kind, claim

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel

START_FORMAT = "gradmem.start"
START_FORMAT_VERSION = "1.1"
TENSORS = ("bias", "mix", "scale")  # every start has these
OPTIONAL = ("positions",)  # since 1.1


class Start(torch.nn.Module):
    """The start's parameters, and M0 for a batch of segments."""

    def __init__(self, mem_tokens: int, hidden: int, positions: int = 0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(mem_tokens))
        self.mix = torch.nn.Parameter(torch.zeros(mem_tokens))
        self.positions = torch.nn.Parameter(torch.zeros(mem_tokens, positions))
        self.bias = torch.nn.Parameter(torch.zeros(mem_tokens, hidden))
        self.meta: dict[str, str] = {}
        self.digest = ""  # "sha256:<16 hex>" of the file it was loaded from; what a .gmem records

    @property
    def mem_tokens(self) -> int:
        return int(self.bias.shape[0])

    def forward(self, lm: LoadedModel, segments: list[list[int]]) -> torch.Tensor:
        """M0 for each segment: [len(segments), m, d] in float32, on the model's device."""
        weight = lm.model.get_input_embeddings().weight.detach()
        slots = torch.arange(self.mem_tokens, device=weight.device)
        embedded = [weight[torch.tensor(ids, device=weight.device)].float() for ids in segments]  # one lookup each
        own = torch.stack([e[slots % len(e)] for e in embedded])  # E[t_j], t cycled when shorter than m
        mean = torch.stack([e.mean(0) for e in embedded])
        blend = torch.stack([self.positions[:, :len(e)] @ e[:self.positions.shape[1]] for e in embedded])
        return (self.scale[None, :, None] * own + self.mix[None, :, None] * mean[:, None, :] + blend
                + self.bias[None])


def _metadata(lm: LoadedModel, fitted: dict[str, Any]) -> dict[str, str]:
    return {"format": START_FORMAT, "format_version": START_FORMAT_VERSION, "model_id": lm.spec,
            "model_fingerprint": json.dumps(dataclasses.asdict(lm.fingerprint)), "fitted": json.dumps(fitted)}


def is_start_file(path: Path) -> bool:
    """Whether ``path`` holds a valid start file (of any model)."""
    try:
        read_start(path)
    except GradmemError:
        return False
    return True


START = Kind("a gradmem start file", is_start_file)


def claim_start_output(path: Path, force: bool, inputs: Iterable[Path | str] = ()) -> Claim:
    """The start file to write (:func:`~gradmem_cli.memory.outputs.claim`: an existing start file only
    with ``force``, never anything else). Checked before a fit, which can take hours, and again when it
    saves (the publish fails if the file changed meanwhile)."""
    return claim(path, START, inputs, force)


def save_start(path: Path, start: Start, lm: LoadedModel, fitted: dict[str, Any],
               expected: FileState | None | bool = True) -> None:
    """Write a start file atomically (``expected``: see :func:`fileio.atomic_write_bytes`)."""
    from safetensors.torch import save

    tensors = {name: getattr(start, name).detach().to("cpu", torch.float32).contiguous()
               for name in TENSORS + OPTIONAL}
    try:
        atomic_write_bytes(Path(path), save(tensors, metadata=_metadata(lm, fitted)), expected)
    except OSError as exc:
        raise GradmemError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_start(path: Path | str) -> Start:
    """A start file, validated (format, tensor names, shapes, finite values), not yet tied to a model."""
    path = Path(path)
    with open_safetensors(path, "start file") as fh:  # metadata that is not JSON: "not a valid start file"
        meta = fh.metadata() or {}
        if meta.get("format") != START_FORMAT:
            raise GradmemError(f"{path} is not a gradmem start file")
        if str(meta.get("format_version", "")).split(".")[0] != START_FORMAT_VERSION.split(".")[0]:
            raise GradmemError(f"{path}: start format {shown(meta.get('format_version'), 20)} is not supported "
                               "by this gradmem")
        names = set(fh.keys())
        if not set(TENSORS) <= names <= set(TENSORS + OPTIONAL):
            raise GradmemError(f"{path}: corrupt start file (expected tensors {', '.join(TENSORS + OPTIONAL)})")
        tensors = {name: fh.get_tensor(name).float() for name in sorted(names)}
        loads_json(meta["model_fingerprint"])
    bias = tensors["bias"]
    m = bias.shape[0] if bias.dim() == 2 else -1
    tensors.setdefault("positions", torch.zeros(max(m, 0), 0))
    positions = tensors["positions"]
    if (m < 0 or tensors["scale"].shape != (m,) or tensors["mix"].shape != (m,) or positions.dim() != 2
            or positions.shape[0] != m):
        raise GradmemError(f"{path}: corrupt start file (tensor shapes do not agree)")
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise GradmemError(f"{path}: corrupt start file (NaN or infinite values)")
    start = Start(m, bias.shape[1], positions.shape[1])
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(start, name).copy_(value)
    start.meta = meta
    start.digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return start


def start_problem(start: Start, lm: LoadedModel, mem_tokens: int) -> str | None:
    """Why ``start`` cannot start writes of ``lm`` with ``mem_tokens`` vectors, or None."""
    try:
        recorded = Fingerprint.from_dict(loads_json(start.meta["model_fingerprint"]))
    except (KeyError, TypeError, ValueError):
        return "it records no valid model fingerprint"
    reason = recorded.mismatch(lm.fingerprint)
    if reason:
        return f"it was fitted for '{shown(start.meta.get('model_id'))}' ({reason})"
    if start.bias.shape[1] != lm.hidden_size:
        return f"its vectors have {start.bias.shape[1]} dimensions, the model {lm.hidden_size}"
    if start.mem_tokens != mem_tokens:
        return f"it starts {start.mem_tokens} memory vectors, not --mem-tokens {mem_tokens}"
    return None


def load_start(path: Path | str, lm: LoadedModel, mem_tokens: int) -> Start:
    """The start file ``path`` for writes of ``lm``, moved to its device; refused if it is another model's."""
    start = read_start(path)
    problem = start_problem(start, lm, mem_tokens)
    if problem:
        raise UsageError(f"--start {path} does not fit this write: {problem}")
    return start.to(lm.model.get_input_embeddings().weight.device)


def shipped_starts() -> list[Path]:
    """The start files gradmem ships (package data ``gradmem_cli/data/starts``)."""
    folder = Path(str(resources.files("gradmem_cli") / "data" / "starts"))
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def shipped_start(lm: LoadedModel, mem_tokens: int) -> Start | None:
    """The start gradmem ships for this model and m, if there is one (the default start)."""
    for path in shipped_starts():
        start = read_start(path)
        if start_problem(start, lm, mem_tokens) is None:
            return start.to(lm.model.get_input_embeddings().weight.device)
    return None
