"""bAbI tasks qa1-qa5, generated here from the published task definitions.

No registry package ships the bAbI data, so this module simulates the same small worlds as
Weston et al. (2015), "Towards AI-complete question answering" (people moving between rooms,
picking up, dropping and passing objects; rooms placed relative to each other) and asks the same
kinds of questions with one-word answers:

- qa1 single supporting fact: "Where is Mary?"
- qa2 two supporting facts: "Where is the football?" (the object moved with the person carrying it)
- qa3 three supporting facts: "Where was the football before the kitchen?"
- qa4 two-argument relations: "What is north of the bedroom?" / "What is the bedroom north of?"
- qa5 three-argument relations: "Who gave the milk to Fred?", "Who received the milk?", ...

A story comes with every question it answers unambiguously (exactly one right answer, as in the
original tasks: "before the kitchen" is asked only of an object that was in the kitchen once, "who
received the milk" only when one person ever did). Evaluation draws one question per story, as in
BABILong's "0k" split; training uses them all. The vocabulary follows the original tasks; the
stories are new random draws, not the original files.

Splits are held apart twice over: each split draws its stories from its own random stream (``train``,
``val``, ``test``), and asks only questions whose *entity combination* (the entities the question names,
and its answer: "Where is Mary?" -> office pairs Mary with the office) belongs to that split, by a fixed
hash of the combination: about 70 % of the combinations train, 15 % validate, 15 % test. A reader
tested on ``test`` has never been trained to give that answer to that question.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from pathlib import Path

from gradmem_cli.errors import GradmemError
from gradmem_cli.tasks.base import DEFAULT_LIMIT, Dataset, Example, Options
from gradmem_cli.tasks.qa import QA

PEOPLE = ["Mary", "John", "Daniel", "Sandra"]
GIVERS = ["Bill", "Fred", "Jeff", "Mary"]
PLACES = ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
OBJECTS = ["apple", "football", "milk"]
MOVE = ["moved to", "went to", "journeyed to", "travelled to", "went back to"]
GET = ["picked up", "got", "grabbed", "took"]
DROP = ["dropped", "put down", "discarded", "left"]
GIVE = ["gave", "handed", "passed"]
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

Story = tuple[list[str], list[tuple[str, str]]]  # sentences, [(question, answer)] with one right answer each
SPLITS = ("train", "val", "test")
ENTITIES = frozenset(PEOPLE + GIVERS + PLACES + OBJECTS + list(OPPOSITE))


class _World:
    """People with locations and objects with a holder or a place; records every fact as a sentence."""

    def __init__(self, rng: random.Random, people: list[str]):
        self.rng = rng
        self.people = people
        self.where: dict[str, str] = {}
        self.holder: dict[str, str | None] = {o: None for o in OBJECTS}
        self.place: dict[str, str | None] = {o: None for o in OBJECTS}
        self.history: dict[str, list[str]] = {o: [] for o in OBJECTS}  # distinct places each object went
        self.gives: list[tuple[str, str, str]] = []  # (giver, object, receiver)
        self.sentences: list[str] = []

    def object_place(self, obj: str) -> str | None:
        holder = self.holder[obj]
        return self.where.get(holder) if holder else self.place[obj]

    def _track(self, obj: str) -> None:
        place = self.object_place(obj)
        if place and (not self.history[obj] or self.history[obj][-1] != place):
            self.history[obj].append(place)

    def move(self, person: str) -> None:
        place = self.rng.choice([p for p in PLACES if p != self.where.get(person)])
        self.where[person] = place
        self.sentences.append(f"{person} {self.rng.choice(MOVE)} the {place}.")
        for obj, holder in self.holder.items():
            if holder == person:
                self._track(obj)

    def get(self, person: str, obj: str) -> None:
        self.holder[obj], self.place[obj] = person, None
        self.sentences.append(f"{person} {self.rng.choice(GET)} the {obj}{self.rng.choice(['', ' there'])}.")
        self._track(obj)

    def drop(self, person: str, obj: str) -> None:
        self.holder[obj], self.place[obj] = None, self.where[person]
        self.sentences.append(f"{person} {self.rng.choice(DROP)} the {obj}.")

    def give(self, giver: str, obj: str, receiver: str) -> None:
        self.holder[obj] = receiver
        self.gives.append((giver, obj, receiver))
        self.sentences.append(f"{giver} {self.rng.choice(GIVE)} the {obj} to {receiver}.")

    def random_action(self, allow_give: bool = False) -> None:
        """One plausible event: a move, or picking up / dropping / passing an object."""
        rng = self.rng
        person = rng.choice(self.people)
        if person not in self.where or rng.random() < 0.4:
            return self.move(person)
        held = [o for o, h in self.holder.items() if h == person]
        here = (None, self.where[person])  # never seen yet, or lying in this room
        free = [o for o, h in self.holder.items() if h is None and self.place[o] in here]
        nearby = [p for p in self.people if p != person and self.where.get(p) == self.where[person]]
        if held and nearby and allow_give and rng.random() < 0.7:
            return self.give(person, rng.choice(held), rng.choice(nearby))
        if held and rng.random() < 0.35:
            return self.drop(person, rng.choice(held))
        if free and rng.random() < 0.8:
            return self.get(person, rng.choice(free))
        return self.move(person)


def _qa1(rng: random.Random) -> Story | None:
    world = _World(rng, PEOPLE)
    for _ in range(rng.randint(2, 10)):
        world.move(rng.choice(PEOPLE))
    return world.sentences, [(f"Where is {p}?", world.where[p]) for p in sorted(world.where)]


def _qa2(rng: random.Random) -> Story | None:
    world = _World(rng, PEOPLE)
    for _ in range(rng.randint(4, 12)):
        world.random_action()
    # Two supporting facts: who got (or dropped) the object, and where that person was or went.
    placed = [o for o in OBJECTS if world.history[o] and world.object_place(o)]
    return world.sentences, [(f"Where is the {o}?", world.object_place(o)) for o in placed]


def _qa3(rng: random.Random) -> Story | None:
    world = _World(rng, PEOPLE)
    for _ in range(rng.randint(6, 14)):
        world.random_action()
    questions = []
    for obj in OBJECTS:
        places = world.history[obj]
        # "before the X" has one answer only when the object was in X once.
        for before, place in zip(places, places[1:]):
            if places.count(place) == 1:
                questions.append((f"Where was the {obj} before the {place}?", before))
    return world.sentences, questions


def _qa4(rng: random.Random) -> Story | None:
    a, b, c = rng.sample(PLACES, 3)
    d1, d2 = rng.choice(list(OPPOSITE)), rng.choice(list(OPPOSITE))
    facts = [(a, d1, b), (c, d2, a)]  # "a is d1 of b", "c is d2 of a"
    if d2 == OPPOSITE[d1]:  # c would sit where b is: keep the map consistent
        return None
    sentences = [f"The {x} is {d} of the {y}." for x, d, y in facts]
    questions = []
    for x, d, y in facts:
        questions += [(f"What is {d} of the {y}?", x), (f"What is the {x} {d} of?", y)]
    return sentences, questions


def _qa5(rng: random.Random) -> Story | None:
    world = _World(rng, GIVERS)
    for _ in range(rng.randint(5, 12)):
        world.random_action(allow_give=True)
    questions = []
    for giver, obj, receiver in world.gives:
        # Each question only where the story gives it exactly one right answer.
        candidates = [
            (f"Who gave the {obj} to {receiver}?", lambda g: g[1:] == (obj, receiver), 0),
            (f"Who gave the {obj}?", lambda g: g[1] == obj, 0),
            (f"Who received the {obj}?", lambda g: g[1] == obj, 2),
            (f"What did {giver} give to {receiver}?", lambda g: (g[0], g[2]) == (giver, receiver), 1),
            (f"Who did {giver} give the {obj} to?", lambda g: g[:2] == (giver, obj), 2),
        ]
        for question, match, field in candidates:
            answers = {g[field] for g in world.gives if match(g)}
            if len(answers) == 1 and question not in (q for q, _ in questions):
                questions.append((question, answers.pop()))
    return world.sentences, questions


VARIANTS: dict[str, Callable[[random.Random], Story | None]] = {
    "qa1": _qa1, "qa2": _qa2, "qa3": _qa3, "qa4": _qa4, "qa5": _qa5,
}


def combination(question: str, answer: str) -> tuple[str, ...]:
    """The entities a question names, in order, then its answer."""
    return (*(w for w in re.findall(r"\w+", question) if w in ENTITIES), answer)


def split_of(question: str, answer: str) -> str:
    """The split a question belongs to, by a fixed hash of its entity combination (70/15/15)."""
    value = int(hashlib.sha256("|".join(combination(question, answer)).encode()).hexdigest()[:8], 16) / 16 ** 8
    return "train" if value < 0.7 else "val" if value < 0.85 else "test"


def story(task: str, rng: random.Random, split: str) -> tuple[str, list[tuple[str, str]]]:
    """One story of a bAbI task: its text and every (question, answer) of ``split`` it answers
    unambiguously (stories with none are drawn again)."""
    make = VARIANTS[task]
    while True:
        drawn = make(rng)
        if drawn is not None:
            sentences, questions = drawn
            questions = [(q, a) for q, a in questions if split_of(q, a) == split]
            if questions:
                return " ".join(sentences), questions


def stories(task: str, count: int, seed: int, split: str = "test") -> list[tuple[str, list[tuple[str, str]]]]:
    """``count`` stories of ``split`` (its own random stream and its entity combinations), reproducible
    from ``seed``."""
    if task not in VARIANTS:
        raise ValueError(f"unknown bAbI task '{task}' (use {', '.join(VARIANTS)})")
    if split not in SPLITS:
        raise ValueError(f"unknown bAbI split '{split}' (use {', '.join(SPLITS)})")
    rng = random.Random(f"babi-{split}-{task}-{seed}")
    return [story(task, rng, split) for _ in range(count)]


def dataset(task: str, count: int, seed: int, split: str = "test") -> list[dict[str, object]]:
    """``count`` evaluation examples of ``split``, one question per story (drawn among the story's questions)."""
    rng = random.Random(f"babi-question-{split}-{task}-{seed}")
    out = []
    for context, questions in stories(task, count, seed, split):
        question, answer = questions[rng.randrange(len(questions))]
        out.append({"context": context, "question": question, "answers": [answer]})
    return out


class Babi(QA):
    name = "babi"
    help = "bAbI qa1-qa5 stories, generated here (--task qa1..qa5)"
    instruction = " Answer with one word."

    def examples(self, data: Path | None, limit: int | None, seed: int, options: Options) -> Dataset:
        if data is not None:
            return super().examples(data, limit, seed, options)
        if options.variant not in VARIANTS:
            raise GradmemError(f"unknown bAbI task '{options.variant}' (use {', '.join(VARIANTS)})")
        if options.split not in SPLITS:
            raise GradmemError(f"unknown bAbI split '{options.split}' (use {', '.join(SPLITS)})")
        items = dataset(options.variant, limit or DEFAULT_LIMIT, seed, options.split)
        return Dataset([Example(f"{options.variant}-{i}", str(r["context"]), str(r["question"]), list(r["answers"]))
                        for i, r in enumerate(items)],
                       {"generator": "babi", "task": options.variant, "split": options.split, "seed": seed})

    def train_example(self, rng: random.Random, options: Options) -> Example:
        """A training story from ``rng`` and one of its questions (``gradmem train`` draws a fresh one per row)."""
        if options.variant not in VARIANTS:
            raise GradmemError(f"unknown bAbI task '{options.variant}' (use {', '.join(VARIANTS)})")
        context, questions = story(options.variant, rng, "train")
        question, answer = questions[rng.randrange(len(questions))]
        return Example("", context, question, [answer])
