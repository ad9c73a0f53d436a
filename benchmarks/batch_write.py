"""Writing a folder of short documents: batched against one by one.

32 short documents (one or two sentences of the sample paragraphs each) are written four ways,
all with gradmem's default settings:

- ``cli-one-by-one``: ``gradmem write DOC -o OUT`` once per document (what a shell loop pays,
  model loading included);
- ``cli-batched``: one ``gradmem write FOLDER -o OUT`` (its default: one worker process per CPU core,
  each batching the segments of its documents);
- ``engine-one-by-one`` / ``engine-batched``: the same inside one process with the model loaded
  once, which isolates the effect of batching from the model loading.

Every memory is checked to rebuild its document exactly. Prints throughput and the ratios.

    .venv/bin/python benchmarks/batch_write.py [--docs 32] [--engine-only | --cli-only]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, Timer, log, texts  # noqa: E402
from gradmem_cli.memory import memfile  # noqa: E402
from gradmem_cli.memory.documents import Document  # noqa: E402
from gradmem_cli.engine import memorize, rebuild  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402


def short_documents(count: int) -> list[str]:
    sentences = [s for _, t in texts() for s in re.split(r"(?<=[.!?])\s+", t.strip())]
    docs, i = [], 0
    while len(docs) < count and i < len(sentences):
        doc = sentences[i] if len(sentences[i].split()) > 12 else " ".join(sentences[i:i + 2])
        i += 1 if len(sentences[i].split()) > 12 else 2
        docs.append(doc)
    return docs


def engine_run(lm, docs: list[str], batched: bool) -> tuple[float, int]:
    cfg = WriteConfig().resolve(lm)
    items = [Document.from_text(f"doc{i:02d}", text) for i, text in enumerate(docs)]
    exact = 0
    with Timer() as t:
        groups = [items] if batched else [[d] for d in items]
        mems = [(d, m) for group in groups for d, m, _ in memorize(lm, group, cfg)]
    for doc, mem in mems:
        exact += lm.decode(rebuild(lm, mem)) == doc.text
    return t.seconds, exact


def cli_modes(folder: Path, out: Path, results: dict[str, float]) -> None:
    """One ``gradmem write`` per document, then one for the whole folder (model loading included)."""
    gradmem = str(Path(sys.executable).with_name("gradmem"))
    (out / "one").mkdir()
    with Timer() as t:
        for path in sorted(folder.glob("*.txt")):
            subprocess.run([gradmem, "write", str(path), "-o", str(out / "one" / f"{path.stem}.gmem"), "-q"],
                           check=True)
    results["cli-one-by-one"] = t.seconds
    log(f"cli-one-by-one: {t.seconds:.1f} s")
    with Timer() as t:
        subprocess.run([gradmem, "write", str(folder), "-o", str(out / "batched"), "-q"], check=True)
    results["cli-batched"] = t.seconds
    log(f"cli-batched: {t.seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "batch_write")
    parser.add_argument("--engine-only", action="store_true", help="skip the two CLI modes")
    parser.add_argument("--cli-only", action="store_true", help="skip the two in-process modes")
    args = parser.parse_args()
    docs = short_documents(args.docs)
    shutil.rmtree(args.out, ignore_errors=True)
    folder = args.out / "docs"
    folder.mkdir(parents=True)
    for i, text in enumerate(docs):
        (folder / f"doc{i:02d}.txt").write_text(text)
    results: dict[str, float] = {}
    exact: dict[str, int] = {}
    if not args.engine_only:
        cli_modes(folder, args.out, results)
    lm = load_model(device="cpu", quiet=True)
    for mode in results:
        out = args.out / ("one" if mode == "cli-one-by-one" else "batched")
        exact[mode] = sum(lm.decode(rebuild(lm, memfile.load(out / f"doc{i:02d}.gmem"))) == text
                          for i, text in enumerate(docs))
        log(f"{mode}: {exact[mode]}/{len(docs)} rebuilt exactly")
    for mode, batched in () if args.cli_only else (("engine-one-by-one", False), ("engine-batched", True)):
        results[mode], exact[mode] = engine_run(lm, docs, batched)
        log(f"{mode}: {results[mode]:.1f} s, {exact[mode]}/{len(docs)} rebuilt exactly")
    tokens = sum(len(lm.tokenize(d)) for d in docs)
    print(f"{len(docs)} documents, {tokens} tokens in all ({tokens / len(docs):.0f} per document), default settings")
    print("| mode | seconds | documents per minute | rebuilt exactly |")
    print("|---|---|---|---|")
    for mode, seconds in results.items():
        print(f"| {mode} | {seconds:.1f} | {60 * len(docs) / seconds:.2f} | {exact[mode]}/{len(docs)} |")
    for kind in ("cli", "engine"):
        if f"{kind}-batched" in results:
            print(f"batched / one-by-one throughput, {kind}: "
                  f"{results[f'{kind}-one-by-one'] / results[f'{kind}-batched']:.2f}x")


if __name__ == "__main__":
    main()
