"""Time to first token of `ask` from each memory space, against the full text in the prompt; and sizes.

A 512-token text (the sample paragraphs joined, cut at 512 tokens) is written once per memory space
with that space's default settings (kept in out/ask_latency, reused while the text is unchanged). Then,
for several questions and repeats, in one process, side by side:

- ``full-context``: the text and the question in the prompt, prefilled for every question;
- ``SPACE memory, cached``: gradmem's `ask` path, the memory read into the cache once and the cache cut
  back to it after each question;
- ``SPACE memory, first question``: the same, with reading the memory counted in.

Also prints each .gmem's size against the KV cache of the text, and checks that cached and uncached
reads give the same greedy answers.

    .venv/bin/python benchmarks/ask_latency.py [--repeats 3] [--spaces embed kv] > benchmarks/results/ask_latency.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, log, median, spread, texts  # noqa: E402
from gradmem_cli import engine  # noqa: E402
from gradmem_cli.memory import memfile  # noqa: E402
from gradmem_cli.memory.documents import Document  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.lm.generate import Reader  # noqa: E402
from gradmem_cli.lm.spaces import SPACES  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402

QUESTIONS = ["Who owns the bakery?", "When does the bakery open?", "What does Jonas make on Fridays?",
             "Who led the glacier survey?", "What was found in the ice?"]


def first_token(reader: Reader, question: str) -> float:
    return reader.answer(question, max_new_tokens=1).first_token_seconds


def written(lm, doc: Document, space: str, folder: Path) -> memfile.MemoryFile:
    """The text's memory in ``space`` (default settings), written once and reused while the text is unchanged."""
    path = folder / f"text-{space}.gmem"
    if not path.exists() or memfile.load(path).header.source["sha256"] != doc.sha256:
        folder.mkdir(parents=True, exist_ok=True)
        log(f"writing the text once in {space} space (default settings) ...")
        ((_, mem, report),) = engine.memorize(lm, [doc], WriteConfig(space=space).resolve(lm))
        memfile.save(path, mem.memory, mem.header)
        log(f"  {report.segments} segments, steps {report.steps}, {report.seconds:.0f} s")
    return memfile.load(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "ask_latency")
    args = parser.parse_args()
    lm = load_model(args.model, device="cpu", quiet=True)
    text = lm.decode(lm.tokenize(" ".join(t for _, t in texts()))[: args.tokens])
    doc = Document.from_text(f"text{args.tokens}", text)
    memories = {space: written(lm, doc, space, args.out) for space in args.spaces}
    readers = {space: engine.open_reader(lm, mem) for space, mem in memories.items()}
    plain = Reader(lm, None)
    times: dict[str, list[float]] = {"full-context": []}
    for _ in range(args.repeats):
        for q in QUESTIONS:
            times["full-context"].append(first_token(plain, f"{text}\n\n{q}"))
            for space, mem in memories.items():
                times.setdefault(f"{space} memory, cached", []).append(first_token(readers[space], q))
                start = time.perf_counter()
                fresh = engine.open_reader(lm, mem)
                times.setdefault(f"{space} memory, first question", []).append(
                    first_token(fresh, q) + time.perf_counter() - start)
    print(f"model {lm.spec}, {args.tokens}-token text, {len(QUESTIONS)} questions x {args.repeats} repeats; "
          "time to first token in seconds, median (range); command: benchmarks/ask_latency.py "
          + " ".join(sys.argv[1:]))
    print()
    print("| read | TTFT | / full-context |")
    print("|---|---|---|")
    base = median(times["full-context"])
    for name, values in times.items():
        print(f"| {name} | {spread(values)} | {median(values) / base:.3f} |")
    print()
    for space, mem in memories.items():
        uncached = engine.open_reader(lm, mem, use_cache=False)
        same = all(readers[space].answer(q, max_new_tokens=16).text == uncached.answer(q, max_new_tokens=16).text
                   for q in QUESTIONS)
        sizes = engine.sizes(mem, (args.out / f"text-{space}.gmem").stat().st_size)
        print(f"- {space}: .gmem {sizes['file_bytes']} B ({mem.header.segments} segments x {mem.header.mem_tokens} "
              f"slots, {mem.memory.dtype}); KV cache of the text {sizes['kv_cache_bytes']} B, "
              f"{sizes['kv_to_file_ratio']}x the file; cached and uncached greedy answers identical: {same}")


if __name__ == "__main__":
    main()
