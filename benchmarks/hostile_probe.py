"""Hostile-input probe: the real ``gradmem`` CLI against what an outside tester would throw at it.

    PYTHONPATH=. .venv/bin/python benchmarks/hostile_probe.py            # all cases, about 15-20 minutes on one core
    PYTHONPATH=. .venv/bin/python benchmarks/hostile_probe.py --only payloads,signals --out /tmp/p.json

It builds a tiny random model (``tests/conftest.build_tiny_model``) and a valid ``.gmem`` in a temporary
folder, then runs every case as ``python -m gradmem_cli ...`` in its own session (``OMP_NUM_THREADS=1``):

- ``fuzz``: at least 148 mutations of the valid ``.gmem`` (truncations, flipped bytes, header edits:
  huge numbers, NaN, wrong types, markup and terminal escapes, huge strings, wrong shapes and dtypes,
  extra tensors, format versions), read by ``inspect`` (some also by ``ask``);
- ``payloads``: code-execution attempts (pickle weights, ``auto_map`` code, YAML tags, pickled readers,
  starts and memories), each of which would leave a marker file if it ran;
- ``destructive``: outputs that are inputs, unrelated files, links, foreign run and store folders;
- ``signals``: SIGINT, SIGTERM and SIGKILL during writes, a full disk (a file-size limit);
- ``odd``: empty, binary, special and oddly named inputs, bad option values;
- ``bounds``: endless stdin, huge questions and contexts, files past the caps, non-finite numbers;
- ``store``: a poisoned memory store.

A case is **clean** when: it ends within its timeout; a bad input exits non-zero with exactly one
``error: ...`` line on stderr (a good one exits 0), with the exit code the case expects where it expects
one; no ``Traceback`` or ``MarkupError`` appears; no raw control character (C0 but tab and newline, C1
including 0x9B, bidi overrides) reaches stderr (nor stdout, where stdout is not model output); every input
file is byte-identical afterwards; no marker of a payload exists; and no process of its session is left
5 seconds after it ends. Totals and one row per case go to ``benchmarks/results/hostile_probe.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

RAW = {chr(c) for c in range(0x20) if c not in (0x09, 0x0A)} | {chr(0x7F)} | {chr(c) for c in range(0x80, 0xA0)} \
    | set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
HOSTILE = "\x1b[2J\x1b[31mred\x9b1m\u202eevil\x07"
MARKUP = "[/][bold]x[/bold][link=file:///etc/passwd]y[/link]"
FAST = ["--space", "embed", "--lr", "0.3", "--steps", "300"]  # the fuzzed files are float32 embedding memories
SLOW = ["--lr", "0.0001", "--steps", "100000", "--target-acc", "1"]  # a write that runs until stopped


@dataclass
class Case:
    group: str
    name: str
    args: list[str]
    expect: str = "error"  # error: non-zero and one error line; ok: exit 0; either: one of them (fuzz)
    code: int | None = None  # the exit code wanted, if one is
    stdin: bytes | str | None = None  # "yes": an endless `yes` pipe
    inputs: list[Path] = field(default_factory=list)  # files or folders that must be byte-identical afterwards
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards (payload markers, outputs)
    must: str | None = None  # a substring stderr must hold
    stop: tuple[int, Callable[[psutil.Process], bool]] | None = None  # a signal, sent once the condition holds
    limit_file_size: int | None = None  # RLIMIT_FSIZE: writes past it fail as on a full disk
    data_stdout: bool = False  # stdout is model output (answers, rebuilt text): data, not checked for controls
    timeout: float = 180.0
    check: Callable[[], str | None] | None = None  # a further check after the run: a problem, or None


# --- the workshop -------------------------------------------------------------------------------------


class Workshop:
    """The temporary folder with the tiny model, texts and a valid memory every case starts from."""

    def __init__(self, root: Path):
        from conftest import build_tiny_model

        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.model = build_tiny_model(root / "model", bos=False, chat=False)
        self.doc = self.text("doc.txt", "Mira Okafor keeps the old lighthouse on Gull Point.")
        self.folder = root / "docs"
        self.folder.mkdir()
        for i in range(6):
            (self.folder / f"n{i}.txt").write_text(f"Note {i}: the spare key for door {i} is under the blue pot. " * 2)
        self.gmem = root / "valid.gmem"
        done = self.cli(["write", str(self.doc), "-o", str(self.gmem), "-m", str(self.model), *FAST, "-q"])
        if done.returncode != 0:
            raise SystemExit(f"could not write the valid memory: {done.stderr}")
        self.qa = self.text("qa.jsonl", json.dumps({"id": "q1", "context": "Mira keeps the lighthouse.",
                                                    "question": "Who keeps it?", "answers": ["Mira"]}) + "\n")
        self.count = 0

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "GRADMEM_HOME": str(self.home), "PYTHONDONTWRITEBYTECODE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def cli(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gradmem_cli", *args], capture_output=True, text=True,
                              env=self.env(), timeout=600, **kwargs)

    def path(self, name: str) -> Path:
        """A fresh path for a case."""
        self.count += 1
        folder = self.root / "cases" / f"{self.count:04d}"
        folder.mkdir(parents=True)
        return folder / name

    def text(self, name: str, content: str | bytes) -> Path:
        path = self.root / name if "/" not in name else Path(name)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def copy_model(self) -> Path:
        folder = self.path("model")
        shutil.copytree(self.model, folder)
        return folder


# --- fuzzed memory files -------------------------------------------------------------------------------


def _save(path: Path, tensors: dict, meta: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta)
    return path


def _raw_safetensors(path: Path, header: dict | str, data: bytes) -> Path:
    """A safetensors file with any header at all (save_file would refuse most of these)."""
    text = header if isinstance(header, str) else json.dumps(header)
    blob = text.encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def fuzz_cases(w: Workshop) -> list[Case]:
    import torch

    from gradmem_cli.memory import memfile

    valid = w.gmem.read_bytes()
    mem = memfile.load(w.gmem)
    meta = mem.header.to_metadata()
    head_len = struct.unpack("<Q", valid[:8])[0]
    files: list[tuple[str, Path]] = []

    def add(name: str, path: Path) -> None:
        files.append((name, path))

    # Truncations.
    for size in sorted({0, 1, 4, 7, 8, 9, 16, 64, head_len // 2, head_len, head_len + 7, head_len + 8, head_len + 9,
                        len(valid) // 2, len(valid) - 100, len(valid) - 2, len(valid) - 1}):
        add(f"truncated at {size}", w.text(str(w.path("t.gmem")), valid[:size]))
    add("appended bytes", w.text(str(w.path("a.gmem")), valid + b"\x00" * 100))
    # Flipped bytes: spread over the length prefix, the header and the data.
    rng = random.Random(22)
    positions = [0, 3, 7, 8, 9, head_len // 3, head_len + 7] + sorted(rng.sample(range(len(valid)), 13))
    for pos in positions:
        data = bytearray(valid)
        data[pos] ^= 0xFF if pos % 2 else 0x41
        add(f"byte {pos} flipped", w.text(str(w.path("f.gmem")), bytes(data)))
    # Header edits: each field given junk of every kind.
    junk = {"a string": '"x"', "a list": "[1, 2]", "an object": '{"a": 1}', "a huge integer": "9" * 5000,
            "1e308": "1e308", "1e999": "1e999", "NaN": "NaN", "Infinity": "Infinity", "-1": "-1", "null": "null",
            "deep nesting": "[" * 100_000 + "]" * 100_000, "not JSON": "{,"}
    json_fields = ["model_fingerprint", "model_shape", "hidden_size", "mem_tokens", "segment_tokens",
                   "tokens_per_segment", "prefix_ids", "write", "steps", "kept_step", "final_loss", "accuracy",
                   "source", "extra"]
    for name in json_fields:
        for label in (("a string", "a huge integer", "NaN", "deep nesting") if name != "accuracy" else tuple(junk)):
            add(f"{name} = {label}", _save(w.path("h.gmem"), {"memory": mem.memory}, {**meta, name: junk[label]}))
    for name in ("model_id", "tokenizer_fingerprint", "gradmem_version", "created_at", "dtype"):
        for label, value in (("markup", MARKUP), ("escapes", HOSTILE), ("5 MB", "m" * 5_000_000)):
            add(f"{name} = {label}", _save(w.path("s.gmem"), {"memory": mem.memory}, {**meta, name: value}))
    source = json.loads(meta["source"])
    for label, value in (("markup", MARKUP), ("escapes", HOSTILE), ("5 MB", "n" * 5_000_000)):
        add(f"source.name = {label}",
            _save(w.path("n.gmem"), {"memory": mem.memory}, {**meta, "source": json.dumps({**source, "name": value})}))
    for label, value in (("2.0", "2.0"), ("0.9", "0.9"), ("1.x", "1.x"), ("empty", ""), ("huge", "9" * 400 + ".0"),
                         ("missing", None)):
        edited = {**meta, "format_version": value} if value is not None else \
            {k: v for k, v in meta.items() if k != "format_version"}
        add(f"format_version {label}", _save(w.path("v.gmem"), {"memory": mem.memory}, edited))
    add("format other", _save(w.path("o.gmem"), {"memory": mem.memory}, {**meta, "format": "other"}))
    add("no metadata", _save(w.path("m.gmem"), {"memory": mem.memory}, {}))
    for key in ("hidden_size", "tokens_per_segment", "source"):
        add(f"{key} missing", _save(w.path("k.gmem"), {"memory": mem.memory}, {k: v for k, v in meta.items() if k != key}))
    # Tensors: dtypes, shapes, values, extra tensors.
    shape = tuple(mem.memory.shape)
    for dtype in (torch.int32, torch.int64, torch.uint8, torch.bool, torch.float64, torch.int8):
        add(f"dtype {dtype}", _save(w.path("d.gmem"), {"memory": torch.zeros(shape, dtype=dtype)}, meta))
    for label, new in (("2-D", shape[1:]), ("4-D", (1, *shape)), ("no segments", (0, *shape[1:])),
                       ("hidden + 1", (*shape[:2], shape[2] + 1)), ("m + 1", (shape[0], shape[1] + 1, shape[2])),
                       ("two segments", (2, *shape[1:]))):
        add(f"shape {label}", _save(w.path("p.gmem"), {"memory": torch.zeros(new)}, meta))
    for label, value in (("NaN", float("nan")), ("inf", float("inf")), ("huge", 3e38)):
        bad = mem.memory.clone()
        bad[0, 0, 0] = value
        add(f"memory {label}", _save(w.path("x.gmem"), {"memory": bad}, meta))
    add("extra tensor", _save(w.path("e.gmem"), {"memory": mem.memory, "code": torch.zeros(2)}, meta))
    add("renamed tensor", _save(w.path("r.gmem"), {"vectors": mem.memory}, meta))
    add("no tensor", _save(w.path("z.gmem"), {}, meta))
    # Raw safetensors headers save_file would not write.
    data = mem.memory.numpy().tobytes()
    entry = {"dtype": "F32", "shape": list(shape), "data_offsets": [0, len(data)]}
    for label, header in (
            ("offsets past the end", {"memory": {**entry, "data_offsets": [0, 10 ** 12]}, "__metadata__": meta}),
            ("negative shape", {"memory": {**entry, "shape": [-1, 8, 64]}, "__metadata__": meta}),
            ("huge shape", {"memory": {**entry, "shape": [2 ** 40, 2 ** 20, 64]}, "__metadata__": meta}),
            ("metadata not strings", {"memory": entry, "__metadata__": {"format": 1}}),
            ("header not JSON", "{not json"),
            ("header a list", "[1, 2, 3]"),
            ("duplicate keys", '{"memory": %s, "memory": %s, "__metadata__": %s}'
             % (json.dumps(entry), json.dumps(entry), json.dumps(meta))),
            ("header NaN", json.dumps({"memory": entry, "__metadata__": meta}).replace('"F32"', "NaN"))):
        add(f"raw header: {label}", _raw_safetensors(w.path("w.gmem"), header, data))
    huge_len = w.path("l.gmem")
    huge_len.write_bytes(struct.pack("<Q", 2 ** 62) + valid[8:])
    add("header length 2^62", huge_len)
    add("a pickle named .gmem", w.text(str(w.path("pk.gmem")), pickle.dumps({"memory": [1, 2, 3]})))
    add("a directory named .gmem", w.path("dir.gmem"))
    files[-1][1].mkdir()

    cases = [Case("fuzz", f"inspect: {name}", ["inspect", str(path)], expect="either", inputs=[path],
                  timeout=60) for name, path in files]
    for name, path in files[::20]:  # some also through ask, with the model the valid file names
        cases.append(Case("fuzz", f"ask: {name}", ["ask", str(path), "Who?", "-m", str(w.model), "--max-new-tokens", "2"],
                          expect="either", inputs=[path], data_stdout=True, timeout=90))
    return cases


# --- code-execution payloads ---------------------------------------------------------------------------


class _Payload:
    """Pickled, it runs ``touch MARKER`` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload_cases(w: Workshop) -> list[Case]:
    import torch
    from safetensors.torch import load_file

    cases: list[Case] = []
    model, doc, gmem = str(w.model), str(w.doc), str(w.gmem)

    def marker() -> Path:
        return w.path("RAN")

    # Pickle weights with a payload, no safetensors.
    pickled = w.copy_model()
    ran = marker()
    weights = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    with open(pickled / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"state": weights, "x": _Payload(ran)}, fh)
    for args in (["write", doc, "-o", str(w.path("p.gmem")), "-m", str(pickled)],
                 ["ask", gmem, "Who?", "-m", str(pickled)]):
        cases.append(Case("payloads", f"pickle weights: {args[0]}", args, absent=[ran], inputs=[pickled],
                          must="pickle"))
    for ext in ("pt", "pth", "ckpt"):
        other = w.copy_model()
        (other / "model.safetensors").rename(other / f"weights.{ext}")
        cases.append(Case("payloads", f"*.{ext} weights only", ["write", doc, "-o", str(w.path("p.gmem")), "-m",
                                                                  str(other)], inputs=[other], must="pickle"))
    fake = w.copy_model()
    ran2 = marker()
    (fake / "model.safetensors").write_bytes(pickle.dumps(_Payload(ran2)))
    cases.append(Case("payloads", "a pickle named model.safetensors", ["write", doc, "-o", str(w.path("p.gmem")),
                                                                        "-m", str(fake)], absent=[ran2], inputs=[fake]))
    # Custom code: auto_map in config.json (known and unknown model type), in tokenizer_config.json, a
    # tokenizer_class of its own.
    for label, name, edit in (
            ("auto_map in config.json", "config.json",
             lambda d: {**d, "auto_map": {"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M"}}),
            ("auto_map and an unknown model_type", "config.json",
             lambda d: {**d, "model_type": "evil", "auto_map": {"AutoConfig": "evil.C"}}),
            ("auto_map in tokenizer_config.json", "tokenizer_config.json",
             lambda d: {**d, "auto_map": {"AutoTokenizer": ["evil.T", None]}}),
            ("a tokenizer_class of its own", "tokenizer_config.json", lambda d: {**d, "tokenizer_class": "EvilTokenizer"})):
        folder = w.copy_model()
        ran3 = marker()
        (folder / "evil.py").write_text(f"open({str(ran3)!r}, 'w').write('ran')\n")
        (folder / name).write_text(json.dumps(edit(json.loads((folder / name).read_text()))))
        for args in (["write", doc, "-o", str(w.path("c.gmem")), "-m", str(folder)],
                     ["ask", gmem, "Who?", "-m", str(folder)]):
            cases.append(Case("payloads", f"{label}: {args[0]}", args, absent=[ran3], inputs=[folder],
                              must="custom code"))
    # A .gmem naming a code-carrying folder: refused on the file's word.
    from gradmem_cli.memory import memfile

    mem = memfile.load(w.gmem)
    mem.header.model_id = str(folder)
    named = w.path("named.gmem")
    memfile.save(named, mem.memory, mem.header)
    cases.append(Case("payloads", "a .gmem naming a code-carrying model", ["ask", str(named), "Who?"], inputs=[named],
                      must="file's word"))
    # YAML tags in training configs and --set.
    for label, text in (("!!python/object/apply", "lr: !!python/object/apply:os.system ['touch {m}']\n"),
                        ("!!python/name", "lr: !!python/name:os.system\n"),
                        ("!!python/object/new", "out: !!python/object/new:os.system ['touch {m}']\n")):
        for command in ("train", "train-reader"):
            ran4 = marker()
            config = w.text(str(w.path("evil.yaml")), text.format(m=ran4))
            cases.append(Case("payloads", f"YAML {label} in a {command} config", [command, str(config)], absent=[ran4],
                              inputs=[config], must="YAML"))
    ran5 = marker()
    cases.append(Case("payloads", "YAML tag in --set", ["train", "--set", f"lr=!!python/object/apply:os.system "
                                                                        f"['touch {ran5}']"], absent=[ran5]))
    # Pickled readers, starts and memories.
    from gradmem_cli.lm.loading import load_model
    import dataclasses

    fingerprint = dataclasses.asdict(load_model(model, device="cpu").fingerprint)
    reader_json = {"format": "gradmem.reader", "format_version": "1.0", "base_model": model,
                   "base_fingerprint": fingerprint, "rank": 2, "alpha": 4.0, "targets": ["q_proj"]}
    for label, name in (("adapter_model.bin only", "adapter_model.bin"),
                        ("a pickle named adapter_model.safetensors", "adapter_model.safetensors")):
        reader = w.path("reader")
        reader.mkdir()
        ran6 = marker()
        (reader / "gradmem_reader.json").write_text(json.dumps(reader_json))
        (reader / name).write_bytes(pickle.dumps(_Payload(ran6)))
        cases.append(Case("payloads", f"reader: {label}", ["ask", gmem, "Who?", "-m", model, "--reader", str(reader)],
                          absent=[ran6], inputs=[reader]))
    for label, name in (("a pickled start (.pt)", "start.pt"), ("a pickle named .safetensors", "start.safetensors")):
        ran7 = marker()
        start = w.text(str(w.path(name)), pickle.dumps(_Payload(ran7)))
        cases.append(Case("payloads", f"start: {label}", ["write", doc, "-o", str(w.path("s.gmem")), "-m", model,
                                                          "--init", "fitted", "--start", str(start)],
                          absent=[ran7], inputs=[start]))
    ran8 = marker()
    pickled_gmem = w.text(str(w.path("p.gmem")), pickle.dumps(_Payload(ran8)))
    for command in (["inspect", str(pickled_gmem)], ["ask", str(pickled_gmem), "Who?", "-m", model]):
        cases.append(Case("payloads", f"a pickled .gmem: {command[0]}", command, absent=[ran8], inputs=[pickled_gmem]))
    ran9 = marker()
    gguf = w.text(str(w.path("evil.gguf")), pickle.dumps(_Payload(ran9)))
    cases.append(Case("payloads", "a pickle named .gguf", ["write", doc, "-o", str(w.path("g.gmem")), "-m", str(gguf)],
                      absent=[ran9], inputs=[gguf]))
    return cases


