"""Host GeneralPoints verifier against expectations written from the spec text (generalpoints.md §2, §4)."""
import functools
import itertools
import json
import random
import re
from fractions import Fraction

import pytest

from jaxrl_vlm.envs.general_points import verifier
from jaxrl_vlm.envs.general_points.prompts import expert_response
from jaxrl_vlm.envs.general_points.solver import solution_table
from jaxrl_vlm.envs.general_points.verifier import read_reply, score_response

SHAPES = ["a o b o c o d", "(a o b) o c o d", "(a o b o c) o d", "a o (b o c) o d", "a o (b o c o d)",
          "a o b o (c o d)", "(a o b) o (c o d)"]


@functools.lru_cache(maxsize=None)
def _templates():
    """(text template, compiled expression over Fractions a..d) for each shape and operator triple."""
    out = []
    for shape in SHAPES:
        for ops in itertools.product("+-*/", repeat=3):
            ops_iter = iter(ops)
            text = re.sub("o", lambda _: next(ops_iter), shape.replace(" ", ""))
            out.append((text, compile(text, "<brute>", "eval")))
    return out


@functools.lru_cache(maxsize=None)
def brute_force_solutions(numbers, target=24):
    """Spec §2 solver written independently: every permutation x operators x shape, exact fractions."""
    found = set()
    for perm in set(itertools.permutations(numbers)):
        env = {name: Fraction(v) for name, v in zip("abcd", perm)}
        for text, code in _templates():
            try:
                if eval(code, {}, env) != target:
                    continue
            except ZeroDivisionError:
                continue
            found.add("".join(str(env[ch].numerator) if ch in env else ch for ch in text))
    return found


def L(formula, ranks, face=True):
    """Score a bare regex-style reply in GP-L."""
    return score_response(f'"formula": "{formula}"', ranks, face_cards_as_10=face, language_only=True)


HAND = [1, 2, 3, 4]
HAND_T = (1, 2, 3, 4)


def test_solver_matches_independent_brute_force():
    rng = random.Random(0)
    table = solution_table(24)
    hands = [sorted(rng.randint(1, 13) for _ in range(4)) for _ in range(12)] + [[1, 2, 3, 4], [3, 3, 8, 8]]
    for hand in hands:
        assert set(table.solutions(hand)) == brute_force_solutions(tuple(hand)), hand


def test_reward_table_and_step_limit_constants():
    assert verifier.REWARDS == {"CORRECT_SOLUTION": 5, "PARTIAL_SOLUTION": 1, "NO_SOLUTION": -1,
                                "INCORRECT_VISION": -1.5, "INCORRECT_NUMBER": -2, "ILLEGAL_FORMULA": -3}
    assert (verifier.STEP_LIMIT_REWARD, verifier.STEP_LIMIT_FEEDBACK) == (-1, "step_limit_reached")


def test_correct_partial_and_no_solution():
    assert L("1*2*3*4", HAND) == (5, "Correct solution.")
    assert L("(1+2+3)*4=24", HAND) == (5, "Correct solution.")
    assert L("((1+2+3))*(4)", HAND) == (5, "Correct solution.")  # value counts, not the string
    assert "(1+3)*(2+4)" in brute_force_solutions(HAND_T)
    assert L("(1+3)*(2+4", HAND) == (1, "partial solution.")
    # complete with the wrong value; its first token "4" starts no solution? check with brute force
    sols = brute_force_solutions(HAND_T)
    assert not any(s.startswith("01") for s in sols)
    assert L("01*2*3*4", HAND) == (-1, "your formula does not match any solution.")  # leading zero: incomplete
    assert L("1*2*3*4*", HAND) == (-1, "1*2*3*4 is partially correct but the full formula does not match any "
                                        "solution.")
    assert L("((1+2+3)*4", HAND) == (-1, "( is partially correct but the full formula does not match any solution.")


def test_no_solution_prefix_is_longest_token_prefix_of_a_solution():
    sols = brute_force_solutions(HAND_T)
    formula = "1+2+3+4"
    tokens = re.findall(r"\d+|[-+*/()]", formula)
    prefix = ""
    for t in tokens:
        if not any(s.startswith(prefix + t) for s in sols):
            break
        prefix += t
    expected = ("your formula does not match any solution." if not prefix else
                f"{prefix} is partially correct but the full formula does not match any solution.")
    assert L(formula, HAND) == (-1, expected)


