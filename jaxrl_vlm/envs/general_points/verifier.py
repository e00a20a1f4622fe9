"""GeneralPoints verifier, host reference: reward and feedback for one reply (spec generalpoints.md §4).

This is the definition the device path (`verifier_device.py`) must reproduce byte for byte. Where the spec leaves a
detail open, this module fixes it (the device path follows):

- Reading bytes: a reply given as bytes is read with `bytes.decode('utf-8', errors='replace')` (`read_reply`). Every
  ASCII byte survives that decoding in place and every other byte turns into some non-ASCII character; all syntax the
  verifier looks at (JSON structure, the regex literals, digits, operators) is ASCII, so the result depends on the
  bytes only through that property.
- Digits are ASCII `0-9` (the reference's `\\d` also matched other Unicode digits; here they are illegal characters).
- Numbers are compared and printed through their canonical decimal form (leading zeros stripped), never through
  Python `int` conversion, so any length of digit run works (the reference crashed beyond 4300 digits).
- JSON branch (spec §4.1 and its Deviation): the whole reply is read with Python `json.loads`, except that (a) an
  integer literal with more than `JSON_MAX_INT_DIGITS` digits makes the reply "not JSON" (what `json.loads` does
  under CPython's default `int_max_str_digits`, fixed here instead of read from the interpreter), and (b) a reply
  nesting arrays/objects deeper than `JSON_MAX_DEPTH` is "not JSON" (CPython's own limit is its recursion limit,
  which depends on the caller's stack; we fix a small one). Only a top-level object counts; duplicate keys: last
  wins. `formula`: a string value is used (JSON escapes decoded); any other value type reads as the string `None`.
  `cards`: a list value must hold exactly the plain card names (strings) as a multiset; a string value goes through
  the same string handling as the regex capture; any other value type is an empty (wrong) list.
- Vision check (VL): the card string has `[`, `]`, `'`, `"` and spaces removed and is split on `,`; it must give
  exactly 4 items equal to the plain names as a multiset. (The reference first tried `int()` on the regex capture
  and then failed every all-numeric card list; the spec's rule is used instead.) The `number` field never affects
  the reward, so it is not read.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from fractions import Fraction
from typing import Sequence

from jaxrl_vlm.envs.general_points.prompts import card_names
from jaxrl_vlm.envs.general_points.sampling import hand_numbers
from jaxrl_vlm.envs.general_points.solver import solution_table

REWARD_CORRECT = 5.0
REWARD_PARTIAL = 1.0
REWARD_NO_SOLUTION = -1.0
REWARD_INCORRECT_VISION = -1.5
REWARD_INCORRECT_NUMBER = -2.0
REWARD_ILLEGAL = -3.0
REWARDS = {
    "CORRECT_SOLUTION": REWARD_CORRECT,
    "PARTIAL_SOLUTION": REWARD_PARTIAL,
    "NO_SOLUTION": REWARD_NO_SOLUTION,
    "INCORRECT_VISION": REWARD_INCORRECT_VISION,
    "INCORRECT_NUMBER": REWARD_INCORRECT_NUMBER,
    "ILLEGAL_FORMULA": REWARD_ILLEGAL,
}
STEP_LIMIT_REWARD = -1.0
STEP_LIMIT_FEEDBACK = "step_limit_reached"

MSG_VISION = "you recognized wrong cards"
MSG_ILLEGAL = "illegal characters"
MSG_AFTER_NUMBER = "invalid sequence after number"
MSG_AFTER_OPERATOR = "invalid sequence after operator"
MSG_BEFORE_OPEN = "invalid sequence before '('"
MSG_AFTER_CLOSE = "invalid sequence after ')'"
MSG_UNMATCHED = "unmatched closing parenthesis"
MSG_INVALID_NUMBERS = "you used invalid numbers: "
MSG_TOO_MANY_HEAD = "you used numbers: "
MSG_TOO_MANY_TAIL = " too many times"
MSG_UNUSED = "you didn't use numbers: "
MSG_CORRECT = "Correct solution"
MSG_PARTIAL = "partial solution"
MSG_NO_MATCH = "your formula does not match any solution"
MSG_PARTLY_CORRECT_TAIL = " is partially correct but the full formula does not match any solution"
MISSING_FIELD = "None"

JSON_MAX_DEPTH = 31
JSON_MAX_INT_DIGITS = 4300

_FORMULA_RE = re.compile(r'"formula": "(.*?)"')
_CARDS_RE = re.compile(r'"cards": \[([^\]]+)\]')
_TOKEN_RE = re.compile(r"[0-9]+|[+\-*/()]")
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPERATORS = "+-*/"


def read_reply(reply: bytes) -> str:
    """The text of a reply given as bytes (UTF-8, invalid bytes replaced by U+FFFD)."""
    return reply.decode("utf-8", errors="replace")


class _JsonInt:
    """An integer literal of a JSON document, kept as text (never equal to a card name or a formula string)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _parse_json_int(text: str) -> _JsonInt:
    if len(text.lstrip("-")) > JSON_MAX_INT_DIGITS:
        raise ValueError(f"JSON integer literal longer than {JSON_MAX_INT_DIGITS} digits")
    return _JsonInt(text)


