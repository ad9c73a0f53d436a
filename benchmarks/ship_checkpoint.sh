#!/usr/bin/env bash
# Copies the best checkpoint of a training run into samples/models/NAME, with the training record
# of every run it descends from (config, command lines, log, metrics) under NAME/training/.
# Usage: benchmarks/ship_checkpoint.sh NAME FINAL_RUN [EARLIER_RUN...]
#   e.g. benchmarks/ship_checkpoint.sh kv8-gradmem runs/kv8-gradmem-stage2 runs/kv8-gradmem
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; final=$2; shift 2
dest=samples/models/$name
test -f "$final/best/config.json" || { echo "no best checkpoint in $final" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest/training"
cp "$final"/best/* "$dest/"
for run in "$final" "$@"; do
  mkdir -p "$dest/training/$(basename "$run")"
  cp "$run"/{config.yaml,command.txt,train.log,metrics.jsonl} "$dest/training/$(basename "$run")/"
done
du -sh "$dest"
