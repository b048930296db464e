"""Selection expressions: an unclosed parenthesis followed by more tokens is an error, and score-set names may
hold '.' (anywhere in the name)."""

import pytest
import torch

from dean_hf import DeanError
from dean_hf.expression import expression_names, parse
from dean_hf.selection import select_by_expression


@pytest.mark.parametrize("expression,position", [("(a b", 0), ("(a b c", 0), ("x | (a b", 4), ("((a) b)", 0),
                                                 ("(a & b c)", 0)])
def test_an_unclosed_parenthesis_before_another_token_is_an_error(expression, position):
    with pytest.raises(DeanError, match=rf"position {position}: unbalanced parentheses: this '\(' is never closed"):
        parse(expression)


def test_a_closed_parenthesis_then_a_token_names_the_token():
    with pytest.raises(DeanError, match=r"position 4: expected '&', '\|', '-' or the end, found 'b'"):
        parse("(a) b")


def test_score_set_names_may_hold_dots():
    assert expression_names("v1.2 & .hidden | a_b.c-d.") == ["v1.2", ".hidden", "a_b.c", "d."]
    assert parse("a.b&c") == [("name", "a.b", 0), ("name", "c", 4), ("&", None, 3)]
    scores = {"safe.v1": {"m": torch.tensor([3.0, 2.0, 1.0, 0.0])}, "unsafe.v1": {"m": torch.tensor([0.0, 3.0, 2.0,
                                                                                                   1.0])}}
    mask = select_by_expression("unsafe.v1 - safe.v1", scores, fractions={"unsafe.v1": 0.5, "safe.v1": 0.25})
    assert mask["m"].tolist() == [1, 2]  # top half of unsafe {1, 2}, less the top quarter of safe {0}
    with pytest.raises(DeanError, match=r"unknown score set 'safe\.v2'"):
        select_by_expression("unsafe.v1 - safe.v2", scores, fractions={"unsafe.v1": 0.5, "safe.v2": 0.25})
