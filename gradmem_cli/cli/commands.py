"""The ``gradmem`` commands: parse options, call the engine, print.

Data goes to stdout, progress and errors to stderr. Heavy imports (transformers) happen inside
the commands, after ``--offline`` has set ``HF_HUB_OFFLINE``, which Hugging Face reads at import
time.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gradmem_cli.cli.options import (
    JsonOpt, ModelOpt, ReadModelOpt, ReaderOpt, ResumeOpt, RunOptions, SeedOpt, config_options, emit_json, run_options,
    write_options,
)
from gradmem_cli.cli.summary import SUMMARY
from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.tasks import TASKS
from gradmem_cli.training.selfstudy import SelfStudyConfig
from gradmem_cli.version import __version__
from gradmem_cli.writers.config import WriteConfig
from gradmem_cli.writers.fitting import FitConfig

app = typer.Typer(
    help=SUMMARY,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
@write_options
@run_options()
def write(
    inputs: Annotated[list[str], typer.Argument(help="Text files, folders (their *.txt) or - for stdin.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .gmem, or a folder for several inputs "
                                                   "or a folder input (default: next to each input).")] = None,
    model: ModelOpt = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing .gmem files (never any other file).")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Leave alone every output that already holds "
                                                "this text's memory, written by this model with these settings.")]
    = False,
    workers: Annotated[int, typer.Option(help="Processes for several documents (each loads the model once and uses "
                                         "cores/N threads); 0 (the default): one per CPU core on the CPU, one on a GPU.")]
    = 0,
    cfg: WriteConfig = None,
    run: RunOptions = None,
) -> None:
    """Write text into memory vectors and save them as .gmem files (the text itself is not stored).

    Under torchrun each process writes its share of the (sorted) documents and rank 0 reports them all.
    """
    from gradmem_cli.cli.progress import WriteBars, console, plain
    from gradmem_cli.engine.folders import write_files

    with WriteBars(run.quiet, cfg.target_acc) as bars:
        written = write_files(inputs, output, cfg, model=model, device=run.device, dtype=run.dtype, force=force,
                              skip_existing=skip_existing, workers=workers, quiet=run.quiet, watcher=bars)
    if written is None:
        return
    if run.json:
        emit_json({"files": written.files, "skipped": written.skipped})
    elif not run.quiet:
        for r in written.files:
            console.print(f"{plain(r['input'])} -> {plain(r['output'])}: {r['tokens']} tokens, {r['segments']} "
                          f"segment(s), steps {r['steps']}, accuracy {r['accuracy']}, {r['seconds']:.1f} s")
        if written.skipped:
            console.print(f"skipped {len(written.skipped)} file(s) that already hold their memory (--skip-existing)")


def _warn(message: str, quiet: bool) -> None:
    from gradmem_cli.cli.progress import console, plain

    if not quiet:
        console.print(f"[yellow]warning:[/yellow] {plain(message, 1000)}", highlight=False)  # its file strings are cut


@app.command()
@run_options(read=True)
def ask(
    file: Annotated[Path, typer.Argument(help="A .gmem memory file.")],
    question: Annotated[str, typer.Argument(help="The question, or - to read one question per line from stdin.")],
    model: ReadModelOpt = None,
    reader: ReaderOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy; above 0 samples.")] = 0.0,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute the memory prefix for every question.")] = False,
    via: Annotated[str, typer.Option(help="memory: read the vectors directly; text: first rebuild the text from "
                                     "memory (greedy), then answer with it in the prompt; none: answer without "
                                     "the memory (the no-context answer, for comparison).")] = "memory",
    seed: SeedOpt = 0,
    run: RunOptions = None,
) -> None:
    """Answer a question from a memory file alone (the source text is not needed)."""
    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    if temperature < 0:
        raise UsageError("--temperature must be 0 or more")
    from gradmem_cli import engine

    if via not in engine.VIAS:
        raise UsageError(f"--via must be one of {', '.join(engine.VIAS)}")
    from gradmem_cli.memory import memfile
    from gradmem_cli.memory.documents import read_questions

    questions = read_questions(sys.stdin.buffer) if question == "-" else [question.strip()]
    if not any(questions):
        raise GradmemError("no question given")
    mem = memfile.load(file)
    lm = engine.load_reader_model(mem, model, run.device, run.dtype, run.quiet, reader=reader)
    asker = engine.open_asker(lm, mem, via, use_cache=not no_cache)
    for q in questions:  # every question against the window before the first answer
        asker.check(q, max_new_tokens)

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    for q in questions:
        answer = asker.answer(q, max_new_tokens=max_new_tokens, temperature=temperature,
                              on_text=None if run.json else stream, seed=seed)
        if run.json:
            emit_json({"file": str(file), "question": q, "answer": answer.text, "model": lm.spec, "via": via,
                       "reader": str(reader) if reader else None,
                       "rebuild_seconds": asker.rebuild_seconds, "tokens": answer.tokens,
                       "seconds": round(answer.seconds, 4),
                       "first_token_seconds": None if answer.first_token_seconds is None
                       else round(answer.first_token_seconds, 4)})
        else:
            stream("\n")


@app.command("inspect")
@run_options(read=True)
def inspect_(
    file: Annotated[Path, typer.Argument(help="A .gmem memory file.")],
    reconstruct: Annotated[bool, typer.Option("--reconstruct", help="Rebuild the text from memory alone (loads the model).")] = False,
    against: Annotated[Optional[Path], typer.Option(help="Compare the rebuilt text with this source file (implies --reconstruct).")] = None,
    model: ReadModelOpt = None,
    run: RunOptions = None,
) -> None:
    """Show a memory file's metadata and sizes; optionally rebuild its text from memory."""
    from gradmem_cli import engine
    from gradmem_cli.memory import memfile
    from gradmem_cli.memory.documents import read_document

    mem = memfile.load(file)
    source_text = read_document(against).text if against else None
    result: dict = {"file": str(file), "header": dataclasses.asdict(mem.header),
                    "sizes": engine.sizes(mem, file.stat().st_size)}
    if reconstruct or against:
        lm = engine.load_reader_model(mem, model, run.device, run.dtype, run.quiet)
        rebuilt = engine.rebuild(lm, mem)
        result["reconstruction"] = {"text": lm.decode(rebuilt)}
        if source_text is not None:
            result["reconstruction"].update(engine.compare(lm, rebuilt, source_text))
    if run.json:
        emit_json(result)
        return
    from gradmem_cli.cli.views import show_inspect

    show_inspect(result)