def test_exact_arithmetic_deviation():
    assert 8 / (3 - 8 / 3) != 24  # the reference's float evaluation
    assert L("8/(3-8/3)", [3, 8, 8, 3]) == (5, "Correct solution.")
    assert L("8/(3-3)*8", [3, 8, 8, 3])[0] == -1  # division by zero is not a complete expression


def test_illegal_characters():
    for formula in ["1 * 2*3*4", "1x2*3*4", "1*2*3*4.0", "a", "１*2*3*4", "1*2*3*4\\n"]:
        assert L(formula, HAND) == (-3, "illegal characters.")
    assert score_response("no formula here", HAND, face_cards_as_10=True, language_only=True) == (
        -3, "illegal characters.")  # the string None


def test_each_sequence_message():
    assert L("(1+2)3*4", HAND) == (-3, "invalid sequence after number.")
    assert L("1+*2*3*4", HAND) == (-3, "invalid sequence after operator.")
    assert L("1*2*3*4(", HAND) == (-3, "invalid sequence before '('.")
    # a rejected '(' is not pushed, so its ')' is unmatched
    assert L("1(2+3)*4", HAND) == (-6, "invalid sequence before '(', unmatched closing parenthesis.")
    assert L("1*2*3*4+)", HAND) == (-3, "invalid sequence after ')'.")
    assert L("1*2*3*4)", HAND) == (-3, "unmatched closing parenthesis.")


def test_stacked_penalties():
    assert L("1+2+5", HAND) == (-4, "you used invalid numbers: [5], you didn't use numbers: [3, 4].")
    assert L("))", HAND) == (-8, "invalid sequence after ')', unmatched closing parenthesis, "
                                 "you didn't use numbers: [1, 2, 3, 4].")
    assert L("++5", HAND) == (-10, "invalid sequence after operator, invalid sequence after operator, "
                                   "you used invalid numbers: [5], you didn't use numbers: [1, 2, 3, 4].")


def test_number_lists_and_their_order():
    assert L("7+5+7+1+2+3+4", HAND) == (-2, "you used invalid numbers: [7, 5].")
    assert L("4*3*3*2*2*1", HAND) == (-2, "you used numbers: [3, 2] too many times.")
    assert L("1", [4, 3, 2, 1]) == (-2, "you didn't use numbers: [4, 3, 2].")
    assert L("1+1+1+9+2+3+4", HAND) == (-2, "you used invalid numbers: [9].")  # invalid wins over too many
    assert L("1+1*2*3", HAND) == (-4, "you used numbers: [1] too many times, you didn't use numbers: [4].")
    assert L("07+7+5+0", HAND)[1].startswith("you used invalid numbers: [7, 5, 0]")
    assert L("", [13, 12, 11, 1]) == (-2, "you didn't use numbers: [10, 1].")
    assert L("", [13, 12, 11, 1], face=False) == (-2, "you didn't use numbers: [13, 12, 11, 1].")
    huge = "9" * 5000
    assert L(f"{huge}+0{huge}", HAND) == (-4, f"you used invalid numbers: [{huge}], "
                                              "you didn't use numbers: [1, 2, 3, 4].")


def test_formula_cut_at_first_equals_and_expert_format():
    reply = expert_response([1, 2, 3, 4], "1*2*3*4", face_cards_as_10=True)
    assert '"formula": "1*2*3*4=24"' in reply
    assert score_response(reply, HAND, face_cards_as_10=True, language_only=True) == (5, "Correct solution.")
    assert score_response(reply, HAND, face_cards_as_10=True, language_only=False) == (5, "Correct solution.")
    assert L("1*2*3*4=24=7", HAND) == (5, "Correct solution.")


def test_vision_check():
    face = [13, 5, 2, 4]  # K 5 2 4 -> 10 5 2 4
    good = expert_response(face, "(10-5)*4+2", face_cards_as_10=True)
    vl = dict(face_cards_as_10=True, language_only=False)
    wrong = good.replace("'K'", "'Q'")
    assert score_response(wrong, face, **vl) == (-1.5, "you recognized wrong cards")
    assert score_response(wrong, face, face_cards_as_10=True, language_only=True)[0] != -1.5
    assert score_response(good.replace("'K', ", ""), face, **vl) == (-1.5, "you recognized wrong cards")
    assert score_response('"formula": "(10-5)*4+2"', face, **vl) == (-1.5, "you recognized wrong cards")
    # order does not matter, quotes and spaces are stripped
    reply = '"cards": [5, "2",K,\'4\' ], "formula": "10*2+4"'
    assert score_response(reply, face, **vl)[1] != "you recognized wrong cards"
    assert score_response('"cards": [10, 5, 2, 4]', [10, 5, 2, 4], **vl)[1] != "you recognized wrong cards"


