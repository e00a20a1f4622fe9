"""Device GeneralPoints verifier == host verifier (reward and feedback bytes), differential tests with hypothesis.

All examples go through one compiled shape (B=64 rows of L=256 bytes) plus one long-reply shape, so the test pays
for two compilations only.
"""
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrl_vlm.envs.general_points.prompts import RANK_NAMES, card_names, card_numbers, expert_response
from jaxrl_vlm.envs.general_points.solver import solution_table
from jaxrl_vlm.envs.general_points.verifier import read_reply, score_response
from jaxrl_vlm.envs.general_points.verifier_device import (
    device_solution_table,
    encode_replies,
    feedback_fragment_texts,
    feedback_width,
    score_bytes,
    score_responses_on_device,
)

B, L = 64, 256
LONG_B, LONG_L = 8, 4096
SETTINGS = settings(max_examples=6, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class Scorer:
    """Pads a list of (reply bytes, ranks, face, language_only) cases into fixed shapes and checks device == host."""

    def __init__(self):
        self.table = device_solution_table(24)
        self.texts = feedback_fragment_texts()

    def check(self, cases, rows=B, width=L):
        for lo in range(0, len(cases), rows):
            self._check_batch(cases[lo:lo + rows], rows, width)

    def _check_batch(self, cases, rows, width):
        pad = rows - len(cases)
        replies = [c[0][:width] for c in cases] + [b""] * pad
        ranks = np.array([c[1] for c in cases] + [[1, 2, 3, 4]] * pad, dtype=np.int32)
        face = np.array([c[2] for c in cases] + [True] * pad)
        lang = np.array([c[3] for c in cases] + [True] * pad)
        reply = np.zeros((rows, width), np.uint8)
        for i, r in enumerate(replies):
            reply[i, : len(r)] = np.frombuffer(r, np.uint8)
        out = jax.device_get(score_bytes(jnp.asarray(reply), jnp.asarray([len(r) for r in replies], jnp.int32),
                                         jnp.asarray(ranks), jnp.asarray(face), jnp.asarray(lang), self.table))
        assert out.feedback.shape == (rows, feedback_width(width))
        for i, (reply_bytes, hand, f, lg) in enumerate(cases):
            expected = score_response(read_reply(replies[i]), hand, face_cards_as_10=f, language_only=lg)
            got_feedback = bytes(out.feedback[i, : out.feedback_len[i]]).decode("ascii")
            assert (float(out.reward[i]), got_feedback) == expected, (replies[i], hand, f, lg)
            frags = out.fragments[i, : out.num_fragments[i]]
            assert "".join(self.texts[k] for k in frags) == got_feedback
            assert bool(out.is_correct[i]) == (expected[0] == 5)


@pytest.fixture(scope="module")
def scorer():
    return Scorer()


# ---------------------------------------------------------------------------------------------------------------
# strategies

hands = st.tuples(st.lists(st.integers(1, 13), min_size=4, max_size=4), st.booleans(), st.booleans())
OPS = ["+", "-", "*", "/"]


@st.composite
def formulas(draw, numbers):
    kind = draw(st.sampled_from(["solution", "truncated", "tokens", "tokens"]))
    sols = solution_table(24).solutions(numbers)
    if kind != "tokens" and sols:
        s = draw(st.sampled_from(sols))
        return s[: draw(st.integers(0, len(s)))] if kind == "truncated" else s
    token = st.one_of(
        st.sampled_from([str(n) for n in numbers]), st.sampled_from(OPS + ["(", ")"]),
        st.integers(0, 30).map(str), st.integers(1, 13).map(lambda n: "0" + str(n)),
        st.text("0123456789", min_size=1, max_size=14), st.sampled_from([" ", "=", "x", "24", "=24"]))
    return "".join(draw(st.lists(token, max_size=18)))


def wrap(draw, formula, ranks, face):
    style = draw(st.sampled_from(["regex", "expert", "json"]))
    names = card_names(ranks)
    if draw(st.booleans()):
        names = draw(st.permutations(names))
    if draw(st.integers(0, 4)) == 0:
        names = [draw(st.sampled_from(RANK_NAMES)) for _ in range(draw(st.integers(3, 5)))]
    if style == "regex":
        return f'"formula": "{formula}"'
    if style == "expert":
        reply = expert_response(ranks, formula, face_cards_as_10=face)
        return reply.replace(repr(card_names(ranks)), repr(list(names)))
    cards = draw(st.sampled_from([list(names), repr(list(names)), card_numbers(ranks, face), None]))
    return json.dumps({"cards": cards, "formula": formula}, ensure_ascii=draw(st.booleans()))


@st.composite
def formula_cases(draw):
    ranks, face, lang = draw(hands)
    numbers = card_numbers(ranks, face)
    reply = wrap(draw, draw(formulas(numbers)), ranks, face)
    return reply.encode("utf-8", errors="surrogatepass"), ranks, face, lang


MUTATION_CHARS = '"[]{},: \n\\=\'0123456789+-*/()xAJQK'


@st.composite
def mutated_expert_cases(draw):
    ranks, face, lang = draw(hands)
    numbers = card_numbers(ranks, face)
    sols = solution_table(24).solutions(numbers)
    reply = list(expert_response(ranks, draw(st.sampled_from(sols)) if sols else "1+2", face_cards_as_10=face))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(reply)))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        if op == "insert" or not reply:
            reply.insert(pos, draw(st.sampled_from(MUTATION_CHARS)))
        elif op == "delete":
            del reply[min(pos, len(reply) - 1)]
        else:
            reply[min(pos, len(reply) - 1)] = draw(st.sampled_from(MUTATION_CHARS))
    return "".join(reply).encode(), ranks, face, lang