# --- destructive invocations -----------------------------------------------------------------------------


def _adder(cases: list[Case], group: str, always: list[Path] = ()) -> Callable[..., None]:
    """``case(name, args, inputs, **fields)`` appends a case of ``group`` (``always`` among its inputs)."""
    def case(name: str, args: list[str], inputs: list[Path] = (), **fields) -> None:
        cases.append(Case(group, name, args, inputs=[*inputs, *always], **fields))
    return case


def destructive_cases(w: Workshop) -> list[Case]:
    cases: list[Case] = []
    model, doc, gmem = str(w.model), str(w.doc), str(w.gmem)
    notes = w.text(str(w.path("notes.md")), "my notes")
    plain = ["-m", model]

    case = _adder(cases, "destructive")

    link_in, hard_in = w.path("link.gmem"), w.path("hard.gmem")
    link_in.symlink_to(w.doc)
    os.link(w.doc, hard_in)
    for label, out in (("the input", doc), ("a link to the input", str(link_in)), ("a hard link to the input",
                                                                                      str(hard_in))):
        case(f"write -o {label} --force", ["write", doc, "-o", out, *plain, "--force"], [w.doc], must="input")
    case("write -o an unrelated file --force", ["write", doc, "-o", str(notes), *plain, "--force"], [w.doc, notes])
    case("write next to a .gmem input", ["write", gmem, *plain, "--force"], [w.gmem])
    case("write -o an existing .gmem without --force", ["write", doc, "-o", gmem, *plain], [w.doc, w.gmem],
         must="--force")
    for option in ("--output", "--log-samples"):
        case(f"eval {option} the data file", ["eval", "qa", "--data", str(w.qa), option, str(w.qa), "--limit", "1",
                                              "--conditions", "no-context", *plain], [w.qa], must="input")
        case(f"eval {option} the data file --force", ["eval", "qa", "--data", str(w.qa), option, str(w.qa), "--limit",
                                                      "1", "--conditions", "no-context", *plain, "--force"], [w.qa])
        case(f"eval {option} an unrelated file", ["eval", "qa", "--data", str(w.qa), option, str(notes), *plain],
             [w.qa, notes])
        case(f"eval {option} an unrelated file --force", ["eval", "qa", "--data", str(w.qa), option, str(notes),
                                                          *plain, "--force"], [w.qa, notes])
    result = w.path("result.json")
    eval_args = ["eval", "qa", "--data", str(w.qa), "--output", str(result), "--limit", "1", "--conditions",
                 "no-context", "--max-new-tokens", "2", *plain, "-q"]
    case("eval --output a new file", eval_args, [w.qa], expect="ok")
    case("eval --output its own result again", eval_args, [w.qa], must="--force")
    case("eval --output its own result --force", [*eval_args, "--force"], [w.qa], expect="ok")
    same = str(w.path("same.json"))
    case("eval --output and --log-samples one file", ["eval", "qa", "--data", str(w.qa), "--output", same,
                                                      "--log-samples", same, *plain], [w.qa], code=2)
    keep = w.text(str(w.path("keep.txt")), "keep me")
    case("self-study -o an unrelated file --force", ["self-study", doc, "-o", str(keep), *plain, "--force"],
         [w.doc, keep])
    case("self-study -o its input", ["self-study", doc, "-o", doc, *plain, "--force"], [w.doc])
    case("self-study -o a .txt inside the input folder", ["self-study", str(w.folder), "-o",
                                                          str(w.folder / "qa.txt"), *plain], [w.folder])
    case("fit-start -o its input", ["fit-start", doc, "-o", doc, *plain, "--force"], [w.doc])
    case("fit-start -o a .gmem --force", ["fit-start", doc, "-o", gmem, *plain, "--force"], [w.doc, w.gmem])
    case("fit-start -o an unrelated file --force", ["fit-start", doc, "-o", str(notes), *plain, "--force"],
         [w.doc, notes])
    link_other, dangling, loop = w.path("other.gmem"), w.path("dangling.gmem"), w.path("loop.gmem")
    link_other.symlink_to(notes)
    dangling.symlink_to(w.root / "nowhere" / "x.gmem")
    loop.symlink_to(loop)
    case("write -o a link to an unrelated file --force", ["write", doc, "-o", str(link_other), *plain, "--force"],
         [w.doc, notes])
    case("write -o a dangling link", ["write", doc, "-o", str(dangling), *plain], [w.doc])
    case("write -o a link loop", ["write", doc, "-o", str(loop), *plain], [w.doc])
    target = w.path("target.gmem")
    shutil.copy(w.gmem, target)
    link_gmem = w.path("latest.gmem")
    link_gmem.symlink_to(target)
    case("write -o a link to a .gmem --force (replaces the target)", ["write", doc, "-o", str(link_gmem), *plain,
                                                                        *FAST, "--force", "-q"], [w.doc], expect="ok",
         check=lambda: None if link_gmem.is_symlink() else "the link was replaced by a file")
    mine = w.path("mine")
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    case("train out= an unrelated folder", ["train", "--set", f"out={mine}", "--set", "max_steps=1"], [mine])
    case("train out= a file", ["train", "--set", f"out={notes}", "--set", "max_steps=1"], [notes])
    case("train-reader out= an unrelated folder", ["train-reader", "--set", f"model={model}", "--set", f"out={mine}"],
         [mine])
    case("eval --memories an unrelated folder", ["eval", "qa", "--data", str(w.qa), "--memories", str(mine), *plain],
         [mine, w.qa])
    case("write FOLDER -o a file", ["write", str(w.folder), "-o", str(notes), *plain], [w.folder, notes], code=2)
    if os.geteuid() != 0:  # root writes into any folder
        readonly = w.path("readonly")
        readonly.mkdir()
        readonly.chmod(0o500)
        case("write into a read-only folder", ["write", doc, "-o", str(readonly / "x.gmem"), *plain], [w.doc])
    inside = w.path("texts")
    inside.mkdir()
    (inside / "a.txt").write_text("A short text about a lighthouse keeper.")
    case("write a folder -o a folder inside it", ["write", str(inside), "-o", str(inside / "mems"), *plain, *FAST,
                                                  "-q"], [inside / "a.txt"], expect="ok")
    return cases