def test_json_deviations():
    vl = dict(face_cards_as_10=True, language_only=False)
    names = ["A", "2", "3", "4"]
    for bad in [24, None, ["1*2*3*4"], {"f": "1*2*3*4"}, True, 1.5]:
        reply = json.dumps({"cards": names, "formula": bad})
        assert score_response(reply, HAND, **vl) == (-3, "illegal characters."), bad
    assert score_response(json.dumps({"cards": names, "formula": "1*2*3*4=24"}), HAND, **vl) == (
        5, "Correct solution.")
    assert score_response(json.dumps({"cards": ["4", "3", "A", "2"], "formula": "1*2*3*4"}), HAND, **vl)[0] == 5
    assert score_response(json.dumps({"cards": [1, 2, 3, 4], "formula": "1*2*3*4"}), HAND, **vl)[0] == -1.5
    assert score_response(json.dumps({"cards": "['A', '2', '3', '4']", "formula": "1*2*3*4"}), HAND, **vl)[0] == 5
    assert score_response(json.dumps({"cards": 1234, "formula": "1*2*3*4"}), HAND, **vl)[0] == -1.5
    assert score_response(json.dumps({"cards": names + ["5"], "formula": "1*2*3*4"}), HAND, **vl)[0] == -1.5
    # escapes are decoded in the JSON branch
    assert score_response('{"formula": "\\u0031*2*3*4"}', HAND, face_cards_as_10=True, language_only=True)[0] == 5


def test_json_branch_versus_regex_branch():
    lang = dict(face_cards_as_10=True, language_only=True)
    dup = '{"formula": "1*2*3*4", "formula": "1+2+3+4"'
    assert score_response(dup + "}", HAND, **lang)[0] == -1  # valid JSON: last key wins
    assert score_response(dup + ", }", HAND, **lang)[0] == 5  # invalid JSON: first regex match
    assert score_response(dup + ', "x": NaN}', HAND, **lang)[0] == -1  # Python's json accepts NaN
    assert score_response(dup + ', "x": nan}', HAND, **lang)[0] == 5
    assert score_response(dup + ', "x": -Infinity}', HAND, **lang)[0] == -1
    limit = verifier.JSON_MAX_INT_DIGITS
    assert score_response(dup + ', "x": ' + "1" * limit + "}", HAND, **lang)[0] == -1
    assert score_response(dup + ', "x": ' + "1" * (limit + 1) + "}", HAND, **lang)[0] == 5
    assert score_response(dup + ', "x": 1' + "0" * limit + ".5}", HAND, **lang)[0] == -1  # floats have no limit
    depth = verifier.JSON_MAX_DEPTH
    nested = lambda d: dup + ', "x": ' + "[" * (d - 1) + "]" * (d - 1) + "}"  # noqa: E731
    assert score_response(nested(depth), HAND, **lang)[0] == -1
    assert score_response(nested(depth + 1), HAND, **lang)[0] == 5
    assert score_response("[" + json.dumps('"formula": "1*2*3*4"') + "]", HAND, **lang)[0] == -3  # not an object


def test_never_raises_on_odd_input():
    rng = random.Random(1)
    odd = ["", "{", "}", '"formula": "', '{"formula": "1', "\x00" * 100, "🂡" * 50, "(" * 10000,
           "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(10000)),
           read_reply(bytes(rng.randint(0, 255) for _ in range(5000))),
           '{"formula": "' + "9" * 10 ** 4 + '"}', '{"formula": ' + "9" * 10 ** 4 + "}",
           "[" * 5000 + "]" * 5000, '{"a": ' * 3000 + "1" + "}" * 3000]
    for reply in odd:
        for lang in (True, False):
            reward, feedback = score_response(reply, HAND, face_cards_as_10=False, language_only=lang)
            assert isinstance(reward, float) and feedback


def test_bad_ranks_raise():
    with pytest.raises(ValueError, match="ranks"):
        score_response("", [0, 1, 2, 3], face_cards_as_10=True, language_only=True)