@st.composite
def random_text_cases(draw):
    ranks, face, lang = draw(hands)
    kind = draw(st.sampled_from(["text", "bytes", "printable"]))
    if kind == "bytes":
        reply = draw(st.binary(max_size=L))
    elif kind == "text":
        reply = draw(st.text(max_size=80)).encode("utf-8", errors="surrogatepass")
    else:
        reply = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)).encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(reply)))
        reply = reply[:cut] + b'"formula": "' + reply[cut:]
    return reply, ranks, face, lang


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30), st.floats(allow_nan=True),
                         st.text(max_size=10), st.sampled_from(list(RANK_NAMES)))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["formula", "cards", "x", "number"]), inner, max_size=3), max_leaves=8)


@st.composite
def json_cases(draw):
    ranks, face, lang = draw(hands)
    numbers = card_numbers(ranks, face)
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(["formula", "cards", "number", "x", "formul", "\\u0066ormula", "card\\u0073"]))
        if key.startswith(("formula", "\\u0066")):
            value = draw(st.one_of(formulas(numbers), json_values))
        elif key.startswith("card"):
            value = draw(st.one_of(st.permutations(card_names(ranks)).map(list), json_values,
                                   st.just(repr(card_names(ranks)))))
        else:
            value = draw(json_values)
        text = json.dumps(value, ensure_ascii=draw(st.booleans()))
        pairs.append(f'"{key}"{draw(st.sampled_from([": ", ":", " : "]))}{text}')
    doc = "{" + draw(st.sampled_from([", ", ","])).join(pairs) + "}"
    doc = draw(st.sampled_from(["", " ", "\n", "[", "x"])) + doc + draw(st.sampled_from(["", " \n", ",", "}", "1"]))
    return doc.encode("utf-8", errors="surrogatepass"), ranks, face, lang


# ---------------------------------------------------------------------------------------------------------------
# tests


@SETTINGS
@given(st.lists(formula_cases(), min_size=B, max_size=B))
def test_formulas_device_equals_host(scorer, cases):
    scorer.check(cases)


@SETTINGS
@given(st.lists(mutated_expert_cases(), min_size=B, max_size=B))
def test_mutated_expert_responses_device_equals_host(scorer, cases):
    scorer.check(cases)


@SETTINGS
@given(st.lists(random_text_cases(), min_size=B, max_size=B))
def test_random_text_and_bytes_device_equals_host(scorer, cases):
    scorer.check(cases)


@SETTINGS
@given(st.lists(json_cases(), min_size=B, max_size=B))
def test_json_documents_device_equals_host(scorer, cases):
    scorer.check(cases)


