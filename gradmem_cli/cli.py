"""The ``gradmem`` command line: thin wrappers over :mod:`gradmem_cli.engine`.

Data goes to stdout, progress and errors to stderr. Heavy imports (torch, transformers) happen
inside the commands, after ``--offline`` has set ``HF_HUB_OFFLINE``, which Hugging Face reads at
import time; this also keeps ``--help`` fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from gradmem_cli import __version__
from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.write import WriteConfig

app = typer.Typer(
    help="Write documents into a few memory vectors by test-time gradient descent; answer from them later.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Hugging Face id, model folder, .gguf file or alias "
                 "[default: $GRADMEM_MODEL or smollm2-135m-instruct]"),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="Model dtype: float32, bfloat16 or float16.")]
ReadDtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="Model dtype [default: the one the memory was written in].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables on stderr.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]


def write_options(command):
    """Give a command one option per WriteConfig field and hand them to it as ``cfg: WriteConfig``.

    The dataclass is the single source of names, defaults and help texts, so ``write`` and ``eval``
    cannot drift apart.
    """
    fields = [f for f in dataclasses.fields(WriteConfig) if f.metadata.get("cli", True)]
    hints = typing.get_type_hints(WriteConfig)
    extra = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                          annotation=Annotated[hints[f.name], typer.Option(help=f.metadata["help"])])
        for f in fields
    ]
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "cfg"]

    @functools.wraps(command)
    def wrapper(**kwargs):
        cfg = WriteConfig(**{f.name: kwargs.pop(f.name) for f in fields}).validate()
        return command(cfg=cfg, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)
    return wrapper


def _setup(offline: bool) -> None:
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _emit_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _check_writable(folder: Path) -> None:
    """Fail before the (slow) write if the output folder cannot take a file."""
    if not folder.is_dir():
        raise GradmemError(f"cannot write to {folder}: no such folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".gradmem-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise GradmemError(f"cannot write to {folder}: {exc.strerror}") from None


def _output_paths(inputs: list[str], docs: list, output: Optional[Path]) -> list[Path]:
    """Where each document's .gmem goes: the ``-o`` file, the ``-o`` folder, or next to each input.

    ``-o`` names a file only for a single input file or stdin; for several inputs or a folder it is
    always a folder, so the same command means the same thing whatever the folder holds.
    """
    into_folder = len(inputs) > 1 or any(Path(i).is_dir() for i in inputs if i != "-")
    if output is None:
        if any(d.path is None for d in docs):
            raise UsageError("-o/--output is required when reading from stdin")
        paths = [d.path.with_suffix(".gmem") for d in docs]
    elif not into_folder and not output.is_dir():
        paths = [output]
    else:
        if output.exists() and not output.is_dir():
            raise UsageError(f"with several inputs or a folder -o must be a folder, and {output} is a file")
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GradmemError(f"cannot create folder {output}: {exc.strerror}") from None
        paths = [output / f"{d.stem}.gmem" for d in docs]
    for folder in {p.parent for p in paths}:
        _check_writable(folder)
    return paths


def _claim_outputs(docs: list, paths: list[Path], force: bool) -> list:
    """Refuse outputs that would destroy data, before any work; return what is at each path now.

    An output that is one of the inputs (the same file under any name or link) is refused, and so
    is any existing file that is not a ``.gmem``: a memory never holds its text, so that text would
    be gone. An existing ``.gmem`` is replaced only with ``--force`` (gzip's rule). The returned
    states let the save refuse a file that another process created or changed meanwhile.
    """
    from gradmem_cli.fileio import file_state
    from gradmem_cli.memfile import is_memory_file

    inputs = [d.path for d in docs if d.path is not None]
    states = []
    for path in paths:
        if path.exists() or path.is_symlink():
            if any(os.path.samefile(path, p) for p in inputs if path.exists()):
                raise GradmemError(f"refusing to write {path}: it is an input of this write and would be lost")
            if not path.is_file():
                raise GradmemError(f"cannot write to {path}: not a regular file")
            if not is_memory_file(path):
                raise GradmemError(f"refusing to overwrite {path}: it is not a .gmem memory file")
            if not force:
                raise GradmemError(f"{path} already exists (use --force to overwrite it)")
        states.append(file_state(path))
    return states


@app.command()
@write_options
def write(
    inputs: Annotated[list[str], typer.Argument(help="Text files, folders (their *.txt) or - for stdin.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .gmem, or a folder for several inputs "
                                                   "[default: next to each input]")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    cfg: WriteConfig = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing .gmem files (never any other file).")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Write text into memory vectors and save them as .gmem files (the text itself is not stored)."""
    _setup(offline)
    from gradmem_cli import documents, engine, memfile
    from gradmem_cli.models import load_model
    from gradmem_cli.progress import console, make_progress

    docs = documents.read_inputs(inputs)
    paths = _output_paths(inputs, docs, output)
    states = _claim_outputs(docs, paths, force)
    lm = load_model(model, device=device, dtype=dtype, quiet=quiet)
    cfg = cfg.resolve(lm)
    out_of = {id(d): (p, state) for d, p, state in zip(docs, paths, states)}
    reports = []
    with make_progress(quiet) as progress:
        tasks: dict[int, int] = {}

        def on_step(doc, seg, stats) -> None:
            if id(doc) not in tasks:
                tasks[id(doc)] = progress.add_task(doc.name, total=None, status="")
            status = f"seg {seg + 1} step {stats.step} loss {stats.loss:.3f} acc {stats.accuracy:.3f}"
            progress.update(tasks[id(doc)], status=status, advance=1 if stats.done else 0)
            if stats.done and not quiet and not console.is_terminal:  # a log line where no bar can show
                console.print(f"{doc.name}: segment {seg + 1} done, {status}", highlight=False)

        for doc, mem, report in engine.memorize(lm, docs, cfg, on_step):
            path, state = out_of[id(doc)]
            memfile.save(path, mem.memory, mem.header, expected=state)
            report.output = str(path)
            reports.append(report)
            progress.update(tasks[id(doc)], total=report.segments, completed=report.segments)
            if not quiet and cfg.init != "learned" and min(report.accuracy) < cfg.target_acc:
                console.print(f"[yellow]warning:[/yellow] {doc.name}: not every segment reached "
                              f"--target-acc {cfg.target_acc} in {cfg.steps} steps (accuracy {report.accuracy})")
    if json_out:
        _emit_json({"files": [r.to_dict() for r in reports]})
    elif not quiet:
        for r in reports:
            console.print(f"{r.input} -> {r.output}: {r.tokens} tokens, {r.segments} segment(s), "
                          f"steps {r.steps}, accuracy {r.accuracy}, {r.seconds:.1f} s")


@app.command()
def ask(
    file: Annotated[Path, typer.Argument(help="A .gmem memory file.")],
    question: Annotated[str, typer.Argument(help="The question, or - to read one question per line from stdin.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Override the model named in the file "
                                                 "(refused unless it is the same model).")] = None,
    device: DeviceOpt = "auto",
    dtype: ReadDtypeOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy; above 0 samples.")] = 0.0,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute the memory prefix for every question.")] = False,
    via: Annotated[str, typer.Option(help="memory: read the vectors directly; text: first rebuild the text from "
                                     "memory (greedy), then answer with it in the prompt.")] = "memory",
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Answer a question from a memory file alone (the source text is not needed)."""
    _setup(offline)
    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    if temperature < 0:
        raise UsageError("--temperature must be 0 or more")
    if via not in ("memory", "text"):
        raise UsageError("--via must be memory or text")
    from gradmem_cli import engine, memfile
    from gradmem_cli.read import Reader, with_context

    questions = [q.strip() for q in sys.stdin] if question == "-" else [question.strip()]
    questions = [q for q in questions if q]
    if not questions:
        raise GradmemError("no question given")
    mem = memfile.load(file)
    lm = engine.load_reader_model(mem, model, device, dtype, quiet)
    rebuild_seconds = None
    if via == "text":
        start = time.perf_counter()
        rebuilt = lm.decode(engine.rebuild(lm, mem))
        rebuild_seconds = round(time.perf_counter() - start, 4)
        reader, frame = Reader(lm, None), lambda q: with_context(rebuilt, q)
    else:
        reader, frame = engine.open_reader(lm, mem, use_cache=not no_cache), lambda q: q

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    for q in questions:
        answer = reader.answer(frame(q), max_new_tokens=max_new_tokens, temperature=temperature,
                               on_text=None if json_out else stream, seed=seed)
        if json_out:
            _emit_json({"file": str(file), "question": q, "answer": answer.text, "model": lm.spec, "via": via,
                        "rebuild_seconds": rebuild_seconds,
                        "tokens": answer.tokens, "seconds": round(answer.seconds, 4),
                        "first_token_seconds": None if answer.first_token_seconds is None
                        else round(answer.first_token_seconds, 4)})
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()


@app.command("inspect")
def inspect_(
    file: Annotated[Path, typer.Argument(help="A .gmem memory file.")],
    reconstruct: Annotated[bool, typer.Option("--reconstruct", help="Rebuild the text from memory alone (loads the model).")] = False,
    against: Annotated[Optional[Path], typer.Option(help="Compare the rebuilt text with this source file (implies --reconstruct).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Override the model named in the file.")] = None,
    device: DeviceOpt = "auto",
    dtype: ReadDtypeOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Show a memory file's metadata and sizes; optionally rebuild its text from memory."""
    _setup(offline)
    from gradmem_cli import documents, engine, memfile

    mem = memfile.load(file)
    source_text = documents.read_document(against).text if against else None
    result: dict = {"file": str(file), "header": dataclasses.asdict(mem.header),
                    "sizes": engine.sizes(mem, file.stat().st_size)}
    if reconstruct or against:
        lm = engine.load_reader_model(mem, model, device, dtype, quiet)
        rebuilt = engine.rebuild(lm, mem)
        result["reconstruction"] = {"text": lm.decode(rebuilt)}
        if source_text is not None:
            result["reconstruction"].update(engine.compare(lm, rebuilt, source_text))
    if json_out:
        _emit_json(result)
        return
    from gradmem_cli.views import show_inspect

    show_inspect(result)


