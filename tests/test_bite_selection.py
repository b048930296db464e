"""Selection's warnings and errors, word for word where a user reads a number or a name in them (found by
mutation testing: benchmarks/MUTANTS.md)."""

import pytest
import torch

from dean_hf import DeanError
from dean_hf.selection import _warn_if_large, _warn_if_nothing, select_by_expression


def test_warnings_state_the_fraction_and_the_fix(dean_log):
    indices = {"a": torch.arange(30), "b": torch.arange(0)}
    _warn_if_large("q", 0.3, indices, {"a": (10, 10), "b": (10, 10)})
    assert dean_log.messages[-1].startswith("q=0.3 lets the mask cover up to 30% of each weight matrix: it masks "
                                            "30 weights in 1 of 2 modules, at most 30% of one matrix (a).")
    _warn_if_nothing("q", 0.001, [64, 128], "weights")
    assert dean_log.messages[-1] == ("q=0.001 selects nothing in any module (floor(q * weights) = 0 for every "
                                     "matrix; the smallest has 64 weights): use q >= 0.0156 to select at least one "
                                     "per matrix.")


def test_expression_errors_name_the_set_and_show_the_fractions():
    scores = {"a": {"m": torch.ones(4)}, "b": {"x": torch.ones(4)}}
    with pytest.raises(DeanError, match=r"^scores 'b' cover other modules than 'a' \(e\.g\. \['m', 'x'\]\)"):
        select_by_expression("a & b", scores, fractions={"a": 0.5, "b": 0.5})
    with pytest.raises(DeanError, match=r"e\.g\. \{'a': 0\.001, 'b': 0\.001\}\.$"):
        select_by_expression("a & b", scores, fractions={"a": 0.5})


def test_legacy_selection_with_one_target_set():
    from dean_hf.selection import select_coupled_neurons

    target = {"m": torch.tensor([[9.0, 8.0, 1.0], [7.0, 2.0, 3.0]])}  # top 3 of 6: flat 0, 1, 3
    general = {"m": torch.tensor([[1.0, 9.0, 2.0], [0.0, 0.0, 8.0]])}  # top 3 of 6: flat 1, 5, 2
    mask = select_coupled_neurons({"t": target}, general, q=0.5, p=0.5, legacy=True)
    assert mask["m"].tolist() == [0, 3]