# --- signals and faults ----------------------------------------------------------------------------------


def _mapped(path: Path) -> Callable[[psutil.Process], bool]:
    """Ready once ``path`` (the model's weights) is mapped in the process or, with ``workers``, in that
    many of its children: the model is loaded and writing has begun."""
    def ready(proc: psutil.Process, workers: int = 0) -> bool:
        procs = [c for c in proc.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())] if workers \
            else [proc]
        hits = 0
        for p in procs:
            try:
                hits += str(path) in Path(f"/proc/{p.pid}/maps").read_text()
            except OSError:
                pass
        return hits >= max(1, workers)
    return ready


def signal_cases(w: Workshop) -> list[Case]:
    cases: list[Case] = []
    model = str(w.model)
    weights = w.model / "model.safetensors"
    single, workers = _mapped(weights), _mapped(weights)
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = w.path("s.gmem")
        cases.append(Case("signals", f"{sig.name} during a write", ["write", str(w.doc), "-o", str(out), "-m", model,
                                                                    *SLOW, "-q"],
                          code=code, inputs=[w.doc], absent=[out], stop=(sig, single), timeout=240))
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)):
        out = w.path("out")
        cases.append(Case("signals", f"{sig.name} to a folder write on 2 workers",
                          ["write", str(w.folder), "-o", str(out), "-m", model, *SLOW, "--workers", "2", "-q"],
                          code=code, expect="killed" if sig == signal.SIGKILL else "error", inputs=[w.folder],
                          stop=(sig, lambda p: workers(p, 2)), timeout=300,
                          check=lambda out=out: _no_partial(out)))
    for label, extra in (("one process", ["--workers", "1"]), ("2 workers", ["--workers", "2"])):
        out = w.path("new") / "out"
        cases.append(Case("signals", f"a full disk, {label}", ["write", str(w.folder), "-o", str(out), "-m", model,
                                                               *FAST, *extra, "-q"],
                          inputs=[w.folder], absent=[out.parent], limit_file_size=1024, must="cannot write",
                          timeout=300))
    out = w.path("one.gmem")
    cases.append(Case("signals", "a full disk, one file", ["write", str(w.doc), "-o", str(out), "-m", model, *FAST,
                                                           "-q"], inputs=[w.doc], absent=[out], limit_file_size=1024))
    return cases


