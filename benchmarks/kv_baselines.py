"""Gradient-written kv memories against forward-only baselines at the same number of slots (``eval``'s
``kv-last`` and ``kv-snap``), on the committed test passages, with the default model and write settings.

- rebuild: ``gradmem eval recon`` on the first ``--passages`` of datasets/prose/kv-test (name order);
- questions: ``gradmem eval qa`` on the first ``--questions`` answerable questions of
  datasets/prose/qa-test.jsonl (file order; the unanswerable ones need a reader that can say so, which the
  frozen model is not), with no context and the full context beside them.

Each eval is saved in ``--out`` with its samples and reused when there (a stopped run resumes).

    .venv/bin/python benchmarks/kv_baselines.py --out benchmarks/results/kv_baselines
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, eval_once, log  # noqa: E402

PROSE = ROOT / "datasets" / "prose"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--questions", type=int, default=40)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    texts = args.out / "recon-texts"
    if not texts.exists():
        texts.mkdir()
        for path in sorted((PROSE / "kv-test").glob("*.txt"))[: args.passages]:
            shutil.copy(path, texts / path.name)
    recon = eval_once(args.out / "recon.json", ["recon", "--data", str(texts), "--conditions",
                                                 "memory,kv-last,kv-snap", "--memories", str(args.out / "store")])
    questions = args.out / "qa-questions.jsonl"
    if not questions.exists():
        rows = [json.loads(line) for line in (PROSE / "qa-test.jsonl").read_text().splitlines() if line.strip()]
        chosen = [r for r in rows if r["answerable"]][: args.questions]
        questions.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    qa = eval_once(args.out / "qa.json", ["qa", "--data", str(questions), "--conditions",
                                          "memory,kv-last,kv-snap,no-context,full-context",
                                          "--memories", str(args.out / "store")])
    for name, result in (("recon", recon), ("qa", qa)):
        log(name, json.dumps(result["metrics"], indent=1))


if __name__ == "__main__":
    main()
