"""V-IRL verifier: exact reference strings, reference re_match cases, and device == host (hypothesis)."""
import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxrl_vlm.envs.virl.verifier import FEEDBACK_MESSAGES, re_match, score_response, score_response_bytes
from jaxrl_vlm.envs.virl.verifier_device import feedback_ids, rewards_of

L, A = 256, 32
GT_ACTIONS = ["forward()", "stop()", "turn_direction(north)", "turn_direction(slightly left)", "None"]
GT_OBS = ["No landmarks nearby", "Prince St is on your front", "Intersection Cafe is on your left"]


@pytest.fixture(scope="module")
def device_scores():
    fn = jax.jit(feedback_ids)

    def run(replies: list[bytes], gts: list[str], obs: list[str]):
        n = len(replies)
        r, lens = np.zeros((n, L), np.uint8), np.array([len(x) for x in replies], np.int32)
        g, glen = np.zeros((n, A), np.uint8), np.array([len(x) for x in gts], np.int32)
        for i, (x, y) in enumerate(zip(replies, gts)):
            r[i, :len(x)] = np.frombuffer(x, np.uint8)
            g[i, :len(y)] = np.frombuffer(y.encode(), np.uint8)
        fid = fn(r, lens, g, glen, np.array(["intersection" in o for o in obs]))
        return np.asarray(fid), np.asarray(rewards_of(fid))

    return run


def test_feedback_strings_are_the_reference_ones():
    block = ('\n[Output]\n{{\n  "current observation": latest observation from the streetview grid,\n  "current '
             'instruction": analyze the full instruction and identify the sentence to be executed,\n  "action": the '
             'action to be taken chosen from the action space,\n}}.')
    assert FEEDBACK_MESSAGES[0] == "Correct action."
    assert FEEDBACK_MESSAGES[1] == ("you are not at any intersection. Please avoid this observation and try again in "
                                    "the same format:" + block)
    assert FEEDBACK_MESSAGES[3] == ("you make incorrect action. Please avoid this action and try again in the same "
                                    "format:" + block)


EXPERT = ('\n{\n  "current observation": "Prince St is on your front; You observe an intersection",\n'
          '  "current instruction": "Turn left to face southwest.",\n  "action": "turn_direction(southwest)",\n}\n')


@pytest.mark.parametrize("reply,gt,obs,expected", [
    (EXPERT, "turn_direction(southwest)", "Prince St is on your front", 1.0),
    (EXPERT, "forward()", "Prince St is on your front", -1.5),  # quirk 2: intersection claimed at an intersection
    ('```json\n{"current observation": "No landmarks nearby; ", "action": "stop()"}\n```', "forward()",
     "No landmarks nearby", -1.0),
    ('{"action": "Forward()"}', "forward()", "x", -1.0),
    ('{"action":"forward()"}', "forward()", "x", 1.0),  # JSON path: no space after the colon
    ('"action":"forward()"', "forward()", "x", -1.0),  # regex needs '": "'
    ('{"action": "stop()", "action": "forward()"}', "forward()", "x", 1.0),  # JSON: the last duplicate wins
    ('"action": "stop()" "action": "forward()"', "forward()", "x", -1.0),  # regex: the first match wins
    ("nothing here", "None", "x", 1.0),  # re_match falls back to the string 'None'
    ('{"a": ' + "[" * 40 + "]" * 40 + ', "action":"stop()"}', "stop()", "x", 1.0),  # deep nesting: JSON
    ('{"a": ' + "[" * 40 + "]" * 3 + "}" + "]" * 36 + ', "action":"stop()"}', "stop()", "x", -1.0),
])
def test_reference_cases(reply, gt, obs, expected, device_scores):
    assert score_response(reply, gt, obs)[0] == expected
    assert device_scores([reply.encode()], [gt], [obs])[1][0] == expected


def test_re_match_json_before_regex():
    assert re_match('{"action": "a\\u0062c"}', "action") == "abc"
    assert re_match('{"action": "x",}\n"action": "y"', "action") == "x"
    assert re_match("[1]", "action") == "None"


PIECES = ['"action": "', '"current observation": "', '"action"', '"current observation"', ": ", ":", '"', "{", "}",
          "[", "]", ",", " ", "\n", "\\", "\\u0061", "\\n", "forward()", "stop()", "turn_direction(north)",
          "intersection", "inter", "section", "None", "1", "-", "0", ".5", "e3", "true", "null", "NaN", "Infinity",
          "é", "\x01", "\t"]
STRINGS = GT_ACTIONS + GT_OBS + ["at an intersection", "x\ny", 'q"uote', "caf\u00e9 intersection"]
json_values = st.recursive(st.none() | st.booleans() | st.integers(-99, 99) | st.floats(allow_nan=False, width=32)
                           | st.sampled_from(STRINGS),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                               ["action", "current observation", "a"]), inner, max_size=3), max_leaves=6)
json_replies = st.builds(lambda d, ascii_, indent: json.dumps(d, ensure_ascii=ascii_, indent=indent),
                         st.dictionaries(st.sampled_from(["action", "current observation", "current instruction", "b"]),
                                         json_values, max_size=4), st.booleans(), st.sampled_from([None, 0, 2]))
piece_replies = st.lists(st.sampled_from(PIECES), max_size=24).map("".join)
text_replies = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
any_reply = st.one_of(json_replies, piece_replies, text_replies).filter(lambda s: len(s.encode()) <= L)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(any_reply, st.sampled_from(GT_ACTIONS), st.sampled_from(GT_OBS)), min_size=16, max_size=16))
def test_device_equals_host(device_scores, batch):
    replies, gts, obs = zip(*batch)
    fid, rew = device_scores([r.encode() for r in replies], list(gts), list(obs))
    for i, (r, g, o) in enumerate(batch):
        reward, message = score_response(r, g, o)
        assert (rew[i], FEEDBACK_MESSAGES[fid[i]]) == (reward, message), r


@settings(max_examples=15, deadline=None)
@given(st.lists(st.binary(max_size=L), min_size=16, max_size=16))
def test_device_equals_host_on_arbitrary_bytes(device_scores, replies):
    gts, obs = ["forward()"] * 16, ["You observe an intersection"] * 16
    fid, rew = device_scores(replies, gts, obs)
    for i, r in enumerate(replies):
        assert rew[i] == score_response_bytes(r, gts[i], obs[i])[0]