def _parse_conditions(value: str, task: str) -> tuple[str, ...]:
    from gradmem_cli.evaluation.harness import CONDITIONS

    chosen = tuple(c.strip() for c in value.split(",") if c.strip())
    if task == "recon" and "via-text" in chosen:
        raise UsageError("--conditions via-text does not apply to recon (it is the memory condition there)")
    unknown = [c for c in chosen if c not in CONDITIONS]
    if unknown or not chosen:
        raise UsageError(f"--conditions takes a comma-separated list of {', '.join(CONDITIONS)}")
    return tuple(c for c in CONDITIONS if c in chosen)


TASK_HELP = "; ".join(f"{t.name}: {t.help}" for t in TASKS.values())
DATA_HELP = "; ".join(f"{t.name}: {t.data_help}" for t in TASKS.values())


@app.command("eval")
@write_options
@run_options()
def eval_(
    task: Annotated[str, typer.Argument(help=f"The task. {TASK_HELP}.")],
    data: Annotated[Optional[Path], typer.Option(help=f"Your own data instead of the built-in set. {DATA_HELP}.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use at most N examples (generators draw N; default 20).")] = None,
    pairs: Annotated[int, typer.Option(help="kv generator: key-value pairs per context.")] = 8,
    variant: Annotated[str, typer.Option("--task", help="babi generator: qa1..qa5.")] = "qa1",
    split: Annotated[str, typer.Option(help="babi generator: the split's stories and questions, train, val or test "
                                       "(apart by random stream and by entity combination).")] = "test",
    conditions: Annotated[str, typer.Option(help="Comma-separated: memory, no-context, full-context; via-text "
                                            "(rebuild the text from memory, then answer with it); kv-last and kv-snap "
                                            "(forward-only baselines at the memory's size: the last m tokens of the "
                                            "text's own KV cache per segment, or the m it attends to most).")]
    = "memory,no-context,full-context",
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Most tokens per generated answer (default: the task's: "
                                                          + ", ".join(f"{t.name} {t.max_new_tokens}" for t in TASKS.values()
                                                                      if t.name != "recon")
                                                          + "; recon the text's length).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also save the result JSON here.")] = None,
    log_samples: Annotated[Optional[Path], typer.Option(help="Write one JSON line per example "
                                                        "(inputs, outputs, scores) here.")] = None,
    memory_at: Annotated[str, typer.Option(help="Where the memory condition puts the memory: start (before the "
                                           "chat template, as ask does) or context (inside the user turn, where "
                                           "full-context puts the text).")] = "start",
    memories: Annotated[Optional[Path], typer.Option(help="A memory store folder: contexts already written there "
                                                     "with the same model and settings are read from it (each "
                                                     "checked against its text first), the others are written into "
                                                     "it (resumable, shared between runs).")]
    = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing --output or --log-samples file "
                                        "written by gradmem eval (never any other file).")] = False,
    model: ModelOpt = None,
    reader: ReaderOpt = None,
    cfg: WriteConfig = None,
    run: RunOptions = None,
) -> None:
    """Evaluate memory against no-context and full-context answers on a task; same seed, same numbers."""
    chosen = _parse_conditions(conditions, task)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    if memory_at not in ("start", "context"):
        raise UsageError("--memory-at must be start or context")
    from gradmem_cli import engine
    from gradmem_cli.cli.progress import make_progress
    from gradmem_cli.evaluation.harness import EvalOptions, evaluate
    from gradmem_cli.lm import adapter
    from gradmem_cli.lm.loading import load_model
    from gradmem_cli.memory.outputs import EVAL_RESULT, EVAL_SAMPLES, claim_all, claim_folder, write_records
    from gradmem_cli.engine.store import STORE, MemoryStore
    from gradmem_cli.tasks import get_task
    from gradmem_cli.tasks.base import Options

    inputs = [p for p in (data, reader, memories, cfg.start) if p is not None]
    wanted = [(p, kind) for p, kind in ((output, EVAL_RESULT), (log_samples, EVAL_SAMPLES)) if p is not None]
    claims = dict(zip((kind for _, kind in wanted), claim_all(wanted, inputs, force)))
    if memories is not None:
        claim_folder(memories, STORE, [p for p in inputs if p != memories], resume=True)
    spec = get_task(task)
    dataset = spec.load(data, limit, cfg.seed, Options(pairs=pairs, variant=variant, split=split))
    lm = load_model(model, device=run.device, dtype=run.dtype, quiet=run.quiet)
    if reader is not None:
        adapter.load(lm, reader)
    cfg = cfg.resolve(lm)
    store = MemoryStore(memories, lm, cfg, on_rewrite=lambda message: _warn(message, run.quiet)) \
        if memories is not None else None
    opts = EvalOptions(conditions=chosen, max_new_tokens=max_new_tokens, memory_at=memory_at)
    samples: list[dict] = []
    with make_progress(run.quiet) as progress:
        bars = {c: progress.add_task(c, total=len(dataset.examples), status="") for c in chosen}
        result = evaluate(lm, spec, dataset, cfg, opts, on_progress=lambda c, done: progress.update(bars[c], completed=done),
                          on_sample=samples.append, store=store)
    result["config"] = {
        "task": task, "data": dataset.source, "limit": limit, "pairs": pairs if task == "kv" else None,
        "babi_task": variant if task == "babi" else None, "conditions": list(chosen),
        "max_new_tokens": max_new_tokens or spec.max_new_tokens, "seed": cfg.seed, "write": cfg.to_dict(),
        "reader": str(reader) if reader else None, "memories": str(memories) if memories else None,
        "memory_at": memory_at,
        **engine.provenance(lm), "device": str(lm.device),
    }
    if EVAL_RESULT in claims:
        write_records(claims[EVAL_RESULT], EVAL_RESULT, [result])
    if EVAL_SAMPLES in claims:
        write_records(claims[EVAL_SAMPLES], EVAL_SAMPLES, samples)
    if run.json:
        emit_json(result)
    elif not run.quiet:
        from gradmem_cli.cli.views import show_eval

        show_eval(result)


