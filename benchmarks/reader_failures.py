"""How a reader's bAbI qa1 answers fail: for each answer of an eval run, is it the person's last
room (right), a room the person was in earlier, a room someone else went to, or no room of the story?
Also prints the EM of a reader that names one of the story's rooms at random: what knowing the
rooms, and nothing of who went where, is worth.

    gradmem eval babi --task qa1 --reader DIR --log-samples S.jsonl ...
    .venv/bin/python benchmarks/reader_failures.py S.jsonl [--condition memory]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

MOVE = re.compile(r"(\w+) (?:moved to|went to|journeyed to|travelled to|went back to) the (\w+)")


def classify(record: dict, condition: str) -> str:
    person = record["question"].rstrip("?").split()[-1]
    moves = MOVE.findall(record["context"])
    own = [room for who, room in moves if who == person]
    answer = record[condition]["answer"].lower().strip(" .!")
    if answer == own[-1]:
        return "right: the person's last room"
    if answer in own:
        return "a room the person was in earlier"
    if answer in {room for _, room in moves}:
        return "a room someone else went to"
    if answer in {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}:
        return "a room the story does not mention"
    return "not a room"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path)
    parser.add_argument("--condition", default="memory")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.samples.read_text().splitlines()]
    counts = collections.Counter(classify(r, args.condition) for r in records)
    for kind, n in counts.most_common():
        print(f"{kind}: {n} of {len(records)} ({n / len(records):.0%})")
    chance = sum(1 / len(rooms) for r in records
                 if r["answers"][0] in (rooms := {room for _, room in MOVE.findall(r["context"])}))
    print(f"EM of a random room of the story: {chance / len(records):.3f}")


if __name__ == "__main__":
    main()
