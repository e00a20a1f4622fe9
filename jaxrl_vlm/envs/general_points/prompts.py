"""GeneralPoints protocol strings (spec generalpoints.md §3), rendered on the host. Byte-exact with the reference."""
from __future__ import annotations

from typing import Sequence

RANK_NAMES = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
FACE_CARD_MSG_IN_DIST = "'J', 'Q', and 'K' count as '10'."
FACE_CARD_MSG_OOD = "'J', 'Q', and 'K' count as '11', '12', and '13' respectively."
FEEDBACK_PREFIX = "You failed this trial because "

_L_TEMPLATE = """
[Task Description]
You are an expert {target_number} points card game player. You will receive a set of 4 cards.
Note that {face_card_msg}, and each card must be used once.
Your goal is to output a formula that evaluates to {target_number} using numbers from the cards and operators such as '+', '-', '*', '/', '(', ')', and '='.

[Input]
Cards: {cards}

[Output]
{{
  "cards": [x, y, z, w], where {face_card_msg},
  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,
  "formula": 'an equation that equals {target_number}',
}}

"""

_VL_TEMPLATE = """
[Task Description]
You are an expert {target_number} points card game player. You are observing these four cards in the image.
Note that {face_card_msg}, and each card must be used once.
Your goal is to output a formula that evaluates to {target_number} using numbers from the cards and operators such as '+', '-', '*', '/', '(', ')', and '='.

[Output]
Your response should be a valid json file in the following format:
{{
  "cards": [x, y, z, w], where {face_card_msg},
  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,
  "formula": 'an equation that equals {target_number}',
}}

"""

_RESPONSE_TEMPLATE = """
{{
  "cards": {cards},
  "number": {numbers},
  "formula": "{formula}",
}}"""


def card_names(ranks: Sequence[int]) -> list[str]:
    """Plain card names of ranks 1..13 (A, 2..10, J, Q, K)."""
    return [RANK_NAMES[int(r) - 1] for r in ranks]


def card_numbers(ranks: Sequence[int], face_cards_as_10: bool) -> list[int]:
    """Numbers of ranks 1..13 under a face rule: min(r, 10) in-distribution, r itself for the OOD rule."""
    return [min(int(r), 10) if face_cards_as_10 else int(r) for r in ranks]


def face_card_msg(face_cards_as_10: bool) -> str:
    """The face-card sentence fragment of the prompt."""
    return FACE_CARD_MSG_IN_DIST if face_cards_as_10 else FACE_CARD_MSG_OOD


def user_message(ranks: Sequence[int], *, face_cards_as_10: bool, language_only: bool, target: int = 24) -> str:
    """The GP-L (language_only) or GP-VL user message text for one hand of ranks 1..13."""
    template = _L_TEMPLATE if language_only else _VL_TEMPLATE
    return template.format(target_number=target, face_card_msg=face_card_msg(face_cards_as_10), cards=card_names(ranks))


def expert_response(ranks: Sequence[int], formula: str, *, face_cards_as_10: bool, target: int = 24) -> str:
    """The SFT target reply for one hand: cards, numbers and `formula=target` (spec §3)."""
    return _RESPONSE_TEMPLATE.format(
        cards=card_names(ranks), numbers=card_numbers(ranks, face_cards_as_10), formula=f"{formula}={target}"
    )


def feedback_message(feedback: str) -> str:
    """The user message of a revision turn."""
    return FEEDBACK_PREFIX + feedback
