"""What fits the model's window: one check for every prompt, made before any tensor is built.

A prompt shares the window with what comes before it (the tokenizer's prefix and the memory's
positions) and with the answer it leaves room for; a prompt past that would make the model allocate
for, and attend over, positions it was never trained on (a 1 MB question asked for 62 GB).
"""

from __future__ import annotations

from gradmem_cli.errors import GradmemError


def check_room(window: int, before: int, prompt: int, answer: int, what: str = "the question") -> None:
    """Refuse a prompt of ``prompt`` tokens after ``before`` positions (prefix and memory), with room for
    ``answer`` new tokens, in a window of ``window`` positions: one line naming both numbers."""
    room = window - before - answer
    if prompt > room:
        raise GradmemError(f"{what} is {prompt} tokens, and the model's window of {window} positions leaves "
                           f"{max(room, 0)} for it after {before} before it (prefix and memory) and {answer} for "
                           "the answer")
