"""sample_hands against the exact spec §1 distribution, computed here independently of sampling.py/solver.py.

Independent pieces: a recursive exact-fraction 24 solver (any binary tree of + - * /; it must find the spec's counts
1362 and 566 of solvable multisets, which pins it to the reference solver's solvable set) and an explicit enumeration
of the generative process (4 i.i.d. ranks; OOD: 3 i.i.d. ranks plus a face card inserted at a uniform position).
"""
import functools
import itertools
from collections import Counter
from fractions import Fraction

import jax
import numpy as np
import pytest
from scipy import stats

from jaxrl_vlm.envs.general_points.sampling import SUITS, sample_hands

N = 200_000
TARGET = 24


@functools.lru_cache(maxsize=None)
def _values(multiset: tuple[int, ...]) -> frozenset:
    """Every exact value of a binary expression tree over the multiset (each number used once)."""
    if len(multiset) == 1:
        return frozenset([Fraction(multiset[0])])
    out = set()
    idx = range(len(multiset))
    for size in range(1, len(multiset)):
        for left in itertools.combinations(idx, size):
            a = tuple(sorted(multiset[i] for i in left))
            b = tuple(sorted(multiset[i] for i in idx if i not in left))
            for x in _values(a):
                for y in _values(b):
                    out.update((x + y, x - y, x * y))
                    if y:
                        out.add(x / y)
    return frozenset(out)


@functools.lru_cache(maxsize=None)
def _solvable(multiset: tuple[int, ...]) -> bool:
    """Whether 4 numbers make TARGET: split into 1+3 or 2+2 and look the needed partner value up."""
    for size in (1, 2):
        for left in itertools.combinations(range(4), size):
            a = _values(tuple(sorted(multiset[i] for i in left)))
            b = _values(tuple(sorted(multiset[i] for i in range(4) if i not in left)))
            for x in a:
                # partner values y with x+y, x-y, y-x, x*y, x/y or y/x equal to TARGET
                needed = {TARGET - x, x - TARGET, x + TARGET}
                if x:
                    needed |= {TARGET / x, x / TARGET, TARGET * x}
                if any(v in b for v in needed):
                    return True
    return False


def test_independent_solver_matches_spec_counts():
    assert sum(_solvable(m) for m in itertools.combinations_with_replacement(range(1, 11), 4)) == 566
    assert sum(_solvable(m) for m in itertools.combinations_with_replacement(range(1, 14), 4)) == 1362


def _exact_tuple_probs(face_cards_as_10: bool, ood: bool, conditioned: bool = True, face_weighted: bool = True):
    """dict ordered rank tuple -> probability under the generative process (conditioned on solvable).

    conditioned=False and face_weighted=False give wrong alternatives that the tests must reject.
    """
    probs: Counter = Counter()
    if ood:
        for rest in itertools.product(range(1, 14), repeat=3):
            for face in (11, 12, 13):
                for pos in range(4):
                    hand = rest[:pos] + (face,) + rest[pos:]
                    if face_weighted:
                        probs[hand] += Fraction(1, 13**3 * 3 * 4)
                    else:  # a wrong alternative: uniform over the tuples that have a face card
                        probs[hand] = Fraction(1)
    else:
        for hand in itertools.product(range(1, 14), repeat=4):
            probs[hand] = Fraction(1, 13**4)
    if conditioned:
        numbers = {h: tuple(sorted(min(r, 10) if face_cards_as_10 else r for r in h)) for h in probs}
        probs = Counter({h: p for h, p in probs.items() if _solvable(numbers[h])})
    total = sum(probs.values())
    return {h: p / total for h, p in probs.items()}


def _multiset_marginal(probs):
    out: Counter = Counter()
    for h, p in probs.items():
        out[tuple(sorted(h))] += p
    return out


def _chisquare_multisets(observed: Counter, expected_probs: Counter, n: int) -> float:
    keys = sorted(set(expected_probs) | set(observed))
    f_obs = np.array([observed.get(k, 0) for k in keys], dtype=float)
    f_exp = np.array([float(expected_probs.get(k, 0)) * n for k in keys])
    if (f_exp == 0).any():
        return 0.0 if f_obs[f_exp == 0].sum() else stats.chisquare(f_obs[f_exp > 0], f_exp[f_exp > 0]).pvalue
    return stats.chisquare(f_obs, f_exp).pvalue


@pytest.fixture(scope="module", params=[(True, False, "mixed"), (False, True, "black")], ids=["in_dist", "ood"])
def sample(request):
    face, ood, suits = request.param
    ranks, suit_idx = sample_hands(jax.random.key(7), N, face_cards_as_10=face, ood=ood, suits=suits)
    return face, ood, suits, np.asarray(ranks), np.asarray(suit_idx)


def test_rank_multiset_marginal_is_exact(sample):
    face, ood, _, ranks, _ = sample
    observed = Counter(map(tuple, np.sort(ranks, axis=1).tolist()))
    exact = _multiset_marginal(_exact_tuple_probs(face, ood))
    assert _chisquare_multisets(observed, exact, N) > 1e-3
    # The same sample rejects the unconditioned process and (OOD) a process that ignores the face-card count.
    assert _chisquare_multisets(observed, _multiset_marginal(_exact_tuple_probs(face, ood, conditioned=False)), N) < 1e-9
    if ood:
        wrong = _multiset_marginal(_exact_tuple_probs(face, ood, face_weighted=False))
        assert _chisquare_multisets(observed, wrong, N) < 1e-9


def test_per_position_rank_frequencies_are_exact(sample):
    face, ood, _, ranks, _ = sample
    probs = _exact_tuple_probs(face, ood)
    for pos in range(4):
        expected = np.zeros(13)
        for h, p in probs.items():
            expected[h[pos] - 1] += float(p)
        observed = np.bincount(ranks[:, pos] - 1, minlength=13)
        assert stats.chisquare(observed, expected * N).pvalue > 1e-3, pos


def test_suits_uniform_on_suit_set_and_hands_solvable(sample):
    face, _, suits, ranks, suit_idx = sample
    allowed = {"mixed": "HSDC", "black": "SC", "red": "HD"}[suits]
    letters = np.array(SUITS)[suit_idx]
    assert set(np.unique(letters)) == set(allowed)
    counts = [int((letters == s).sum()) for s in allowed]
    assert stats.chisquare(counts).pvalue > 1e-3
    numbers = np.where(face, np.minimum(ranks, 10), ranks)
    assert all(_solvable(m) for m in set(map(tuple, np.sort(numbers, axis=1).tolist())))
    assert ranks.min() >= 1 and ranks.max() <= 13


def test_red_suits_only_hearts_and_diamonds():
    _, suit_idx = sample_hands(jax.random.key(1), 512, face_cards_as_10=True, ood=False, suits="red")
    assert set(np.array(SUITS)[np.asarray(suit_idx)].ravel()) == {"H", "D"}