def _no_partial(folder: Path) -> str | None:
    from gradmem_cli.errors import GradmemError
    from gradmem_cli.memory import memfile

    if not folder.exists():
        return None
    for p in folder.iterdir():
        if p.name.startswith("."):
            return f"a temporary file was left: {p.name}"
        try:
            memfile.load(p)
        except GradmemError:
            return f"a partial file was left: {p.name}"
    return None


# --- odd inputs ------------------------------------------------------------------------------------------


def odd_cases(w: Workshop) -> list[Case]:
    cases: list[Case] = []
    model, gmem = str(w.model), str(w.gmem)
    plain = ["-m", model]

    case = _adder(cases, "odd")

    for label, content in (("empty", b""), ("whitespace", b" \n\t\n"), ("binary", b"\x00\x01\x02binary"),
                           ("not UTF-8", b"caf\xe9 au lait"), ("a lone surrogate", b"\xed\xa0\x80 text")):
        path = w.text(str(w.path("in.txt")), content)
        case(f"write an {label} file", ["write", str(path), "-o", str(w.path("o.gmem")), *plain], [path])
    case("write stdin empty", ["write", "-", "-o", str(w.path("o.gmem")), *plain], stdin=b"")
    case("write stdin binary", ["write", "-", "-o", str(w.path("o.gmem")), *plain], stdin=b"\x00\xff" * 100)
    case("write stdin without -o", ["write", "-", *plain], stdin=b"text", code=2)
    case("write a missing file", ["write", str(w.root / "missing.txt"), *plain])
    case("write /dev/zero", ["write", "/dev/zero", "-o", str(w.path("o.gmem")), *plain])
    case("write /dev/null", ["write", "/dev/null", "-o", str(w.path("o.gmem")), *plain])
    fifo = w.path("fifo.txt")
    os.mkfifo(fifo)
    case("write a FIFO", ["write", str(fifo), "-o", str(w.path("o.gmem")), *plain])
    empty_folder = w.path("empty")
    empty_folder.mkdir()
    case("write a folder without .txt", ["write", str(empty_folder), "-o", str(w.path("o")), *plain])
    dup = w.path("dup")
    dup.mkdir()
    (dup / "a.txt").write_text("one")
    (dup / "a.TXT").write_text("two")
    case("write a folder whose files share a stem", ["write", str(dup), "-o", str(w.path("o")), *plain], [dup])
    loop = w.path("loop.txt")
    loop.symlink_to(loop)
    case("write a symlink loop", ["write", str(loop), *plain])
    case("inspect a folder", ["inspect", str(w.folder)], [w.folder])
    case("inspect /dev/zero", ["inspect", "/dev/zero"])
    case("inspect a text file", ["inspect", str(w.doc)], [w.doc])
    case("ask a missing file", ["ask", str(w.root / "missing.gmem"), "Who?"])
    case("ask an empty question", ["ask", gmem, "   ", *plain], [w.gmem])
    case("ask empty stdin", ["ask", gmem, "-", *plain], [w.gmem], stdin=b"")
    case("ask binary stdin", ["ask", gmem, "-", *plain], [w.gmem], stdin=b"\x00\xff\xfe")
    # Odd file names reach the progress lines and the summary (no -q): shown escaped, never as markup.
    odd = w.path("odd names")
    odd.mkdir()
    for name in ("[bold]b.txt", "[link=file:]l.txt", "esc\x1b[31mred.txt", "bidi\u202eevil.txt", "tab\tname.txt",
                 "new\nline.txt", "ünï çødé.txt"):
        (odd / name).write_text(f"A note named {name!r} about a key.")
    case("write a folder of oddly named files (progress shown)", ["write", str(odd), "-o", str(w.path("o")), *plain,
                                                                  *FAST, "--workers", "1"], [odd], expect="ok",
         timeout=300)
    markup_doc = w.text(str(w.path("[red]x.txt")), "A note about a red door.")
    case("write a markup-named file (summary shown)", ["write", str(markup_doc), "-o", str(w.path("o.gmem")), *plain,
                                                       *FAST], [markup_doc], expect="ok")
    # Bad option values.
    for label, args, code in (
            ("--via nowhere", ["ask", gmem, "Who?", "--via", "nowhere"], 2),
            ("--workers -1", ["write", str(w.doc), "--workers", "-1"], 2),
            ("--mem-tokens 0", ["write", str(w.doc), "--mem-tokens", "0"], 2),
            ("--steps -1", ["write", str(w.doc), "--steps", "-1"], 2),
            ("--max-new-tokens 0", ["ask", gmem, "Who?", "--max-new-tokens", "0"], 2),
            ("an unknown option", ["write", str(w.doc), "--frobnicate"], 2),
            ("--device nonsense", ["write", str(w.doc), "-o", str(w.path("o.gmem")), *plain, "--device", "tpu9"], 1),
            ("--dtype int8", ["write", str(w.doc), "-o", str(w.path("o.gmem")), *plain, "--dtype", "int8"], None),
            ("-m a missing folder", ["write", str(w.doc), "-o", str(w.path("o.gmem")), "-m", "./no/such/model"], 1),
            ("-m a .gmem", ["write", str(w.doc), "-o", str(w.path("o.gmem")), "-m", gmem], 1),
            ("--limit 0", ["eval", "qa", "--data", str(w.qa), "--limit", "0", *plain], None),
            ("--data missing", ["eval", "qa", "--data", str(w.root / "none.jsonl"), *plain], 1),
            ("--conditions nothing", ["eval", "qa", "--conditions", "nothing", *plain], 2),
            ("train --set an unknown key", ["train", "--set", "nonsense=1"], 2),
            ("train-eval a non-checkpoint", ["train-eval", str(w.folder)], None),
            ("--start without --init fitted", ["write", str(w.doc), "--init", "tokens", "--start", "x.safetensors"], 2)):
        case(label, args, [w.doc, w.gmem], code=code)
    return cases


