"""Exact sampling of GeneralPoints hands (spec generalpoints.md §1).

The reference draws ranks (in-distribution: 4 i.i.d. uniform on 1..13; OOD: 3 uniform on 1..13 plus one uniform on
11..13, shuffled) and redraws the whole hand until it is solvable. That is the generative distribution conditioned
on solvability, so we sample it directly: one draw over the 13**4 ordered rank tuples with weights proportional to
P_gen(ranks) * [numbers(ranks) solvable]. In-distribution P_gen is uniform; under the OOD process
P_gen(ranks) = (#face cards in ranks) / (4*3*13**3). The weights are small integers, so an integer inverse-CDF draw
(uniform integer below the total weight, searched in the integer cumulative sum) is exact, with no float rounding.
Suits are independent of solvability and drawn uniformly from the suit set.
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.general_points.solver import multiset_code, solution_table

SUITS = ("H", "S", "D", "C")
SUIT_SETS = {"mixed": (0, 1, 2, 3), "black": (1, 3), "red": (0, 2)}
NUM_RANKS = 13


def hand_numbers(ranks, face_cards_as_10):
    """Numbers of ranks under a face rule: int[..., 4] -> int[..., 4] (NumPy or JAX; face_cards_as_10 may be traced)."""
    xp = jnp if isinstance(ranks, jax.Array) or isinstance(face_cards_as_10, jax.Array) else np
    return xp.where(face_cards_as_10, xp.minimum(ranks, 10), ranks)


def suit_ids(suits: str) -> tuple[int, ...]:
    """Suit indices (into SUITS) of a named suit set: 'mixed', 'black' or 'red'."""
    if suits not in SUIT_SETS:
        raise ValueError(f"unknown suit set {suits!r}; expected one of {sorted(SUIT_SETS)}")
    return SUIT_SETS[suits]


@functools.lru_cache(maxsize=None)
def rank_tuple_weights(face_cards_as_10: bool, ood: bool, target: int = 24) -> np.ndarray:
    """int64[13**4]: unnormalised exact probability of each ordered rank tuple (index = ranks-1 in base 13, first card
    most significant): #face cards (OOD) or 1 (in-distribution), times solvability."""
    ranks = np.array(list(itertools.product(range(1, NUM_RANKS + 1), repeat=4)), dtype=np.int64)
    numbers = np.sort(hand_numbers(ranks, bool(face_cards_as_10)), axis=1)
    table = solution_table(target)
    solvable = table.counts[table.lookup[multiset_code(numbers)]] > 0
    weight = (ranks >= 11).sum(axis=1) if ood else np.ones(len(ranks), dtype=np.int64)
    weight = weight * solvable
    if weight.sum() == 0:
        raise ValueError(f"no hand is solvable for target {target} under this rule")
    return weight


@functools.partial(jax.jit, static_argnames=("n", "face_cards_as_10", "ood", "suits", "target"))
def sample_hands(key: jax.Array, n: int, *, face_cards_as_10: bool, ood: bool, suits: str, target: int = 24):
    """Draw n solvable hands exactly from the spec §1 distribution.

    Returns (ranks int32[n, 4] in 1..13, suits int32[n, 4] indexing SUITS = ('H', 'S', 'D', 'C')).
    """
    weights = rank_tuple_weights(face_cards_as_10, ood, target)
    cumulative = jnp.asarray(np.cumsum(weights), dtype=jnp.int32)
    rank_key, suit_key = jax.random.split(key)
    u = jax.random.randint(rank_key, (n,), 0, int(weights.sum()), dtype=jnp.int32)
    flat = jnp.searchsorted(cumulative, u, side="right").astype(jnp.int32)
    place = 13 ** jnp.arange(3, -1, -1, dtype=jnp.int32)
    ranks = (flat[:, None] // place) % 13 + 1
    allowed = jnp.asarray(suit_ids(suits), dtype=jnp.int32)
    suit_idx = jax.random.randint(suit_key, (n, 4), 0, len(allowed))
    return ranks.astype(jnp.int32), allowed[suit_idx]