def _json_depth(text: str) -> int:
    """Maximum bracket nesting of a text outside its JSON strings (meaningful for valid JSON)."""
    depth = deepest = 0
    for ch in _JSON_STRING_RE.sub("", text):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json_object(text: str) -> dict | None:
    """The reply as a JSON object under the rules in the module docstring, or None (not JSON / not an object)."""
    if _json_depth(text) > JSON_MAX_DEPTH:
        return None
    try:
        value = json.loads(text, parse_int=_parse_json_int)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def extract_formula(text: str, document: dict | None) -> str:
    """Formula text before its first `=` (spec §4.1): JSON string value, else first regex capture, else `None`."""
    if document is not None and "formula" in document:
        value = document["formula"]
        formula = value if isinstance(value, str) else MISSING_FIELD
    else:
        match = _FORMULA_RE.search(text)
        formula = match.group(1) if match else MISSING_FIELD
    return formula.split("=")[0]


def _card_items(card_text: str) -> list[str]:
    """Reference list handling of a card string: strip brackets, quotes and spaces, split on `,`, need 4 items."""
    for ch in "[]'\" ":
        card_text = card_text.replace(ch, "")
    items = card_text.split(",")
    return items if len(items) == 4 else []


def recognized_cards(text: str, document: dict | None) -> list:
    """The recognised card list (spec §4.2 and the JSON Deviation); [] when missing or malformed."""
    if document is not None and "cards" in document:
        value = document["cards"]
        if isinstance(value, list):
            return value
        return _card_items(value) if isinstance(value, str) else []
    match = _CARDS_RE.search(text)
    return _card_items("[" + match.group(1) + "]") if match else []


def _vision_ok(cards: list, names: list[str]) -> bool:
    if len(cards) != len(names) or not all(isinstance(c, str) for c in cards):
        return False
    return Counter(cards) == Counter(names)


def _canonical(digits: str) -> str:
    return digits.lstrip("0") or "0"


def _value(tokens: list[str]) -> Fraction | None:
    """Exact value of a token sequence that passed the sequence check, or None when it is not a complete expression
    (unclosed `(`, trailing operator, a number with a leading zero, division by zero)."""
    if not tokens or tokens[-1] in _OPERATORS:
        return None
    values: list[Fraction] = []
    ops: list[str] = []
    precedence = {"+": 0, "-": 0, "*": 1, "/": 1}

    def reduce_top() -> bool:
        op = ops.pop()
        right = values.pop()
        left = values.pop()
        if op == "/" and right == 0:
            return False
        values.append(left + right if op == "+" else left - right if op == "-" else left * right if op == "*"
                      else left / right)
        return True

    for token in tokens:
        if token[0].isdigit():
            if len(token) > 1 and token[0] == "0":
                return None
            values.append(Fraction(int(token)))
        elif token == "(":
            ops.append(token)
        elif token == ")":
            while ops[-1] != "(":
                if not reduce_top():
                    return None
            ops.pop()
        else:
            while ops and ops[-1] != "(" and precedence[ops[-1]] >= precedence[token]:
                if not reduce_top():
                    return None
            ops.append(token)
    while ops:
        if ops[-1] == "(" or not reduce_top():
            return None
    return values[0]


