"""Expert SFT examples for GeneralPoints (spec training.md §3.4): a sampled hand, its prompt and an ideal reply.

Hands come from the exact sampler (spec generalpoints.md §1); the reply's formula is one of the reference solver's
solution strings for the hand's numbers, picked uniformly by a NumPy generator seeded from `seed`, so the same seed
gives the same examples everywhere.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jaxrl_vlm.envs.general_points.prompts import expert_response, user_message
from jaxrl_vlm.envs.general_points.sampling import hand_numbers, sample_hands, suit_ids
from jaxrl_vlm.envs.general_points.solver import solution_table

_FORMULA_STREAM = 0x24  # second entropy word of the formula generator, so it differs from the hand stream


class ExpertExamples(NamedTuple):
    """N expert examples (host arrays and strings).

    ranks, suits, numbers: int32[N, 4] (suits index SUITS); formulas: N solver strings without `=target`;
    prompts: N user messages (spec §3); responses: N expert replies (formula with `=target` appended).
    """

    ranks: np.ndarray
    suits: np.ndarray
    numbers: np.ndarray
    formulas: list[str]
    prompts: list[str]
    responses: list[str]


def expert_examples(num_examples: int, seed: int, *, language_only: bool, face_cards_as_10: bool, suits: str,
                    target: int = 24) -> ExpertExamples:
    """Draw num_examples expert examples deterministically from seed.

    face_cards_as_10=False is the OOD rule (J/Q/K = 11/12/13) and uses OOD hands (every hand holds a face card).
    suits: 'mixed', 'black' or 'red'.
    """
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    suit_ids(suits)
    ranks, suit_idx = sample_hands(jax.random.key(int(seed)), int(num_examples), face_cards_as_10=face_cards_as_10,
                                   ood=not face_cards_as_10, suits=suits, target=target)
    ranks, suit_idx = np.asarray(ranks, dtype=np.int32), np.asarray(suit_idx, dtype=np.int32)
    numbers = hand_numbers(ranks, face_cards_as_10).astype(np.int32)
    table = solution_table(target)
    rows = [table.row(n) for n in numbers]
    picks = np.random.default_rng((int(seed), _FORMULA_STREAM)).integers(0, table.counts[rows])
    formulas = [table.solutions(n)[int(k)] for n, k in zip(numbers, picks)]
    prompts = [user_message(r, face_cards_as_10=face_cards_as_10, language_only=language_only, target=target)
               for r in ranks]
    responses = [expert_response(r, f, face_cards_as_10=face_cards_as_10, target=target)
                 for r, f in zip(ranks, formulas)]
    return ExpertExamples(ranks, suit_idx, numbers, formulas, prompts, responses)