HAND = [1, 2, 3, 4]
FIXED = [
    '"formula": "1*2*3*4"', '"formula": "8/(3-8/3)"', '"formula": "(1+3)*(2+4"', '"formula": "01*2*3*4"',
    '"formula": "1*2*3*4*"', '"formula": "((1+2+3)*4"', '"formula": "1(2+3)*4"', '"formula": "))"',
    '"formula": "++5"', '"formula": "7+5+7+1+2+3+4"', '"formula": "4*3*3*2*2*1"', '"formula": "1+1*2*3"',
    '"formula": "07+7+5+0+0000"', '"formula": "123456789012+123456789012+0123456789012+12345678901"',
    '"formula": "1+2\n"', '"formula": "1\n"formula": "1*2*3*4"', '"cards": [A, 2, 3, 4], "formula": "1*2*3*4"',
    '"cards": []], "cards": [A,2,3,4]', '{"formula": "1*2*3*4", "formula": "1+2+3+4"}',
    '{"formula": "1*2*3*4", "formula": "1+2+3+4", "x": NaN}', '{"formula": "1*2*3*4", "formula": 7, "y": [{}]}',
    '{"formula": "1*2*3*4", "formula": "1+2+3+4", "x": nan}', '{"\\u0066ormula": "\\u0031*2*3*4=\\u00e9"}',
    '{"formula": "1*2*3*4\\u00e9"}', '{"formula": "1*2\\/3*4"}', '{"cards": ["A", "2", "3", "4"]}',
    '{"cards": ["A", "2", "3", "\\u0034"], "formula": "4*3*2*1"}', '{"cards": "[\'A\',\'2\',\'3\',\'4\']"}',
    '{"cards": ["A", "2", "3", 4]}', '{"cards": ["A", "2", "3", "4", "4"]}', '{"cards": [["A"], "2", "3", "4"]}',
    '{"formula": "1*2*3*4", "x": -0.5e-3, "y": [true, false, null, -Infinity, Infinity, 1E+2]}',
    '{"formula": "1*2*3*4", "x": 01}', '{"formula": "1*2*3*4", "x": 1.}', '{"formula": "1*2*3*4", "x": -}',
    '{"formula": "1*2*3*4", "x": "\t"}', '{"formula": "1*2*3*4", "x": "\\x"}', '{"formula": "1*2*3*4",}',
    '{"formula": "1*2*3*4"} {}', '[{"formula": "1*2*3*4"}]', '"{\\"formula\\": \\"1*2*3*4\\"}"', "",
    '{"formula": "1*2*3*4", "x": [1, {"a": [2, {"b": "]}"}]}]}', '{"formula": "1*2*3*4", "x": "\\ud83d\\ude00"}',
]


def test_fixed_tricky_replies(scorer):
    cases = [(r.encode(), HAND, True, lang) for r in FIXED for lang in (True, False)]
    cases += [(r.encode(), [13, 12, 11, 1], face, True) for r in FIXED[:8] for face in (True, False)]
    scorer.check(cases)


