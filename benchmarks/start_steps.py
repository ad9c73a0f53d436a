"""Steps to an exact rebuild from the token start against a fitted start, on passages the start never saw.

Each held-out passage (samples/paragraphs and the SQuAD-mini contexts: about 80-120 tokens, so two
64-token segments) is written with gradmem's default settings twice in the same run: once from the
token start (``--init tokens``) and once from a start file (``--init fitted --start FILE``). A
passage's steps are summed over its segments; a write counts when greedy decoding from the memory
alone rebuilds the passage exactly. Prints per-passage rows, the medians and the ratio.

    .venv/bin/python benchmarks/start_steps.py --start FILE [--device cpu] [--limit N] [--batch-tokens 2048]
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
    parser.add_argument("--start", type=Path, required=True, help="a start file (gradmem fit-start)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=None, help="the first N passages only")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--fitted-on", type=Path, nargs="*", default=[ROOT / "samples" / "start-texts", TUNING],
                        help="the folders the start was fitted on (checked for overlap with the passages)")
    args = parser.parse_args()
    lm = load_model(args.model, device=args.device, quiet=True)
    passages = held_out()[:args.limit]
    runs = {}
    for name, cfg in (("tokens", WriteConfig(init="tokens", batch_tokens=args.batch_tokens)),
                      ("fitted", WriteConfig(init="fitted", start=str(args.start), batch_tokens=args.batch_tokens))):
        runs[name] = write_all(lm, passages, cfg)
        log(f"{name}: {runs[name][1]:.1f} s")
    for passage, _ in passages:
        log(json.dumps({"passage": passage, **{k: runs[k][0][passage] for k in runs}}))
    print(f"model {lm.spec} on {lm.model.device}, default settings (64-token segments, 8 vectors), "
          f"{len(passages)} held-out passages, start {args.start.name}; 8-word runs they share with the texts "
          f"it was fitted on: {shared_runs(passages, args.fitted_on)}")
    print("| start | steps per passage, summed over segments: median (range) | rebuilt exactly | seconds, batched |")
    print("|---|---|---|---|")
    for name, (rows, seconds) in runs.items():
        steps = [r["steps"] for r in rows.values()]
        exact = sum(r["exact"] for r in rows.values())
        print(f"| {name} | {spread(steps)} | {exact}/{len(rows)} | {seconds:.1f} |")
    ratios = [runs["tokens"][0][p]["steps"] / max(1, runs["fitted"][0][p]["steps"]) for p, _ in passages]
    print(f"tokens / fitted steps per passage: {spread(ratios)}")


if __name__ == "__main__":
    main()
