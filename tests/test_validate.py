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


def test_huge_finite_values_pass_although_their_squares_overflow():
    x = np.full((3, 8), 3e38, np.float32)
    x[1] = -3e38
    np.testing.assert_array_equal(validate.vectors(x, 8), x)


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
