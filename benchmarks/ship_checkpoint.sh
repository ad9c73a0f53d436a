#!/usr/bin/env bash
# Copies the best checkpoint of a training run into samples/models/NAME, with the training record
# of every run it descends from (config, command lines, log, metrics) under NAME/training/.
# Usage: benchmarks/ship_checkpoint.sh NAME FINAL_RUN [EARLIER_RUN...]
#   e.g. benchmarks/ship_checkpoint.sh kv8-gradmem runs/kv8-gradmem-stage2 runs/kv8-gradmem
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; final=$2; shift 2
dest=samples/models/$name
# The best checkpoint at the final pair count; a run whose curriculum never reached it has none,
# and then its latest checkpoint is shipped (its gradmem_writer.json says at which pair count).
source=$final/best
if ! test -f "$source/config.json"; then
  source=$final/checkpoints/$(cat "$final/latest")/model
  test -f "$source/config.json" || { echo "no checkpoint in $final" >&2; exit 1; }
  echo "no best checkpoint in $final: shipping the latest, $source" >&2
fi
rm -rf "$dest"
mkdir -p "$dest/training"
cp "$source"/* "$dest/"
for run in "$final" "$@"; do
  mkdir -p "$dest/training/$(basename "$run")"
  cp "$run"/{config.yaml,command.txt,train.log,metrics.jsonl} "$dest/training/$(basename "$run")/"
done
du -sh "$dest"