def test_long_replies_and_worst_case_feedback(scorer):
    n = LONG_L
    body = n - len('"formula": ""')
    rng = random.Random(0)
    replies = [
        '"formula": "' + ")" * body + '"',
        '"formula": "' + "+" * body + '"',
        '"formula": "' + "".join(rng.choice(["7", "77", "+", "(", ")", "0"]) for _ in range(body // 2)) + '"',
        '"formula": "' + "+".join(str(rng.randint(0, 10 ** 12)) for _ in range(body // 14)) + '"',
        '"formula": "' + "9" * (body - 10) + "+0" + "9" * 7 + '"',
        '"formula": "' + "(" * 2000 + "1*2*3*4" + ")" * 2000 + '"',
        json.dumps({"x": [[[[[1]]]]] * 300, "formula": "1*2*3*4", "cards": ["A", "2", "3", "4"]}),
        '{"x": "' + "\\u0041" * 600 + '", "formula": 1' + "0" * 400 + "}",
    ]
    cases = [(r.encode()[:n], HAND, True, lang) for r in replies for lang in (True, False)][:LONG_B * 2]
    scorer.check(cases, rows=LONG_B, width=LONG_L)


def test_score_responses_on_device_wrapper():
    replies = ['"formula": "1*2*3*4"', '"formula": "1+2"', "é" * 70] * (B // 4) + [""] * (B - 3 * (B // 4))
    rewards, feedback = score_responses_on_device(replies, [HAND] * B, face_cards_as_10=True, language_only=True,
                                                  with_feedback=True)
    assert rewards.dtype == np.float32
    for reply, r, f in zip(replies, rewards, feedback):
        assert (float(r), f) == score_response(reply, HAND, face_cards_as_10=True, language_only=True)
    assert encode_replies(replies)[0].shape[1] == L  # 140 bytes -> bucket 256
    with pytest.raises(ValueError, match="reply axis 1"):
        score_bytes(jnp.zeros((1, 8), jnp.uint8), jnp.zeros((1,), jnp.int32), jnp.ones((1, 4), jnp.int32), True,
                    True, device_solution_table(24))


def test_vmap_over_groups_equals_flat_batch():
    replies = ['"formula": "1*2*3*4"', '"formula": "1+2+3+4"', '{"formula": "9+99999999999+99999999999"}',
               '"cards": [A, 2, 3, 4]\n"formula": "7+7+8"']
    reply, reply_len = encode_replies(replies, 64)
    ranks = np.array([HAND] * 4, np.int32)
    lang = np.array([True, True, True, False])
    table = device_solution_table(24)
    grouped = jax.vmap(score_bytes, in_axes=(0, 0, 0, None, 0, None))(
        jnp.asarray(reply).reshape(2, 2, -1), jnp.asarray(reply_len).reshape(2, 2), jnp.asarray(ranks).reshape(2, 2, 4),
        True, jnp.asarray(lang).reshape(2, 2), table)
    for i, reply_text in enumerate(replies):
        expected = score_response(reply_text, HAND, face_cards_as_10=True, language_only=bool(lang[i]))
        g, j = divmod(i, 2)
        feedback = bytes(np.asarray(grouped.feedback)[g, j, : int(grouped.feedback_len[g, j])]).decode()
        assert (float(grouped.reward[g, j]), feedback) == expected


def test_bytes_past_reply_len_are_ignored(scorer):
    replies = [r.encode() for r in FIXED[:B]]
    reply, reply_len = encode_replies([r.decode() for r in replies], L)
    garbage = np.random.default_rng(0).integers(0, 256, size=reply.shape).astype(np.uint8)
    dirty = np.where(np.arange(L)[None] < reply_len[:, None], reply, garbage)
    ranks = jnp.asarray(np.array([HAND] * len(replies), np.int32))
    flags = jnp.ones((len(replies),), bool)
    pad = B - len(replies)
    args = lambda r: (jnp.asarray(np.pad(r, ((0, pad), (0, 0)))), jnp.asarray(np.pad(reply_len, (0, pad))),  # noqa
                      jnp.pad(ranks, ((0, pad), (0, 0)), constant_values=1), jnp.pad(flags, (0, pad)),
                      jnp.pad(flags, (0, pad)), scorer.table)
    clean, noisy = score_bytes(*args(reply)), score_bytes(*args(dirty))
    for a, b in zip(clean, noisy):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_score_responses_on_device_edge_inputs():
    assert score_responses_on_device([], np.zeros((0, 4)), face_cards_as_10=True, language_only=True).shape == (0,)
    with pytest.raises(ValueError, match="ranks has shape"):
        score_responses_on_device(["x"], [1, 2, 3, 4], face_cards_as_10=True, language_only=True)


def test_json_limits_match_host():
    from jaxrl_vlm.envs.general_points.verifier import JSON_MAX_DEPTH, JSON_MAX_INT_DIGITS, parse_json_object
    from jaxrl_vlm.envs.general_points.verifier_device import _json_valid

    docs = ['{"x": ' + "7" * JSON_MAX_INT_DIGITS + "}", '{"x": -' + "7" * JSON_MAX_INT_DIGITS + "}",
            '{"x": ' + "7" * (JSON_MAX_INT_DIGITS + 1) + "}", '{"x": -' + "7" * (JSON_MAX_INT_DIGITS + 1) + "}",
            '{"x": ' + "7" * (JSON_MAX_INT_DIGITS + 1) + ".0}", '{"x": ' + "7" * (JSON_MAX_INT_DIGITS + 1) + "e1}",
            '{"x": ' + "[" * (JSON_MAX_DEPTH - 1) + "]" * (JSON_MAX_DEPTH - 1) + "}",
            '{"x": ' + "[" * JSON_MAX_DEPTH + "]" * JSON_MAX_DEPTH + "}"]
    reply, reply_len = encode_replies(docs, 8192)
    valid = np.asarray(jax.jit(_json_valid)(jnp.asarray(reply), jnp.asarray(reply_len)))
    assert valid.tolist() == [parse_json_object(d) is not None for d in docs] == [True, True, False, False, True,
                                                                                   True, True, False]