@app.command("fit-start")
@config_options(FitConfig, "fit")
@run_options()
def fit_start(
    inputs: Annotated[list[str], typer.Argument(help="Text files, folders (their *.txt) or - for stdin: the texts to "
                                                "fit on (never the texts you will evaluate on).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The start file to write (safetensors).")],
    model: ModelOpt = None,
    mem_tokens: Annotated[int, typer.Option(help="m: memory vectors the start begins.")] = 8,
    segment_tokens: Annotated[int, typer.Option(help="Segment length, as gradmem write splits texts.")] = 64,
    batch_tokens: Annotated[int, typer.Option(help="Tokens written together per step (raise it on a GPU to "
                                              "write a whole --batch at once).")] = 2048,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing start file (never any other "
                                        "file).")] = False,
    fit: FitConfig = None,
    run: RunOptions = None,
) -> None:
    """Fit a starting point for gradmem write on many texts (Reptile), for one model: --init fitted --start FILE."""
    import shlex

    from gradmem_cli import engine
    from gradmem_cli.cli.progress import console, make_progress, plain
    from gradmem_cli.lm.loading import load_model
    from gradmem_cli.memory.documents import read_inputs
    from gradmem_cli.writers.start import claim_start_output

    cfg = WriteConfig(mem_tokens=mem_tokens, segment_tokens=segment_tokens, batch_tokens=batch_tokens,
                      init="tokens").validate()
    docs = read_inputs(inputs)
    # Before the model loads; the fit checks again before it writes.
    claim_start_output(output, force, [*(d.path for d in docs if d.path is not None), *inputs])
    lm = load_model(model, device=run.device, dtype=run.dtype, quiet=run.quiet)
    with make_progress(run.quiet) as progress:
        bar = progress.add_task("fitting a start", total=fit.outer_steps, status="")
        history: list[dict] = []

        def on_step(step) -> None:
            history.append(dataclasses.asdict(step))
            progress.update(bar, advance=1, status=f"acc {step.accuracy:.3f} solved {step.solved:.2f} "
                                                   f"steps {step.steps:.1f} moved {step.moved:.2f}")
            if not run.quiet and not console.is_terminal:  # a log line per update where no bar can show
                console.print(f"update {step.step + 1}: {progress.tasks[0].fields['status']}", highlight=False)

        report = engine.fit_start_file(lm, docs, output, cfg, fit, on_step, shlex.join(["gradmem", *sys.argv[1:]]),
                                       force)
    if run.json:
        emit_json({**report, "history": history})
    elif not run.quiet:
        console.print(f"{plain(output)}: a start for {plain(report['model'])} fitted on {report['segments']} segments of "
                      f"{report['texts']} texts; last update: {progress.tasks[0].fields['status']}")


