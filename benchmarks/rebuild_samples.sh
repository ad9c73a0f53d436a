#!/usr/bin/env bash
# Writes every paragraph in samples/paragraphs with the default settings (one batched folder
# write), then rebuilds each from its memory alone and checks it against the source.
# Usage: benchmarks/rebuild_samples.sh [extra gradmem write options]
set -euo pipefail
cd "$(dirname "$0")/.."
GRADMEM=${GRADMEM:-.venv/bin/gradmem}
OUT=${OUT:-out/rebuild_samples}
mkdir -p "$OUT"
/usr/bin/time -f "write wall time: %e s" "$GRADMEM" write samples/paragraphs -o "$OUT" --force --json -q "$@" > "$OUT/write.json"
printf "%-12s %6s %8s %12s %s\n" file tokens exact token_acc steps
for f in samples/paragraphs/*.txt; do
  n=$(basename "$f" .txt)
  "$GRADMEM" inspect "$OUT/$n.gmem" --against "$f" --json -q | python3 -c "
import json, sys
d = json.load(sys.stdin); r = d['reconstruction']; h = d['header']
print(f\"{'$n':12s} {h['source']['tokens']:6d} {str(r['exact_match']):>8s} {r['token_accuracy']:12.4f} {h['steps']}\")"
done