# --- bounds --------------------------------------------------------------------------------------------


def bounds_cases(w: Workshop) -> list[Case]:
    cases: list[Case] = []
    model, gmem = str(w.model), str(w.gmem)
    plain = ["-m", model]

    case = _adder(cases, "bounds", [w.gmem])

    case("ask, endless `yes` on stdin", ["ask", gmem, "-", *plain], stdin="yes", must="larger than", timeout=120)
    case("write, endless `yes` on stdin", ["write", "-", "-o", str(w.path("o.gmem")), *plain], stdin="yes",
         must="larger than", timeout=120)
    case("ask, a 1 MB line on stdin", ["ask", gmem, "-", *plain], stdin=b"lighthouse " * 90_000 + b"\n",
         must="window", timeout=120)
    case("ask, 2 MiB of questions", ["ask", gmem, "-", *plain], stdin=b"Who?\n" * 420_000, must="larger than")
    case("ask, a 120 KB question", ["ask", gmem, "-", *plain], stdin=b"word " * 24_000, must="window")
    case("ask, a 40 KB question", ["ask", gmem, "-", *plain], stdin=b"word " * 8_000, must="window")
    case("ask, --max-new-tokens 10^9", ["ask", gmem, "Who?", *plain, "--max-new-tokens", "1000000000"],
         must="for the answer")
    for condition in ("full-context", "memory", "no-context,full-context"):
        data = w.text(str(w.path("huge.jsonl")), json.dumps({"id": "big", "context": "lighthouse " * 450_000,
                                                              "question": "Who?", "answers": ["Mira"]}) + "\n")
        case(f"eval {condition}, one 5 MB context", ["eval", "qa", "--data", str(data), "--limit", "1", "--conditions",
                                                     condition, *plain], [data], must="window", timeout=180)
    big = w.path("big.txt")
    with open(big, "wb") as fh:
        fh.truncate((64 << 20) + 1)
    case("write a text past the 64 MiB cap", ["write", str(big), "-o", str(w.path("o.gmem")), *plain], [],
         must="larger than")
    config = w.text(str(w.path("big.yaml")), "# " + "x" * (1 << 20) + "\n")
    case("train a config past the 1 MiB cap", ["train", str(config)], [config], must="larger than")
    for label, text in (("NaN", '{"id": "1", "context": "c", "question": "q", "answers": ["a"], "x": NaN}'),
                        ("1e999", '{"id": "1", "context": "c", "question": "q", "answers": ["a"], "x": 1e999}'),
                        ("deep nesting", "[" * 100_000 + "]" * 100_000)):
        data = w.text(str(w.path("d.jsonl")), text + "\n")
        case(f"eval data with {label}", ["eval", "qa", "--data", str(data), *plain], [data])
    from gradmem_cli.lm.loading import load_model
    import dataclasses

    fingerprint = dataclasses.asdict(load_model(model, device="cpu").fingerprint)
    for number in ("Infinity", "NaN", "-Infinity", "1e999", "1e308"):
        reader = w.path("reader")
        reader.mkdir()
        (reader / "gradmem_reader.json").write_text(json.dumps(
            {"format": "gradmem.reader", "format_version": "1.0", "base_model": model, "base_fingerprint": fingerprint,
             "rank": 2, "alpha": 7.5, "targets": ["q_proj"]}).replace("7.5", number))
        case(f"a reader with alpha {number}", ["ask", gmem, "Who?", *plain, "--reader", str(reader)], [reader])
    for option, value in (("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-inf"),
                          ("--temperature", "-1")):
        case(f"ask {option} {value}", ["ask", gmem, "Who?", *plain, option, value], code=2)
    for option, value in (("--lr", "nan"), ("--margin", "inf"), ("--target-acc", "nan"), ("--warmup", "nan"),
                          ("--distill-weight", "inf"), ("--lr", "-inf")):
        case(f"write {option} {value}", ["write", str(w.doc), "-o", str(w.path("o.gmem")), *plain, option, value],
             [w.doc], code=2)
    case("fit-start --outer-lr nan", ["fit-start", str(w.doc), "-o", str(w.path("s.st")), "--outer-lr", "nan"],
         [w.doc], code=2)
    for setting in ("lr=.nan", "max_minutes=.inf", "inner_lr=1e999", "betas=[0.9, .nan]"):
        case(f"train --set {setting}", ["train", "--set", setting], code=2)
    case("train-reader --set alpha=.inf", ["train-reader", "--set", "alpha=.inf"], code=2)
    case("--mem-tokens past the window", ["write", str(w.doc), "-o", str(w.path("o.gmem")), *plain, "--mem-tokens",
                                          "100000"], [w.doc], code=2)
    return cases


