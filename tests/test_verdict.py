"""helpers.verdict: the value policy every claim follows, on values whose outcome is worked out by hand."""
import math

import numpy as np
import pytest

from helpers.verdict import compare, majority, sample, signed

INF = math.inf


def test_nan_is_dropped_and_not_counted_infinities_are_kept_and_counted():
    values = sample([1.0, np.nan, INF, 3.0, np.nan])
    assert values.n == 3 and values.dropped == 2 and values.infinite == 1
    assert values.of(np.mean) == INF and values.of(np.median) == 3.0
    assert values.note("edge points") == "1 of 3 edge points infinite; 2 NaN dropped"
    assert sample([1.0, 2.0]).note("edge points") == ""
    nothing = sample([np.nan])
    assert nothing.n == 0 and math.isnan(nothing.of(np.mean))
    assert math.isnan(sample([INF, -INF]).of(np.mean))  # no mean: no value, not a number to compare


def test_a_comparison_needs_two_values_that_differ():
    assert compare(1.0, 2.0, "smaller") == (True, "") and compare(1.0, 2.0, "larger") == (False, "")
    assert compare(15.1, INF, "smaller").holds is True  # finite against diverged: decided
    assert compare(INF, INF, "smaller") == (None, "both are infinite")
    assert compare(0.25, 0.25, "larger") == (None, "a tie: both are 0.25")
    assert compare(np.nan, 1.0, "smaller", ("vit_ti", "resnet_50")) == (None, "no value for vit_ti")


def test_a_sign_of_exactly_zero_cannot_decide():
    assert signed(-0.2, -1) == (True, "") and signed(0.2, -1) == (False, "")
    assert signed(0.0, 1, "the difference") == (None, "the difference is exactly zero")
    assert signed(-0.0, -1).holds is None and signed(np.nan, 1).holds is None


@pytest.mark.parametrize("agree, against, total, holds", [
    (3, 1, 4, True),      # 3 of 4 agree
    (1, 3, 4, False),
    (2, 2, 4, None),      # exactly half
    (2, 1, 4, None),      # half agree; the zero, counted either way, would decide
    (1, 2, 4, None),      # 1 + the zero = exactly half
    (1, 3, 5, False),     # 1 + 1 zero = 2 of 5: fails either way
    (3, 0, 5, True),      # 3 of 5 even with the zeros against
    (0, 0, 0, None),
])
def test_a_majority_counts_zeros_for_neither_side(agree, against, total, holds):
    decision = majority(agree, against, total)
    assert decision.holds is holds and (holds is not None or decision.why)