def _parse_conditions(value: str, task: str) -> tuple[str, ...]:
    from gradmem_cli.evaluate import CONDITIONS

    chosen = tuple(c.strip() for c in value.split(",") if c.strip())
    if task == "recon" and "via-text" in chosen:
        raise UsageError("--conditions via-text does not apply to recon (it is the memory condition there)")
    unknown = [c for c in chosen if c not in CONDITIONS]
    if unknown or not chosen:
        raise UsageError(f"--conditions takes a comma-separated list of {', '.join(CONDITIONS)}")
    return tuple(c for c in CONDITIONS if c in chosen)


def _write_json_file(path: Path, lines: list[object]) -> None:
    from gradmem_cli.fileio import atomic_write_bytes

    data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise GradmemError(f"cannot write {path}: {exc.strerror or exc}") from None


@app.command("eval")
@write_options
def eval_(
    task: Annotated[str, typer.Argument(help="kv, babi, squad, qa or recon.")],
    data: Annotated[Optional[Path], typer.Option(help="Your own data: JSONL (kv: context/query/target; qa, babi, "
                                                 "squad: context/question/answers; recon: text or a folder of .txt); "
                                                 "squad also takes the official SQuAD v1.1 JSON.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use at most N examples (generators draw N; default 20).")] = None,
    pairs: Annotated[int, typer.Option(help="kv generator: key-value pairs per context.")] = 8,
    babi_task: Annotated[str, typer.Option("--task", help="babi generator: qa1..qa5.")] = "qa1",
    conditions: Annotated[str, typer.Option(help="Comma-separated: memory, no-context, full-context, and "
                                            "via-text (rebuild the text from memory, then answer with it).")]
    = "memory,no-context,full-context",
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Most tokens per generated answer "
                                                          "[default: 24; kv 4; recon the text's length].")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also save the result JSON here.")] = None,
    log_samples: Annotated[Optional[Path], typer.Option(help="Write one JSON line per example "
                                                        "(inputs, outputs, scores) here.")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    cfg: WriteConfig = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Evaluate memory against no-context and full-context answers on a task; same seed, same numbers."""
    _setup(offline)
    chosen = _parse_conditions(conditions, task)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    for path in (output, log_samples):
        if path is not None:
            _check_writable(path.parent if str(path.parent) else Path("."))
    import torch
    import transformers

    from gradmem_cli import evaluate
    from gradmem_cli.models import load_model
    from gradmem_cli.progress import make_progress
    from gradmem_cli.tasks import data as task_data

    dataset = task_data.load(task, data, limit, cfg.seed, pairs=pairs, babi_task=babi_task)
    lm = load_model(model, device=device, dtype=dtype, quiet=quiet)
    cfg = cfg.resolve(lm)
    default_tokens = {"kv": 4, "recon": 1}.get(task, 24)  # recon sizes each answer by its text
    opts = evaluate.EvalOptions(task=task, conditions=chosen, max_new_tokens=max_new_tokens or default_tokens)
    samples: list[dict] = []
    with make_progress(quiet) as progress:
        bars = {c: progress.add_task(c, total=len(dataset.examples), status="") for c in chosen}
        result = evaluate.evaluate(lm, dataset, cfg, opts,
                                   on_progress=lambda c, done: progress.update(bars[c], completed=done),
                                   on_sample=samples.append)
    result["config"] = {
        "task": task, "data": dataset.source, "limit": limit, "pairs": pairs if task == "kv" else None,
        "babi_task": babi_task if task == "babi" else None, "conditions": list(chosen),
        "max_new_tokens": opts.max_new_tokens, "seed": cfg.seed, "write": cfg.to_dict(),
        "model": lm.spec, "model_fingerprint": dataclasses.asdict(lm.fingerprint), "device": str(lm.device),
        "dtype": lm.dtype_name, "gradmem_version": __version__, "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    if output:
        _write_json_file(output, [result])
    if log_samples:
        _write_json_file(log_samples, samples)
    if json_out:
        _emit_json(result)
    elif not quiet:
        from gradmem_cli.views import show_eval

        show_eval(result)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML file of training settings (see configs/ and "
                                                     "gradmem_cli/train.py TrainConfig).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting: KEY=VALUE (repeatable), "
                                                      "e.g. --set max_steps=500 --set out=runs/x.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Meta-train a model to write into memory (GradMem), or a baseline; resumes a run already in its folder."""
    import shlex

    from gradmem_cli import train as training

    cfg = training.load_config(config, set_ or [])
    result = training.train(cfg, command=shlex.join(["gradmem", *sys.argv[1:]]))
    if json_out:
        _emit_json(dataclasses.asdict(result))


@app.command("train-eval")
def train_eval(
    model: Annotated[str, typer.Argument(help="A checkpoint folder written by gradmem train.")],
    pairs: Annotated[int, typer.Option(help="Key-value pairs per generated sample.")] = 8,
    data: Annotated[Optional[Path], typer.Option(help="A JSONL file of kv samples to use instead of generated ones.")] = None,
    steps: Annotated[str, typer.Option(help="Write steps K_eval to try: a list (1,2,5) or a range (1-10) "
                                       "[default: the K it was trained with].")] = "",
    samples: Annotated[int, typer.Option(help="Generated samples.")] = 1000,
    seed: SeedOpt = 12345,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 250,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Teacher-forced key-value EM of a trained checkpoint for each number of write steps (the paper's heat map)."""
    _setup(offline)
    from gradmem_cli import metamodel

    rows = metamodel.steps_table(model, pairs=pairs, data=data, steps=steps, samples=samples, seed=seed,
                                batch_size=batch_size, device=device)
    if json_out:
        _emit_json({"model": model, "rows": rows})
        return
    from gradmem_cli.views import show_steps_table

    show_steps_table(model, rows)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradmem {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """gradmem: compress a document into a few memory vectors and ask it questions later."""


def main() -> None:
    """Entry point: one-line errors, exit 1 (2 for usage errors); GRADMEM_DEBUG=1 shows tracebacks."""
    debug = os.environ.get("GRADMEM_DEBUG", "") not in ("", "0")
    try:
        # Without standalone mode typer returns the exit code of typer.Exit, which is also how
        # it reports Ctrl-C (130).
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130:
                print("error: interrupted", file=sys.stderr)
            sys.exit(code)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors: bad option values, missing arguments
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except GradmemError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except Exception as exc:  # an unexpected failure: still one line unless debugging
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (set GRADMEM_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