# --- a poisoned memory store ---------------------------------------------------------------------------


def store_cases(w: Workshop) -> list[Case]:
    from gradmem_cli.lm.loading import load_model
    from gradmem_cli.memory import memfile
    from gradmem_cli.engine.store import MemoryStore
    from gradmem_cli.writers.config import WriteConfig
    from safetensors.torch import save_file

    texts = ["Mira Okafor keeps the old lighthouse on Gull Point.", "John picked up the apple and went to the garden."]
    data = w.text(str(w.path("texts.jsonl")), "".join(json.dumps({"text": t}) + "\n" for t in texts))
    lm = load_model(str(w.model), device="cpu")
    cases: list[Case] = []
    args = ["eval", "recon", "--data", str(data), "--conditions", "memory", "-m", str(w.model), *FAST]
    for label in ("forged", "truncated"):
        folder = w.path("store")
        store = MemoryStore(folder, lm, WriteConfig(space="embed", lr=0.3, steps=300).resolve(lm))
        store.fill(texts)
        a, b = store.path(texts[0]), store.path(texts[1])
        if label == "forged":  # the other text's vectors under this text's name and header
            save_file({"memory": memfile.load(b).memory}, str(a), metadata=memfile.load(a).header.to_metadata())
        else:
            a.write_bytes(a.read_bytes()[:100])
        cases.append(Case("store", f"a {label} store entry", [*args, "--memories", str(folder)], expect="ok",
                          inputs=[data], must="writing it again" if label == "forged" else None, timeout=300,
                          check=lambda store=store, text=texts[0]: None if store.get(text) is not None
                          else "the entry was not rewritten"))
    return cases


