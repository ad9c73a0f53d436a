"""The Python API on the default model: write, save, reopen, rebuild, ask (streamed), evaluate.

    .venv/bin/python samples/api_example.py
"""

from pathlib import Path

import gradmem_cli as gm

root = Path(__file__).resolve().parent
model = gm.load()  # smollm2-135m-instruct, or $GRADMEM_MODEL; gm.load("path/or/hf-id", device="cuda") for others
memory = model.write((root / "lighthouse.txt").read_text())  # write options as keywords: steps=200, lr=0.05
path = memory.save(root.parent / "out" / "api" / "lighthouse.gmem", force=True)
print(memory)

again = gm.load_memory(path)  # validated; never runs code or picks a model
print("rebuilt:", model.reconstruct(again))
print("answer: ", end="")
for piece in model.stream(again, "What is the name of the cat?", max_new_tokens=30):
    print(piece, end="", flush=True)
print()

result = model.evaluate("babi", variant="qa1", limit=2, conditions=["memory", "full-context"])
print({c: round(m["f1"], 3) for c, m in result["metrics"].items()})
