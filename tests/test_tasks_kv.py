"""The key-value task generator follows the paper's format."""

import random
import re

import pytest

from gradmem_cli.tasks import kv


def test_format_and_answer():
    for pairs in (1, 4, 16):
        s = kv.generate(pairs, random.Random(pairs))
        assert len(s.context) == 7 * pairs + 1 and s.context.endswith("|")
        found = re.findall(r"!([a-zA-Z0-9]{2}):([a-zA-Z0-9]{2})!", s.context)
        assert len(found) == pairs and len({k for k, _ in found}) == pairs
        key = re.fullmatch(r"\?!([a-zA-Z0-9]{2}):", s.query).group(1)
        assert s.target == dict(found)[key] + "!|" and s.value == dict(found)[key]


def test_reproducible():
    assert kv.dataset(8, 5, seed=3) == kv.dataset(8, 5, seed=3)
    assert kv.dataset(8, 5, seed=3) != kv.dataset(8, 5, seed=4)


def test_parse_checks_format():
    good = kv.generate(4, random.Random(0)).to_dict()
    assert kv.parse(good, "line 1").target == good["target"]
    with pytest.raises(ValueError, match="line 2"):
        kv.parse({"context": "x"}, "line 2")
    with pytest.raises(ValueError, match="not in the kv format"):
        kv.parse({**good, "target": "abc"}, "line 3")