@app.command("self-study")
@config_options(SelfStudyConfig, "study")
@run_options()
def self_study(
    inputs: Annotated[list[str], typer.Argument(help="Text files, folders (their *.txt) or - for stdin: the texts to "
                                                "ask about (never the texts you will evaluate on).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The JSONL to write: {format, id, context, "
                                         "question, answers, source} per line, what train-reader's task: qa "
                                         "reads.")],
    model: ModelOpt = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing file written by gradmem "
                                        "self-study (never any other file).")] = False,
    study: SelfStudyConfig = None,
    run: RunOptions = None,
) -> None:
    """Questions and answers the model writes about your texts, to train a reader on (train-reader, task: qa)."""
    from gradmem_cli.cli.progress import console, make_progress, plain
    from gradmem_cli.lm.loading import load_model
    from gradmem_cli.memory.documents import read_inputs
    from gradmem_cli.memory.outputs import SELF_STUDY, claim, write_records
    from gradmem_cli.training.selfstudy import candidates, study as run_study

    docs = read_inputs(inputs)
    # Before the model loads and the questions are written.
    claimed = claim(output, SELF_STUDY, [*(d.path for d in docs if d.path is not None), *inputs], force)
    tried = candidates(docs, study)
    if not tried:
        raise GradmemError(f"no passage of {study.min_words}+ words with a name or quantity to ask about in the input")
    lm = load_model(model, device=run.device, dtype=run.dtype, quiet=run.quiet)
    done = kept = 0
    with make_progress(run.quiet) as progress:
        bar = progress.add_task("writing questions", total=len(tried), status="")

        def on_candidate(candidate) -> None:
            nonlocal done, kept
            done, kept = done + 1, kept + candidate.kept
            progress.update(bar, advance=1, status=f"kept {kept}")
            if not run.quiet and not console.is_terminal and (done % 25 == 0 or done == len(tried)):
                console.print(f"{done}/{len(tried)} candidate answers: {kept} questions kept", highlight=False)

        records = list(run_study(lm, tried, study, on_candidate))
    write_records(claimed, SELF_STUDY, records)
    if run.json:
        emit_json({"output": str(output), "questions": len(records), "candidates": len(tried),
                   "passages": len({r["context"] for r in records}), "texts": len(docs)})
    elif not run.quiet:
        console.print(f"{plain(output)}: {len(records)} questions kept of {len(tried)} candidate answers in {len(docs)} texts")


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML file of training settings (see configs/ and "
                                                     "docs/training.md).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting: KEY=VALUE (repeatable), "
                                                      "e.g. --set max_steps=500 --set out=runs/x.")] = None,
    resume: ResumeOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Meta-train a model to write into memory (GradMem), or a baseline; --resume continues the run in its folder."""
    import shlex

    from gradmem_cli.training.config import load_config
    from gradmem_cli.training.loop import train as run_training

    cfg = load_config(config, set_ or [])
    result = run_training(cfg, command=shlex.join(["gradmem", *sys.argv[1:]]), resume=resume)
    if json_out:
        emit_json(dataclasses.asdict(result))
    _stopped(result.stopped)


def _stopped(reason: str) -> None:
    """A training stopped by a signal (after its checkpoint) exits as the signal asks: 130 or 143."""
    if reason in ("interrupted", "terminated"):
        raise typer.Exit(130 if reason == "interrupted" else 143)


@app.command("train-reader")
def train_reader(
    config: Annotated[Optional[Path], typer.Argument(help="YAML file of reader settings (see configs/reader-*.yaml "
                                                     "and gradmem_cli/training/reader.py).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting: KEY=VALUE (repeatable).")]
    = None,
    resume: ResumeOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a reader (a LoRA on only while reading) for memories the frozen model writes; --resume continues its run."""
    import shlex

    from gradmem_cli.training.config import load_config
    from gradmem_cli.training.reader import ReaderTrainConfig
    from gradmem_cli.training.reader import train_reader as run_training

    cfg = load_config(config, set_ or [], ReaderTrainConfig)
    result = run_training(cfg, command=shlex.join(["gradmem", *sys.argv[1:]]), resume=resume)
    if json_out:
        emit_json(result)
    _stopped(result["stopped"])


