"""The jaxtyping hook of conftest.py is on: a wrongly shaped argument is refused at the call."""

from __future__ import annotations

import os

import jaxtyping
import pytest
import torch

from vh_lens.core.layout import cell_overlap

pytestmark = pytest.mark.skipif(os.environ.get("VH_LENS_TYPECHECK", "1") == "0", reason="VH_LENS_TYPECHECK=0")


def test_a_wrong_shape_is_refused_by_the_annotation() -> None:
    assert cell_overlap(torch.zeros(2, 4), (0.0, 0.0, 1.0, 1.0)).shape == (2,)
    with pytest.raises(jaxtyping.TypeCheckError, match="cell_boxes"):
        cell_overlap(torch.zeros(2, 3), (0.0, 0.0, 1.0, 1.0))  # the last axis must be 4


def test_an_int_is_a_float_as_pep_484_has_it() -> None:
    assert cell_overlap(torch.zeros(1, 4), (0, 0, 1, 1)).shape == (1,)


@pytest.mark.unchecked_arguments
def test_the_marker_turns_the_checks_off_for_one_test() -> None:
    with pytest.raises(IndexError):  # the body runs (no TypeCheckError first) and fails on the missing column
        cell_overlap(torch.zeros(2, 3), (0.0, 0.0, 1.0, 1.0))
