"""Input checks (``engine.validate``): what every write and search runs before any kernel."""

from __future__ import annotations

import numpy as np
import pytest

from engine import validate
from engine.errors import InvalidArgument


@pytest.mark.parametrize("shape", [(1, 384), (5, 3), (1, 1)])
def test_finite_vectors_pass_and_come_back_c_ordered_float32(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    got = validate.vectors(np.asfortranarray(x), shape[1])
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_values_up_to_the_range_pass_although_their_sum_of_squares_is_large():
    x = np.full((3, 8), validate.MAX_ABS_VALUE, np.float32)
    x[1] = -validate.MAX_ABS_VALUE
    np.testing.assert_array_equal(validate.vectors(x, 8), x)


@pytest.mark.parametrize("huge", [2e15, 3e38, -3e38])
def test_finite_values_beyond_the_range_are_refused_with_their_row(huge):
    x = np.ones((3, 8), np.float32)
    x[1, 3] = huge
    with pytest.raises(InvalidArgument, match=r"beyond \+-1e\+15 \(first in row 1\)"):
        validate.vectors(x, 8)


def test_negative_ids_are_refused_unless_they_pad():
    with pytest.raises(InvalidArgument, match="non-negative"):
        validate.ids([3, -1])
    assert validate.ids([3, -1], unique=False, allow_padding=True).tolist() == [3, -1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("huge", [False, True])
def test_a_non_finite_value_anywhere_is_refused_with_its_row(bad, huge):
    x = np.full((4, 6), 3e38 if huge else 0.5, np.float32)
    x[2, 5] = bad
    with pytest.raises(InvalidArgument, match="NaN or infinity .first in row 2"):
        validate.vectors(x, 6)


def test_a_strided_view_is_checked_whole():
    x = np.zeros((4, 12), np.float32)
    x[3, 10] = np.nan
    with pytest.raises(InvalidArgument, match="row 3"):
        validate.vectors(x[:, ::2], 6)