def _sequence_messages(tokens: list[str]) -> list[str]:
    messages = []
    previous = None
    open_parens = 0
    for token in tokens:
        kind = "number" if token[0].isdigit() else "operator" if token in _OPERATORS else token
        if kind == "number" and previous not in (None, "operator", "("):
            messages.append(MSG_AFTER_NUMBER)
        elif kind == "operator" and previous not in ("number", ")"):
            messages.append(MSG_AFTER_OPERATOR)
        elif kind == "(":
            if previous in (None, "operator", "("):
                open_parens += 1
            else:
                messages.append(MSG_BEFORE_OPEN)
        elif kind == ")":
            if previous not in ("number", ")"):
                messages.append(MSG_AFTER_CLOSE)
            elif open_parens:
                open_parens -= 1
            else:
                messages.append(MSG_UNMATCHED)
        previous = kind
    return messages


def _number_messages(tokens: list[str], numbers: list[int]) -> list[str]:
    used = Counter(_canonical(t) for t in tokens if t[0].isdigit())
    held = Counter(str(n) for n in numbers)
    messages = []
    invalid = [n for n in used if n not in held]
    overused = [n for n in used if used[n] > held[n]]
    if invalid:
        messages.append(MSG_INVALID_NUMBERS + "[" + ", ".join(invalid) + "]")
    elif overused:
        messages.append(MSG_TOO_MANY_HEAD + "[" + ", ".join(overused) + "]" + MSG_TOO_MANY_TAIL)
    unused = [n for n in held if held[n] > used[n]]
    if unused:
        messages.append(MSG_UNUSED + "[" + ", ".join(unused) + "]")
    return messages


def _outcome(formula: str, tokens: list[str], solutions: list[str], target: int) -> tuple[float, str]:
    """Reward and message of a formula that passed every check (spec §4.6)."""
    value = _value(tokens)
    if value is not None and value == target:
        return REWARD_CORRECT, MSG_CORRECT
    if value is None and any(s.startswith(formula) for s in solutions):
        return REWARD_PARTIAL, MSG_PARTIAL
    register = ""
    for token in tokens:
        if not any(s.startswith(register + token) for s in solutions):
            break
        register += token
    if not register:
        return REWARD_NO_SOLUTION, MSG_NO_MATCH
    return REWARD_NO_SOLUTION, register + MSG_PARTLY_CORRECT_TAIL


def score_response(response: str, ranks: Sequence[int], *, face_cards_as_10: bool, language_only: bool,
                   target: int = 24) -> tuple[float, str]:
    """Reward and feedback of one reply for a hand of 4 ranks in 1..13 (spec §4.1-§4.7; never raises on any str)."""
    ranks = [int(r) for r in ranks]
    if len(ranks) != 4 or not all(1 <= r <= 13 for r in ranks):
        raise ValueError(f"ranks must be 4 ints in 1..13, got {ranks}")
    document = parse_json_object(response)
    if not language_only and not _vision_ok(recognized_cards(response, document), card_names(ranks)):
        return REWARD_INCORRECT_VISION, MSG_VISION
    formula = extract_formula(response, document)
    tokens = _TOKEN_RE.findall(formula)
    if "".join(tokens) != formula:
        return REWARD_ILLEGAL, MSG_ILLEGAL + "."
    numbers = [int(n) for n in hand_numbers(ranks, bool(face_cards_as_10))]
    messages = _sequence_messages(tokens)
    reward = REWARD_ILLEGAL * len(messages)
    number_messages = _number_messages(tokens, numbers)
    reward += REWARD_INCORRECT_NUMBER * len(number_messages)
    messages += number_messages
    if not messages:
        solutions = solution_table(target).solutions(numbers)
        reward, message = _outcome(formula, tokens, solutions, target)
        messages.append(message)
    return reward, ", ".join(messages) + "."
