"""Summary statistics shared by the experiments' result tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_std"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (``ddof=0``) of ``values``; ``(nan, nan)`` when empty.

    The spread of the random controls over seeds (paper A's masking, paper B's interventions).

    Example:
        >>> mean_std([0.5, 0.7])
        (0.6, 0.09999999999999998)
    """
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
