"""Shape arithmetic shared by the models, training and evaluation."""
from __future__ import annotations


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` (> 0) that is >= n (ints): padded widths, few distinct shapes to compile."""
    return -(-n // multiple) * multiple
