"""Host verifier of V-IRL replies (spec virl.md §1.6): `re_match` and `step_rewards_virl` semantics.

Rewards: +1 correct action, -1 wrong action, -1.5 wrong action with a wrong intersection claim. Feedback strings are
the reference's: a prefix, the literal (doubled-brace) format block and '.'.
Documented deviation (QUIRKS.md, "Non-string JSON values"): when the reply is a JSON object whose
"current observation" is not a string, the reference raises (int/float/bool/null) or tests list/dict membership;
here such an observation never "contains" 'intersection'.
"""
from __future__ import annotations

import json
import re

REWARD_CORRECT, REWARD_WRONG_ACTION, REWARD_WRONG_OBS = 1.0, -1.0, -1.5
FORMAT_BLOCK = ('\n[Output]\n{{\n  "current observation": latest observation from the streetview grid,\n'
                '  "current instruction": analyze the full instruction and identify the sentence to be executed,\n'
                '  "action": the action to be taken chosen from the action space,\n}}')
FEEDBACK_MESSAGES = (
    "Correct action.",
    "you are not at any intersection. Please avoid this observation and try again in the same format:"
    + FORMAT_BLOCK + ".",
    "you are at an intersection. Please avoid this observation and try again in the same format:"
    + FORMAT_BLOCK + ".",
    "you make incorrect action. Please avoid this action and try again in the same format:" + FORMAT_BLOCK + ".",
)
FEEDBACK_REWARDS = (REWARD_CORRECT, REWARD_WRONG_OBS, REWARD_WRONG_OBS, REWARD_WRONG_ACTION)
BUDGET_EXHAUSTED_MESSAGE = "Exceed maximum verify steps"
REGEX_PATTERNS = {
    "action": re.compile(r'"action": "(.*?)"'),
    "current observation": re.compile(r'"current observation": "(.*?)"'),
    "current instruction": re.compile(r'"current instruction": "(.*?)"'),
}
_MISSING = object()


def _json_value(text: str, key: str) -> object:
    """The value of `key` when the whole text is a JSON object holding it, else _MISSING."""
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return _MISSING
    if isinstance(parsed, dict) and key in parsed:
        return parsed[key]
    return _MISSING


def re_match(text: str, key: str) -> object:
    """The reference `re_match`: JSON value of `key`, else the first regex capture, else the string 'None'."""
    value = _json_value(text, key)
    if value is not _MISSING:
        return value
    found = REGEX_PATTERNS[key].search(text)
    return found.group(1) if found else "None"


def feedback_id(response: str, gt_action: str, gt_observation: str) -> int:
    """Index into FEEDBACK_MESSAGES / FEEDBACK_REWARDS of a reply (0 = correct)."""
    if re_match(response, "action") == gt_action:
        return 0
    obs = re_match(response, "current observation")
    claims_intersection = isinstance(obs, str) and "intersection" in obs
    at_intersection = "intersection" in gt_observation
    if claims_intersection and not at_intersection:
        return 1
    if not claims_intersection and at_intersection:
        return 2
    return 3


def score_response(response: str, gt_action: str, gt_observation: str) -> tuple[float, str]:
    """(reward, feedback) of a reply; gt_observation is the rail point's landmark text only (quirk 2)."""
    fid = feedback_id(response, gt_action, gt_observation)
    return FEEDBACK_REWARDS[fid], FEEDBACK_MESSAGES[fid]


def score_response_bytes(response: bytes, gt_action: str, gt_observation: str) -> tuple[float, str]:
    """score_response of raw reply bytes, read as UTF-8 with invalid bytes replaced (as the device path sees them)."""
    return score_response(response.decode("utf-8", errors="replace"), gt_action, gt_observation)
