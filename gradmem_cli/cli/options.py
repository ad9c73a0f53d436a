"""Options the commands share, the write options generated from :class:`WriteConfig`, and output helpers."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from gradmem_cli.errors import GradmemError
from gradmem_cli.writers.config import WriteConfig, cli_fields

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Hugging Face id, model folder, .gguf file or alias "
                                       "[default: $GRADMEM_MODEL or smollm2-135m-instruct]"),
]
ReadModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="The model to read with [default: the one the file names, if it is a built-in "
                                       "alias or $GRADMEM_MODEL]; refused unless it is the model that wrote the file."),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="Model dtype: float32, bfloat16 or float16.")]
ReadDtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="Model dtype [default: the one the memory was written in].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables on stderr.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]


def write_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command one option per WriteConfig field and hand them to it as ``cfg: WriteConfig``.

    The dataclass is the single source of names, defaults and help texts, so ``write`` and ``eval``
    cannot drift apart.
    """
    fields = cli_fields()
    hints = typing.get_type_hints(WriteConfig)
    extra = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                          annotation=Annotated[hints[f.name], typer.Option(help=f.metadata["help"])])
        for f in fields
    ]
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "cfg"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        cfg = WriteConfig(**{f.name: kwargs.pop(f.name) for f in fields}).validate()
        return command(cfg=cfg, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)
    return wrapper


def setup(offline: bool) -> None:
    """Before any Hugging Face import: offline mode (read at import time), quiet tokenizers."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def emit_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def write_json_lines(path: Path, lines: list[object]) -> None:
    """A result file, written atomically (it replaces what the user named, as ``-o`` means)."""
    from gradmem_cli.memory.fileio import atomic_write_bytes

    data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise GradmemError(f"cannot write {path}: {exc.strerror or exc}") from None
