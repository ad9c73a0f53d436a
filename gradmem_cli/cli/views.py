"""Human-readable views (rich tables on stderr) of what the commands return as JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from gradmem_cli.cli.progress import console, plain
from gradmem_cli.errors import shown

CELL_CHARS = 1000  # a header value longer than this is cut (a file can hold megabytes in one field)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _cell(value: Any) -> Text:
    """A header value from an untrusted file: escaped, cut, and a Text, so rich never reads it as markup."""
    return Text(shown(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False), CELL_CHARS))


def show_inspect(result: dict[str, Any]) -> None:
    """Metadata and sizes as tables on stderr; the rebuilt text (data) on stdout."""
    header, sizes = result["header"], result["sizes"]
    meta = Table(title=plain(result["file"]), show_header=False, title_justify="left")
    meta.add_column("field", style="bold")
    meta.add_column("value", overflow="fold")
    for key, value in header.items():
        if key == "model_fingerprint":
            value = {k: v for k, v in value.items() if k != "embedding"}
        meta.add_row(Text(shown(key)), _cell(value))
    console.print(meta)
    size = Table(title="sizes", show_header=False, title_justify="left")
    size.add_column("what", style="bold")
    size.add_column("value")
    segments, slots, width = sizes["shape"]
    size.add_row("memory", f"{sizes['space']}: {segments} segment(s) x {slots} slot(s) x {width} numbers, "
                           f"{_human_bytes(sizes['memory_bytes'])}")
    size.add_row("file", _human_bytes(sizes["file_bytes"]))
    size.add_row("the text itself", _human_bytes(sizes["text_bytes"]))
    size.add_row(f"KV cache of the text ({header['source']['tokens']} tokens, {header['dtype']})",
                 f"{_human_bytes(sizes['kv_cache_bytes'])}: {sizes['kv_to_file_ratio']}x the file")
    size.add_row("tokens per slot", str(sizes["tokens_per_slot"]))
    console.print(size)
    rec = result.get("reconstruction")
    if rec:
        if "exact_match" in rec:
            console.print(f"exact_match: {rec['exact_match']}  token_accuracy: {rec['token_accuracy']:.4f} "
                          f"({rec['rebuilt_tokens']} rebuilt / {rec['source_tokens']} source tokens)")
        console.print("[bold]rebuilt from memory:[/bold]")
        sys.stdout.write(rec["text"])
        if not rec["text"].endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()


def show_eval(result: dict[str, Any]) -> None:
    """The conditions side by side, one row per metric with its 95 % interval, and the share of the
    gap memory closes."""
    metrics, intervals = result["metrics"], result.get("intervals", {})
    conditions = list(metrics)
    table = Table(title=f"{result['task']}: n={result['n']}, main metric {result['main_metric']} "
                        "(95 % bootstrap intervals)", title_justify="left")
    table.add_column("metric", style="bold")
    for c in conditions:
        table.add_column(c.replace("_", "-"), justify="right")
    names = list(dict.fromkeys(k for c in conditions for k in metrics[c]))
    for name in names:
        cells = []
        for c in conditions:
            value, span = metrics[c].get(name), intervals.get(c, {}).get(name)
            cells.append("" if value is None else f"{value:.3f}" + (f" [{span[0]:.2f}, {span[1]:.2f}]" if span else ""))
        table.add_row(name, *cells)
    console.print(table)
    for k in ("gap_closed", "gap_closed_via_text"):
        if k in result:
            gap = result[k]
            span = intervals.get(k) if k == "gap_closed" else None
            console.print(f"{k}: {'n/a' if gap is None else f'{gap:.3f}'}"
                          + (f" [{span[0]:.2f}, {span[1]:.2f}] (defined in {intervals['gap_closed_defined']:.0%} "
                             "of resamples)" if span else ""))


def show_steps_table(model: str, rows: list[dict[str, Any]]) -> None:
    """``gradmem train-eval``: EM per number of write steps."""
    table = Table(title=f"{plain(model)}: key-value EM by write steps", title_justify="left")
    for name in ("write steps", "EM %", "token acc %", "loss", "samples"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row("full context" if r["steps"] is None else str(r["steps"]), f"{100 * r['em']:.1f}",
                      f"{100 * r['token_acc']:.1f}", f"{r['loss']:.4f}", str(r["samples"]))
    console.print(table)
