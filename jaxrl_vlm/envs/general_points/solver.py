"""The 24-points solver: every solution string the reference enumerates, for all multisets at once.

The reference (spec generalpoints.md §2) loops in Python over permutations x operator triples x 7 bracket shapes for
one hand at a time. Here each of the 7*64 expression templates is evaluated once, with exact rational arithmetic on
NumPy arrays, over every multiset of 4 numbers from 1..13 and all 24 position permutations together. Building the
whole table takes about a second.
"""
from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np

MAX_NUMBER = 13
MAX_SOLUTION_LEN = 15
OPERATORS = "+-*/"
BRACKET_SHAPES = (
    "{a}{o}{b}{p}{c}{q}{d}",
    "({a}{o}{b}){p}{c}{q}{d}",
    "({a}{o}{b}{p}{c}){q}{d}",
    "{a}{o}({b}{p}{c}){q}{d}",
    "{a}{o}({b}{p}{c}{q}{d})",
    "{a}{o}{b}{p}({c}{q}{d})",
    "({a}{o}{b}){p}({c}{q}{d})",
)


class _Rational:
    """Element-wise exact fractions num/den over int64 arrays, with a validity mask for division by zero."""

    __slots__ = ("num", "den", "ok")

    def __init__(self, num: np.ndarray, den: np.ndarray, ok: np.ndarray):
        self.num, self.den, self.ok = num, den, ok

    def __add__(self, other: "_Rational") -> "_Rational":
        return _Rational(self.num * other.den + other.num * self.den, self.den * other.den, self.ok & other.ok)

    def __sub__(self, other: "_Rational") -> "_Rational":
        return _Rational(self.num * other.den - other.num * self.den, self.den * other.den, self.ok & other.ok)

    def __mul__(self, other: "_Rational") -> "_Rational":
        return _Rational(self.num * other.num, self.den * other.den, self.ok & other.ok)

    def __truediv__(self, other: "_Rational") -> "_Rational":
        nonzero = other.num != 0
        safe = np.where(nonzero, other.num, 1)
        return _Rational(self.num * other.den * np.sign(safe), self.den * np.abs(safe), self.ok & other.ok & nonzero)


@functools.lru_cache(maxsize=None)
def _compiled_templates() -> tuple[tuple[str, object], ...]:
    """(format string, compiled expression over names a,b,c,d) for the 7 shapes x 64 operator triples."""
    out = []
    for shape in BRACKET_SHAPES:
        for o, p, q in itertools.product(OPERATORS, repeat=3):
            fmt = shape.replace("{o}", o).replace("{p}", p).replace("{q}", q)
            code = compile(fmt.format(a="a", b="b", c="c", d="d"), "<gp-solver>", "eval")
            out.append((fmt, code))
    return tuple(out)


def _solutions_for_rows(rows: np.ndarray, target: int) -> list[set[str]]:
    """Solution-string sets for each row of int array rows[M, 4] (numbers, any order)."""
    rows = np.asarray(rows, dtype=np.int64)
    found: list[set[str]] = [set() for _ in range(len(rows))]
    one = np.ones(len(rows), dtype=np.int64)
    ok = np.ones(len(rows), dtype=bool)
    templates = _compiled_templates()
    for perm in itertools.permutations(range(4)):
        names = {k: _Rational(rows[:, i], one, ok) for k, i in zip("abcd", perm)}
        text = [[str(v) for v in rows[:, i]] for i in perm]
        for fmt, code in templates:
            value = eval(code, {}, names)  # noqa: S307 - compiled from our own fixed templates
            hit = np.flatnonzero(value.ok & (value.num == target * value.den))
            for m in hit:
                found[m].add(fmt.format(a=text[0][m], b=text[1][m], c=text[2][m], d=text[3][m]))
    return found


def all_multisets(max_number: int = MAX_NUMBER) -> np.ndarray:
    """Every multiset of 4 numbers from 1..max_number, sorted ascending, in lexicographic order: int32[M, 4]."""
    return np.array(list(itertools.combinations_with_replacement(range(1, max_number + 1), 4)), dtype=np.int32)