GROUPS = {"fuzz": fuzz_cases, "payloads": payload_cases, "destructive": destructive_cases, "signals": signal_cases,
          "odd": odd_cases, "bounds": bounds_cases, "store": store_cases}


# --- running and judging a case ------------------------------------------------------------------------


def _digest(path: Path) -> str | None:
    if path.is_symlink() and not path.exists():
        return "link:" + os.readlink(path)
    if path.is_dir():
        parts = [f"{p.relative_to(path)}:{_digest(p)}" for p in sorted(path.rglob("*")) if not p.is_dir()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    if not path.exists():
        return None
    if not path.is_file():
        return "special"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _session(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def run_case(w: Workshop, case: Case) -> dict:
    before = {str(p): _digest(p) for p in case.inputs}
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE) if case.stdin == "yes" else None
    stdin = yes.stdout if yes else (subprocess.PIPE if case.stdin is not None else subprocess.DEVNULL)
    limit = case.limit_file_size

    def preexec() -> None:
        if limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gradmem_cli", *case.args], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=w.env(), start_new_session=True, preexec_fn=preexec,
                            cwd=w.root)
    problems: list[str] = []
    timed_out = False
    try:
        if case.stop is not None:
            sig, ready = case.stop
            watched = psutil.Process(proc.pid)
            while proc.poll() is None and not ready(watched) and time.monotonic() - start < case.timeout:
                time.sleep(0.1)
            time.sleep(1.0)
            if proc.poll() is None:
                os.kill(proc.pid, sig)
            else:
                problems.append("ended before it could be stopped")
        data = case.stdin.encode() if isinstance(case.stdin, str) and case.stdin != "yes" else case.stdin
        out, err = proc.communicate(None if case.stdin == "yes" else data,
                                    timeout=max(1.0, case.timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        problems.append(f"did not end within {case.timeout:.0f} s")
    finally:
        if yes is not None:
            yes.kill()
            yes.wait()
    seconds = time.monotonic() - start
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    deadline = time.monotonic() + 5
    left = _session(proc.pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _session(proc.pid)
    if left:
        problems.append(f"{len(left)} process(es) left after 5 s")
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
    code = proc.returncode
    lines = err.strip().splitlines()
    one_line = len(lines) == 1 and lines[0].startswith("error: ")
    if not timed_out:
        if case.expect == "ok" and code != 0:
            problems.append(f"exit {code} on good input")
        elif case.expect == "error" and (code == 0 or not one_line):
            problems.append("exit 0 on bad input" if code == 0 else f"not one error line ({len(lines)} lines)")
        elif case.expect == "either" and code != 0 and not one_line:
            problems.append(f"not one error line ({len(lines)} lines)")
        if case.code is not None and code != case.code:
            problems.append(f"exit {code}, expected {case.code}")
        if case.must and case.must not in err:
            problems.append(f"stderr lacks {case.must!r}")
    for word in ("Traceback", "MarkupError"):
        if word in err or word in out:
            problems.append(f"{word} in the output")
    shown = err if case.data_stdout else err + out
    raw = sorted({f"U+{ord(c):04X}" for c in shown if c in RAW})
    if raw:
        problems.append(f"raw control characters reached the terminal: {', '.join(raw)}")
    changed = [p for p, d in before.items() if _digest(Path(p)) != d]
    if changed:
        problems.append(f"input changed: {', '.join(Path(p).name for p in changed)}")
    present = [p for p in case.absent if p.exists() or p.is_symlink()]
    if present:
        problems.append(f"should not exist: {', '.join(p.name for p in present)}")
    if case.check is not None and not timed_out:
        extra = case.check()
        if extra:
            problems.append(extra)
    return {"group": case.group, "case": case.name, "command": ["gradmem", *[a[:120] for a in case.args]],
            "exit": code, "seconds": round(seconds, 2), "clean": not problems, "problems": problems,
            "stderr": err.strip()[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile_probe.json")
    parser.add_argument("--only", default="", help="comma-separated groups: " + ", ".join(GROUPS))
    parser.add_argument("--limit", type=int, default=0, help="at most N cases per group (a quick look)")
    args = parser.parse_args()
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s): {', '.join(unknown)}")
    os.environ.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hostile-probe-") as tmp:
        w = Workshop(Path(tmp))
        os.environ["GRADMEM_HOME"] = str(w.home)
        rows = []
        for group in groups:
            cases = GROUPS[group](w)
            for case in cases[: args.limit or None]:
                row = run_case(w, case)
                rows.append(row)
                mark = "clean" if row["clean"] else "NOT CLEAN: " + "; ".join(row["problems"])
                print(f"[{len(rows):3d}] {group:11s} {case.name[:70]:70s} exit {row['exit']} "
                      f"{row['seconds']:6.1f} s  {mark}", file=sys.stderr, flush=True)
        for folder in Path(tmp).rglob("*"):  # a read-only case folder would stop the clean-up
            if folder.is_dir() and not folder.is_symlink():
                folder.chmod(0o700)
    totals = {g: {"cases": sum(r["group"] == g for r in rows), "clean": sum(r["clean"] for r in rows
                                                                            if r["group"] == g)} for g in groups}
    clean = sum(r["clean"] for r in rows)
    report = {"command": "PYTHONPATH=. python benchmarks/hostile_probe.py" + (f" --only {args.only}" if args.only else "")
              + (f" --limit {args.limit}" if args.limit else ""),
              "cases": len(rows), "clean": clean, "clean_share": round(clean / max(1, len(rows)), 4),
              "fuzzed_gmem_files": sum(r["group"] == "fuzz" and r["case"].startswith("inspect:") for r in rows),
              "by_group": totals, "seconds": round(time.monotonic() - started, 1),
              "threads": 1, "python": sys.version.split()[0], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=True) + "\n")
    print(f"{clean}/{len(rows)} clean ({100 * clean / max(1, len(rows)):.1f} %) in {report['seconds']:.0f} s; "
          f"written to {args.out}", file=sys.stderr)
    sys.exit(0 if clean == len(rows) else 1)


if __name__ == "__main__":
    main()
