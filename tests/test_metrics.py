"""Metric functions on hand-made cases."""

import pytest

from gradmem_cli.evaluation.metrics import exact_match, f1, normalize_answer, token_accuracy


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
    assert f1("", [""]) == 1.0 and f1("", ["x"]) == 0.0


def test_token_accuracy():
    assert token_accuracy([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_accuracy([1, 9, 3, 4], [1, 2, 3]) == pytest.approx(2 / 3)
    assert token_accuracy([1], [1, 2]) == 0.5
    assert token_accuracy([], []) == 1.0