class SolutionTable(NamedTuple):
    """Solutions of every multiset of 4 numbers from 1..13 for one target, in ragged layout (host NumPy arrays).

    multisets: int32[M, 4] sorted numbers (M = 1820); row m's solutions are strings[offsets[m]:offsets[m+1]].
    lookup: int32[14**4], dense map from the base-14 code of a sorted multiset to its row (-1 where unused).
    strings: uint8[N, 15] ASCII, zero-padded; lengths: int32[N]; counts: int32[M] = offsets[1:] - offsets[:-1].
    """

    target: int
    multisets: np.ndarray
    lookup: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    strings: np.ndarray
    lengths: np.ndarray

    def row(self, numbers) -> int:
        """Row index of a hand's numbers (any order)."""
        key = multiset_code(np.sort(np.asarray(numbers, dtype=np.int64))[None])[0]
        if not 0 <= key < len(self.lookup) or self.lookup[key] < 0:
            raise ValueError(f"numbers {list(numbers)} are not 4 integers in 1..{MAX_NUMBER}")
        return int(self.lookup[key])

    def solutions(self, numbers) -> list[str]:
        """Sorted solution strings for a hand's numbers."""
        m = self.row(numbers)
        rows = self.strings[self.offsets[m]:self.offsets[m + 1]]
        lens = self.lengths[self.offsets[m]:self.offsets[m + 1]]
        return [bytes(r[:n]).decode("ascii") for r, n in zip(rows, lens)]

    @property
    def solvable(self) -> np.ndarray:
        """bool[M]: whether each multiset has at least one solution."""
        return self.counts > 0


def multiset_code(sorted_numbers: np.ndarray) -> np.ndarray:
    """Base-14 code of sorted 4-number rows: int[..., 4] -> int[...] (NumPy or JAX arrays alike)."""
    base = MAX_NUMBER + 1
    return ((sorted_numbers[..., 0] * base + sorted_numbers[..., 1]) * base + sorted_numbers[..., 2]) * base + sorted_numbers[..., 3]


@functools.lru_cache(maxsize=8)
def solution_table(target: int = 24) -> SolutionTable:
    """The (cached) table of solutions for all 1820 multisets of numbers 1..13; builds in about a second."""
    if not isinstance(target, (int, np.integer)) or isinstance(target, bool):
        raise TypeError(f"target must be an int, got {target!r}")
    multisets = all_multisets()
    found = _solutions_for_rows(multisets, int(target))
    per_row = [sorted(s) for s in found]
    counts = np.array([len(s) for s in per_row], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = [s for row in per_row for s in row]
    width = max([MAX_SOLUTION_LEN] + [len(s) for s in flat])
    strings = np.zeros((len(flat), width), dtype=np.uint8)
    for i, s in enumerate(flat):
        strings[i, : len(s)] = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
    lengths = np.array([len(s) for s in flat], dtype=np.int32)
    lookup = np.full((MAX_NUMBER + 1) ** 4, -1, dtype=np.int32)
    lookup[multiset_code(multisets.astype(np.int64))] = np.arange(len(multisets), dtype=np.int32)
    return SolutionTable(int(target), multisets, lookup, offsets, counts, strings, lengths)


def solutions(numbers, target: int = 24) -> list[str]:
    """All solution strings the reference solver finds for 4 numbers (spec §2), sorted.

    numbers: 4 ints in 1..13 (any order). Numbers outside 1..13 are solved directly (no table).
    """
    nums = [int(n) for n in numbers]
    if len(nums) != 4:
        raise ValueError(f"need exactly 4 numbers, got {len(nums)}: {nums}")
    if all(1 <= n <= MAX_NUMBER for n in nums):
        return solution_table(target).solutions(nums)
    return sorted(_solutions_for_rows(np.array([nums]), int(target))[0])
