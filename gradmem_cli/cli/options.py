"""Options the commands share, the write options generated from :class:`WriteConfig`, and output helpers."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from gradmem_cli.errors import UsageError
from gradmem_cli.writers.config import WriteConfig

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Hugging Face id, model folder, .gguf file or alias "
                                       "(default: $GRADMEM_MODEL or smollm2-135m-instruct)"),
]
ReadModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="The model to read with (default: the one the file names, if it is a built-in "
                                       "alias or $GRADMEM_MODEL); refused unless it is the model that wrote the file."),
]
ReaderOpt = Annotated[
    Optional[Path],
    typer.Option("--reader", help="A trained reader folder (gradmem train-reader): a LoRA switched on only while "
                                  "answering; memories are still written and rebuilt by the frozen model."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run already in the out folder (without it, "
                                                          "a folder that holds a run is refused; nothing is wiped).")]


@dataclass(frozen=True)
class RunOptions:
    """Where and how a command runs: the options every model-loading command shares."""

    device: str
    dtype: str | None
    json: bool
    quiet: bool
    offline: bool


def _inject(command: Callable[..., Any], param: str, extra: list[inspect.Parameter],
            build: Callable[[dict[str, Any]], Any]) -> Callable[..., Any]:
    """Give ``command`` the options ``extra`` in place of its parameter ``param``, which receives
    ``build`` of their values."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != param]
    names = [p.name for p in extra]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        _finite(kwargs)
        value = build({name: kwargs.pop(name) for name in names})
        return command(**{param: value}, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)
    return wrapper


def _finite(options: dict[str, Any]) -> None:
    """Every float option is a finite number (click takes "nan" and "inf" as floats, and every range
    check is false for NaN); ranges are checked by each config's ``validate`` and each command."""
    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, not {value}")


def _option(name: str, annotation: Any, default: Any, *decls: str, **kwargs: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, typer.Option(*decls, **kwargs)])


def config_options(cls: type, param: str = "cfg") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One option per field of the config dataclass ``cls`` (except those marked ``cli: False``),
    handed to the command as ``param``: an instance, validated.

    The dataclass is the single source of names, defaults and help texts, so commands that share a
    config (``write`` and ``eval``) cannot drift apart.
    """
    hints = typing.get_type_hints(cls)
    chosen = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    extra = [_option(f.name, hints[f.name], f.default, help=f.metadata["help"]) for f in chosen]
    return lambda command: _inject(command, param, extra, lambda values: cls(**values).validate())


write_options = config_options(WriteConfig)


def run_options(read: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--device, --dtype, --json, --quiet and --offline, handed to the command as ``run: RunOptions``
    after offline mode is set up. Readers default their dtype to the memory's."""
    dtype = (_option("dtype", Optional[str], None, "--dtype", help="Model dtype (default: the one the memory was "
                                                                   "written in).") if read else
             _option("dtype", str, "float32", "--dtype", help="Model dtype: float32, bfloat16 or float16."))
    extra = [
        _option("device", str, "auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
        dtype,
        _option("json", bool, False, "--json", help="Print a JSON result on stdout."),
        _option("quiet", bool, False, "--quiet", "-q", help="No progress or tables on stderr."),
        _option("offline", bool, False, "--offline", help="Never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1)."),
    ]

    def build(values: dict[str, Any]) -> RunOptions:
        setup(values["offline"])
        return RunOptions(**values)

    return lambda command: _inject(command, "run", extra, build)


def setup(offline: bool) -> None:
    """Before any Hugging Face import: offline mode (read at import time), quiet tokenizers."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Characters JSON leaves raw (json.dumps escapes C0 only) that a terminal may act on: DEL, C1 (0x9B is a
# CSI), bidi overrides and line separators; escaped as \uXXXX, which any JSON reader reads back the same.
_TERMINAL_ACTIVE = re.compile("[\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def emit_json(obj: object) -> None:
    text = _TERMINAL_ACTIVE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
