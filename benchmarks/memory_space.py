"""Where the memory lives, settled by measurement: one row per design point of the kv memory space.

Subcommands (each resumable: a record per passage is appended as it finishes, and passages already
in the output file are skipped, so a stopped run continues where it stopped):

- ``write ARM [KEY=VALUE ...] --texts DIR --out FILE.jsonl``: write every ``*.txt`` of DIR alone, as
  ``gradmem write`` would (one document per run), with the arm's settings (``gradmem write`` options as
  ``key=value``; ``init=pooled`` is this script's own: each kv slot starts as the mean keys and values of
  a contiguous part of the segment). Per passage: tokens, segments, steps (= forward+backward passes of
  each segment), seconds, file bytes, and whether the text is rebuilt exactly by the frozen model from
  the saved file (every token, the first included).
- ``positions --texts DIR --out FILE.jsonl [KEY=VALUE ...]``: how well each segment's text stays
  readable when a several-segment kv memory is read as one: teacher-forced token accuracy of segment s's
  text after its own slots alone (the write geometry), after every segment's slots at consecutive
  positions in text order (how ``ask`` reads them), and after every segment's slots at the same
  positions (each where it was written).
- ``table FILE.jsonl ... [--out FILE.md]``: the summary rows: passages, exact, steps summed per
  passage (median, range), seconds, bytes.

    .venv/bin/python benchmarks/memory_space.py write kv-m2-s256 space=kv mem_tokens=2 segment_tokens=256 \\
        --texts datasets/prose/kv-val --out benchmarks/results/memory_space/val/kv-m2-s256.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import log, median  # noqa: E402
from gradmem_cli.engine import memorize  # noqa: E402
from gradmem_cli.lm import cache  # noqa: E402
from gradmem_cli.lm.generate import reconstruct  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.lm.spaces import SPACES  # noqa: E402
from gradmem_cli.memory import memfile  # noqa: E402
from gradmem_cli.memory.documents import Document, split_segments  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402


def settings(pairs: list[str]) -> dict:
    """``key=value`` pairs as WriteConfig fields (numbers parsed)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def chosen(args: argparse.Namespace) -> list[Path]:
    """The ``*.txt`` of ``--texts``, only those ``--names`` lists if given, at most ``--limit``."""
    files = sorted(args.texts.glob("*.txt"))
    if args.names:
        keep = {line.strip() for line in args.names.read_text().splitlines() if line.strip() and not line.startswith("#")}
        files = [f for f in files if f.stem in keep]
    return files[: args.limit]


def done_names(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["name"] for line in path.read_text().splitlines() if line.strip()}


def append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


TOKENS_START = SPACES["kv"].tokens_start


def pooled_start(lm, ids: list[int], m: int) -> torch.Tensor:
    """Each of the m slots: the mean keys (unrotated) and values of one of m contiguous parts of the segment."""
    everything = TOKENS_START(lm, ids, len(ids))  # [len, width]: every token's own keys and values
    return torch.stack([part.mean(0) for part in torch.tensor_split(everything, m)])


def write(args: argparse.Namespace) -> None:
    options = settings(args.settings)
    pooled = options.get("init") == "pooled"
    if pooled:
        options["init"] = "tokens"
        SPACES["kv"].tokens_start = pooled_start  # in this process only
    lm = load_model(args.model, device=args.device, quiet=True)
    cfg = WriteConfig(**options).resolve(lm)
    done = done_names(args.out)
    for path in chosen(args):
        if path.stem in done:
            continue
        doc = Document.from_text(path.stem, path.read_text())
        start = time.perf_counter()
        _, mem, report = next(iter(memorize(lm, [doc], cfg)))
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "m.gmem"
            size = memfile.save(saved, mem.memory, mem.header, expected=None)
            stored = memfile.load(saved)
        rebuilt = reconstruct(lm, stored.memory, stored.header.tokens_per_segment, stored.header.space)
        exact = lm.decode([t for seg in rebuilt for t in seg]) == doc.text
        recorded = {**cfg.to_dict(), **({"init": "pooled"} if pooled else {})}
        record = {"name": path.stem, "arm": args.arm, "settings": recorded, "tokens": report.tokens, "segments": report.segments, "steps": report.steps,
                  "steps_sum": sum(report.steps), "seconds": round(seconds, 3), "file_bytes": size,
                  "memory_bytes": stored.memory.numel() * stored.memory.element_size(),
                  "kv_cache_bytes": lm.kv_bytes_per_token() * report.tokens, "exact": exact,
                  "accuracy": report.accuracy}
        append(args.out, record)
        log(f"{args.arm} {path.stem}: {report.tokens} tokens, steps {report.steps}, {seconds:.1f} s, "
            f"{size} B, exact {exact}")


