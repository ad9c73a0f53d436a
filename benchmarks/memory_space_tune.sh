#!/usr/bin/env bash
# The kv design points on the tuning subset of datasets/prose/kv-val (benchmarks/kv-tuning-subset.txt), in two
# lanes of one thread each (resumable: rerun it and each arm continues where it stopped). Then:
#   .venv/bin/python benchmarks/memory_space.py table benchmarks/results/memory_space/tune/*.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/memory_space/tune}
arm() { "$PY" benchmarks/memory_space.py write "$@" --texts datasets/prose/kv-val \
          --names benchmarks/kv-tuning-subset.txt --out "$OUT/$1.jsonl"; }
lane1() {
  arm kv-m2-s256-lr0.1 space=kv mem_tokens=2 segment_tokens=256 lr=0.1 schedule=constant
  arm kv-m1-s512-lr0.1 space=kv mem_tokens=1 segment_tokens=512 lr=0.1 schedule=constant
  arm kv-m2-s256-pooled space=kv mem_tokens=2 segment_tokens=256 lr=0.1 schedule=constant init=pooled
}
lane2() {
  arm kv-m4-s128-lr0.1 space=kv mem_tokens=4 segment_tokens=128 lr=0.1 schedule=constant
  arm kv-m2-s128-lr0.1 space=kv mem_tokens=2 segment_tokens=128 lr=0.1 schedule=constant
  arm kv-m2-s256-lr0.2 space=kv mem_tokens=2 segment_tokens=256 lr=0.2 schedule=constant
}
lane1 > "$OUT.lane1.log" 2>&1 &
lane2 > "$OUT.lane2.log" 2>&1 &
wait
