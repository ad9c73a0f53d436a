"""Steps to an exact rebuild under several write settings side by side, on passages no start saw.

Each held-out passage (samples/paragraphs and the SQuAD-mini contexts: about 80-120 tokens, so two
64-token segments) is written once per *arm* in the same run. An arm is a name and the write settings
it changes (``gradmem write`` options as ``key=value``); without ``--arm`` the arms are

- ``before``: the token start with one cosine decay over 400 steps (the defaults before the fitted
  start and the cycles: ``init=tokens cycle=0 warmup=0.1``);
- ``tokens``: the token start with today's schedule (``init=tokens``);
- ``fitted``: ``--start FILE`` (default: the start gradmem ships) with today's schedule.

A passage's steps are summed over its segments; a write counts when greedy decoding from the memory
alone rebuilds the passage exactly. Prints per-passage rows, the medians and each arm's ratio to the first.

    .venv/bin/python benchmarks/start_steps.py [--start FILE] [--arm NAME KEY=VALUE ...]... [--limit N]
                                               [--folder benchmarks/tuning]   # tune on other texts
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PARAGRAPHS, ROOT, TUNING, Timer, exact_rebuilds, log, spread, texts  # noqa: E402
from gradmem_cli.engine import memorize  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.memory.documents import Document  # noqa: E402
from gradmem_cli.tasks.base import word_runs  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402

SQUAD_MINI = Path(__file__).resolve().parents[1] / "gradmem_cli" / "data" / "squad_mini.jsonl"


def held_out() -> list[tuple[str, str]]:
    """The evaluation passages: the sample paragraphs and the distinct SQuAD-mini contexts."""
    contexts = dict.fromkeys(json.loads(line)["context"] for line in SQUAD_MINI.read_text().splitlines() if line)
    return texts(PARAGRAPHS) + [(f"squad{i:02d}", c) for i, c in enumerate(contexts)]


def shared_runs(passages: list[tuple[str, str]], folders: list[Path], n: int = 8) -> int:
    """How many n-word runs the held-out passages share with the texts the start was fitted on."""
    fitted = set().union(*(word_runs(f.read_text(), n) for folder in folders for f in sorted(folder.glob("*.txt"))))
    return sum(len(word_runs(text, n) & fitted) for _, text in passages)


def write_all(lm, passages: list[tuple[str, str]], cfg: WriteConfig) -> tuple[dict[str, dict], float]:
    """Every passage written in one batched run; per passage its summed steps and whether it rebuilds."""
    docs = [Document.from_text(name, text) for name, text in passages]
    rows = {}
    with Timer() as t:
        written = list(memorize(lm, docs, cfg.resolve(lm)))
    for (doc, _, report), exact in zip(written, exact_rebuilds(lm, written)):
        rows[doc.name] = {"steps": sum(report.steps), "segments": report.segments, "exact": exact}
    return rows, t.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=Path, default=None,
                        help="the start file of the default 'fitted' arm (default: the start gradmem ships)")
    parser.add_argument("--arm", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                        help="an arm: its name, then the write settings it changes (repeat for more arms)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=None, help="the first N passages only")
    parser.add_argument("--folder", type=Path, default=None,
                        help="write the *.txt of this folder instead of the held-out passages (e.g. benchmarks/tuning "
                             "to tune settings)")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--fitted-on", type=Path, nargs="*", default=[ROOT / "samples" / "start-texts", TUNING],
                        help="the folders the starts were fitted on (checked for overlap with the passages)")
    args = parser.parse_args()
    fitted = ["init=fitted"] + ([f"start={args.start}"] if args.start else [])
    arms = {name: dict(arm(kv) for kv in settings) for name, *settings in
            args.arm or [["before", "init=tokens", "cycle=0", "warmup=0.1"], ["tokens", "init=tokens"],
                         ["fitted", *fitted]]}
    lm = load_model(args.model, device=args.device, quiet=True)
    passages = (texts(args.folder) if args.folder else held_out())[:args.limit]
    runs = {}
    for name, settings in arms.items():
        runs[name] = write_all(lm, passages, WriteConfig(**{"batch_tokens": args.batch_tokens, **settings}))
        log(f"{name}: {runs[name][1]:.1f} s")
    for passage, _ in passages:
        log(json.dumps({"passage": passage, **{k: runs[k][0][passage] for k in runs}}))
    where = args.folder or "held-out"
    print(f"model {lm.spec} on {lm.model.device}, gradmem write defaults but for each arm's settings, "
          f"{len(passages)} {where} passages; 8-word runs they share with the texts the starts were fitted on: {shared_runs(passages, args.fitted_on)}")
    print("| arm | settings | steps per passage, summed over segments: median (range) | rebuilt exactly | "
          "seconds, batched |")
    print("|---|---|---|---|---|")
    for name, (rows, seconds) in runs.items():
        steps = [r["steps"] for r in rows.values()]
        exact = sum(r["exact"] for r in rows.values())
        shown = " ".join(f"{k}={v}" for k, v in arms[name].items()) or "defaults"
        print(f"| {name} | {shown} | {spread(steps)} | {exact}/{len(rows)} | {seconds:.1f} |")
    first = next(iter(runs))
    for name in list(runs)[1:]:
        ratios = [runs[first][0][p]["steps"] / max(1, runs[name][0][p]["steps"]) for p, _ in passages]
        print(f"{first} / {name} steps per passage: {spread(ratios)}")


def arm(setting: str) -> tuple[str, object]:
    """``key=value`` as a WriteConfig field and its value (numbers as numbers)."""
    import yaml

    key, sep, value = setting.partition("=")
    if not sep or key not in WriteConfig.__dataclass_fields__:
        raise SystemExit(f"--arm: expected KEY=VALUE with a gradmem write setting, got {setting!r}")
    return key, yaml.safe_load(value) if key != "start" else value


if __name__ == "__main__":
    main()