def _recall(lm, kv, placed: torch.Tensor, positions: torch.Tensor, ids: list[int]) -> float:
    """Teacher-forced accuracy of ``ids`` after slots [n, width] placed at ``positions``, then the separator."""
    ctx = cache.start(lm)
    rope = kv._rope(lm)
    for layer, (keys, values) in enumerate(kv._split(lm, placed[None])):
        ctx.cache.update(rope(keys, positions), values, layer)
    ctx.position = int(positions.max()) + 1
    seq = kv.lead_ids(lm) + ids
    with torch.no_grad():
        logits = cache.extend(lm, ctx, torch.tensor([seq], device=lm.device))[0]
    predicted = logits[len(kv.lead_ids(lm)) - 1:-1].argmax(-1).tolist()
    return sum(p == t for p, t in zip(predicted, ids)) / len(ids)


def positions(args: argparse.Namespace) -> None:
    options = {"space": "kv", **settings(args.settings)}
    lm = load_model(args.model, device=args.device, quiet=True)
    cfg = WriteConfig(**options).resolve(lm)
    kv = SPACES["kv"]
    done = done_names(args.out)
    for path in chosen(args):
        if path.stem in done:
            continue
        doc = Document.from_text(path.stem, path.read_text())
        segments = split_segments(lm.tokenize(doc.text), cfg.segment_tokens)
        if len(segments) < 2:
            continue
        _, mem, _ = next(iter(memorize(lm, [doc], cfg)))
        slots = mem.memory.float()  # [S, m, width]
        count, m = slots.shape[0], slots.shape[1]
        first = len(lm.prefix_ids)
        alone = torch.arange(first, first + m)
        together = torch.arange(first, first + count * m)
        shared = alone.repeat(count)
        flat = slots.reshape(count * m, -1)
        rows = {"alone": [], "consecutive": [], "shared": []}
        for s, ids in enumerate(segments):
            rows["alone"].append(_recall(lm, kv, slots[s], alone, ids))
            rows["consecutive"].append(_recall(lm, kv, flat, together, ids))
            rows["shared"].append(_recall(lm, kv, flat, shared, ids))
        record = {"name": path.stem, "segments": count, "settings": cfg.to_dict(),
                  **{k: [round(v, 4) for v in vals] for k, vals in rows.items()}}
        append(args.out, record)
        log(path.stem, {k: round(sum(v) / len(v), 3) for k, v in rows.items()})


BANDS = ((100, 199), (200, 499), (500, 10**9))  # text tokens, as datasets/prose bands them


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson interval of a rate (sound at 0 and at n, where the normal one is not)."""
    p, d = hits / n, 1 + z * z / n
    middle, half = (p + z * z / (2 * n)) / d, z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return max(0.0, middle - half), min(1.0, middle + half)


def table(args: argparse.Namespace) -> None:
    """One row per arm (records of one arm may come from several files: lanes of one run), or per arm and
    length band with ``--bands``."""
    lines = ["| arm | tokens | passages | exact (95 % interval) | steps summed per passage, median (range) | seconds, median (total) | "
             "file bytes, median | text's KV cache / file, median |", "|---|---|---|---|---|---|---|---|"]
    arms: dict[str, list[dict]] = {}
    for path in args.files:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                arms.setdefault(record["arm"], []).append(record)
    for arm, every in arms.items():
        for low, high in BANDS if args.bands else ((0, 10**9),):
            records = [r for r in every if low <= r["tokens"] <= high]
            if not records:
                continue
            steps = [r["steps_sum"] for r in records]
            seconds = [r["seconds"] for r in records]
            band = "all" if not args.bands else f"{low}-{high}" if high < 10**9 else f"{low}+"
            lines.append(
                f"| {arm} | {band} | {len(records)} | {sum(r['exact'] for r in records)} "
                f"({'-'.join(f'{x:.2f}' for x in wilson(sum(r['exact'] for r in records), len(records)))}) | {median(steps):g} "
                f"({min(steps)}-{max(steps)}) | {median(seconds):.1f} ({sum(seconds):.0f}) | "
                f"{median([r['file_bytes'] for r in records]):.0f} | "
                f"{median([r['kv_cache_bytes'] / r['file_bytes'] for r in records]):.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(f"$ {' '.join(['benchmarks/memory_space.py', *sys.argv[1:]])}\n\n{text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("write", "positions"):
        p = sub.add_parser(name)
        if name == "write":
            p.add_argument("arm")
        p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
        p.add_argument("--texts", type=Path, required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--limit", type=int, default=None)
        p.add_argument("--names", type=Path, default=None, help="a file listing the passages (file stems) to use")
        p.add_argument("--model", default=None)
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("table")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--bands", action="store_true", help="a row per length band of text tokens")
    args = parser.parse_args()
    if args.command == "table":
        table(args)
        return
    torch.set_num_threads(args.threads)
    (write if args.command == "write" else positions)(args)


if __name__ == "__main__":
    main()
