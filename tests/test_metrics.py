"""Metric functions on hand-made cases."""

import pytest

from gradmem_cli.tasks.metrics import contains, exact_match, f1, normalize_answer, token_accuracy


def test_normalize():
    assert normalize_answer("The  Kitchen!") == "kitchen"
    assert normalize_answer("an Apple, a pear") == "apple pear"


def test_exact_match():
    assert exact_match("the kitchen.", ["Kitchen"]) == 1.0
    assert exact_match("In the kitchen", ["kitchen"]) == 0.0
    assert exact_match("garden", ["kitchen", "garden"]) == 1.0


def test_f1():
    assert f1("kitchen", ["kitchen"]) == 1.0
    assert f1("in the kitchen", ["kitchen"]) == pytest.approx(2 * 0.5 * 1 / 1.5)  # P=1/2, R=1
    assert f1("blue car", ["red car", "blue truck"]) == pytest.approx(0.5)
    assert f1("nothing", ["kitchen"]) == 0.0
    assert f1("", [""]) == 0.0 and f1("", ["x"]) == 0.0  # the v1.1 script's rule (v2 would say 1.0)
    assert f1("The.", ["a"]) == 0.0  # both normalise to nothing


def test_contains():
    assert contains("Mary is in the kitchen.", ["kitchen"]) == 1.0  # right, in a sentence (F1 0.4)
    assert contains("kitchenette", ["kitchen"]) == 0.0  # whole words only
    assert contains("the red car", ["red car", "x"]) == 1.0
    assert contains("", [""]) == 0.0 and contains("garden", ["kitchen"]) == 0.0


def test_token_accuracy():
    assert token_accuracy([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_accuracy([1, 9, 3, 4], [1, 2, 3]) == pytest.approx(2 / 3)
    assert token_accuracy([1], [1, 2]) == 0.5
    assert token_accuracy([], []) == 1.0