def _parse_steps(text: str) -> list[int]:
    """``"1-10"`` or ``"1,2,5"`` as a list of step counts."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            values = list(range(lo, hi + 1))
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--steps {text}: expected a list like 1,2,5 or a range like 1-10") from None
    if not values or min(values) < 0:
        raise UsageError(f"--steps {text}: expected step counts of 0 or more")
    return values


@app.command("train-eval")
@run_options()
def train_eval(
    model: Annotated[str, typer.Argument(help="A checkpoint folder written by gradmem train.")],
    pairs: Annotated[int, typer.Option(help="Key-value pairs per generated sample.")] = 8,
    data: Annotated[Optional[Path], typer.Option(help="A JSONL file of kv samples to use instead of generated ones.")] = None,
    steps: Annotated[str, typer.Option(help="Write steps K_eval to try: a list (1,2,5) or a range (1-10) "
                                       "(default: the K it was trained with).")] = "",
    samples: Annotated[int, typer.Option(help="Generated samples.")] = 1000,
    seed: SeedOpt = 12345,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 250,
    run: RunOptions = None,
) -> None:
    """Teacher-forced key-value EM of a trained checkpoint for each number of write steps (the paper's heat map)."""
    from gradmem_cli.training.checkpoint_eval import steps_table

    rows = steps_table(model, pairs=pairs, data=data, steps=_parse_steps(steps) if steps else None, samples=samples,
                       seed=seed, batch_size=batch_size, device=run.device, dtype=run.dtype)
    if run.json:
        emit_json({"model": model, "rows": rows})
        return
    from gradmem_cli.cli.views import show_steps_table

    show_steps_table(model, rows)


@app.command()
def models(json_out: JsonOpt = False) -> None:
    """The built-in model aliases and whether their packages are installed here."""
    from gradmem_cli.lm.loading import ALIASES, DEFAULT_MODEL, alias_installed

    rows = [{"alias": name, "default": name == DEFAULT_MODEL, "installed": alias_installed(alias),
             "install": alias.install} for name, alias in ALIASES.items()]
    if json_out:
        emit_json({"models": rows})
        return
    for r in rows:
        mark = "installed" if r["installed"] else f"not installed: {r['install']}"
        typer.echo(f"{r['alias']}{' (default)' if r['default'] else ''}\t{mark}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradmem {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """gradmem: compress a document into a few memory vectors and ask it questions later."""
