"""Statistics of reported results."""
from __future__ import annotations

import math


def binomial_stderr(p: float, n: int) -> float:
    """Standard error sqrt(p (1 - p) / n) of a rate p over n trials (0 when n = 0)."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else 0.0
