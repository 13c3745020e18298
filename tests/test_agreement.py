"""Greedy agreement with near ties counted, and the logits' relative L2 (luce_bench/agreement.py)."""

import numpy as np
import pytest

from luce_bench.agreement import NEAR_TIE, greedy_agreement, rel_l2, top2_margin


def _row(top1: float, top2: float, vocab: int = 8) -> np.ndarray:
    """Logits whose best two are `top1` (token 3) and `top2` (token 5)."""
    row = np.full(vocab, -4.0)
    row[3], row[5] = top1, top2
    return row


def test_equal_tokens_agree():
    rows = np.stack([_row(2.0, 1.0)] * 3)
    a = greedy_agreement([3, 3, 3], [3, 3, 3], rows)
    assert (a.steps, a.agree, a.near_ties, a.ok) == (3, 3, 0, True)
    assert a.text() == "3/3 equal, 0 near ties, 0 beyond a near tie"


def test_a_disagreement_within_a_near_tie_is_counted_not_failed():
    # reference top-2: 4.0 and 4.0 - 0.01 -> margin 0.0025 <= 2^-7; the engine picked the runner-up
    rows = np.stack([_row(2.0, 1.0), _row(4.0, 3.99)])
    a = greedy_agreement([3, 5], [3, 3], rows)
    assert a.ok and a.agree == 1 and a.near_ties == 1
    assert a.near_tie_margins[0] == pytest.approx(0.0025)
    assert a.text() == "1/2 equal, 1 near tie (margin 2.5e-03), 0 beyond a near tie"


def test_a_disagreement_beyond_a_near_tie_is_a_mismatch_with_its_margin():
    rows = np.stack([_row(2.0, 1.0), _row(4.0, 3.0)])  # margin 0.25
    a = greedy_agreement([3, 5], [3, 3], rows)
    assert not a.ok and a.near_ties == 0
    (m,) = a.mismatches
    assert (m.step, m.token, m.ref_token) == (1, 5, 3) and m.margin == pytest.approx(0.25)
    assert a.to_dict()["mismatches"] == [{"step": 1, "token": 5, "ref_token": 3, "margin": 0.25}]
    assert "1 beyond a near tie (step 1: 5 vs 3, margin 2.5e-01)" in a.text()


def test_the_threshold_is_inclusive_and_relative_to_the_top_logit():
    at = _row(8.0, 8.0 - 8.0 * NEAR_TIE)  # a gap of 2^-7 of the top logit: 1/16
    assert top2_margin(at) == NEAR_TIE
    assert greedy_agreement([5], [3], np.stack([at])).near_ties == 1
    beyond = _row(8.0, 8.0 - 8.0 * NEAR_TIE * 1.5)
    assert not greedy_agreement([5], [3], np.stack([beyond])).ok


def test_lengths_must_match():
    with pytest.raises(ValueError, match="lengths differ"):
        greedy_agreement([1, 2], [1], np.zeros((1, 4)))


def test_rel_l2_per_row():
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    got = np.array([[3.0, 4.5], [1.0, 0.0]])
    np.testing.assert_allclose(rel_l2(got, ref), [0.1, 0.0])
