"""Jittable V-IRL verifier over reply bytes, with the same answers as the host `verifier.score_response`.

A reply is uint8[L] with a length; bytes are read as UTF-8 with invalid bytes replaced (host `score_response_bytes`).
`re_match` semantics are reproduced exactly on the device:

* JSON path: a pushdown automaton (one `lax.scan` over the bytes) recognises exactly the texts Python's
  `json.loads` accepts (whitespace ' \\t\\n\\r', strict strings, escapes incl. \\uXXXX, numbers, true/false/null,
  NaN/Infinity/-Infinity, nesting), and tracks the *last* top-level "action" / "current observation" members
  (keys compared after unescaping), comparing the action string with the ground truth and searching the decoded
  observation for 'intersection' (a KMP automaton).
* Regex path: the first `"action": "` whose line holds a later '"' (Python `re` with `(.*?)"`), by vectorised
  prefix matching and reverse cumulative minima.

Limits shared with the host: replies shorter than 4300 bytes (Python's int-digit limit) and nesting under the
recursion limit; both hold for generation lengths used here.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.virl.verifier import FEEDBACK_REWARDS

_BIG = 1 << 30
ACTION_KEY, OBS_KEY, INTERSECTION = b"action", b"current observation", b"intersection"
ACTION_PREFIX, OBS_PREFIX = b'"action": "', b'"current observation": "'
OBJ, ARR = 1, 2
TRACK_NONE, TRACK_KEY, TRACK_ACTION, TRACK_OBS = range(4)
CUR_NONE, CUR_ACTION, CUR_OBS = range(3)
_WS = b" \t\n\r"
_ESCAPE_MAP = {ord(k): ord(v) for k, v in {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n",
                                           "r": "\r", "t": "\t"}.items()}
_LITERALS = (b"null", b"true", b"false", b"NaN", b"Infinity")


def _mode_names() -> list[str]:
    names = ["VALUE", "ARR_FIRST", "OBJ_FIRST", "KEY", "COLON", "AFTER", "ERR", "N_MINUS", "N_ZERO", "N_INT",
             "N_DOT", "N_FRAC", "N_E", "N_ESIGN", "N_EXP"]
    for kind in ("K", "V"):
        names += [f"STR_{kind}", f"ESC_{kind}"] + [f"U{k}_{kind}" for k in range(1, 5)]
    names += [f"LIT_{lit.decode()}_{p}" for lit in _LITERALS for p in range(1, len(lit))]
    return names


MODES = {name: i for i, name in enumerate(_mode_names())}


def _transition_table() -> np.ndarray:
    """int8[3, modes, 256]: next mode by (innermost container: 0 none / OBJ / ARR, mode, byte).

    The grammar is Python `json.loads` (strict): a number ends at the first byte that cannot continue it, and that
    byte is then read as after a value.
    """
    m = MODES
    table = np.full((3, len(m), 256), m["ERR"], np.int8)
    digits, hexdigits = b"0123456789", b"0123456789abcdefABCDEF"

    def value_start(row: np.ndarray) -> None:
        """Fill the transitions of a row that expects a JSON value."""
        row[ord('"')], row[ord("{")], row[ord("[")] = m["STR_V"], m["OBJ_FIRST"], m["ARR_FIRST"]
        row[ord("-")], row[ord("0")] = m["N_MINUS"], m["N_ZERO"]
        for c in digits[1:]:
            row[c] = m["N_INT"]
        for lit in _LITERALS:
            row[lit[0]] = m[f"LIT_{lit.decode()}_1"]

    for top in range(3):
        t = table[top]
        for name in ("VALUE", "ARR_FIRST"):
            value_start(t[m[name]])
        t[m["ARR_FIRST"], ord("]")] = m["AFTER"]
        t[m["OBJ_FIRST"], ord('"')], t[m["OBJ_FIRST"], ord("}")] = m["STR_K"], m["AFTER"]
        t[m["KEY"], ord('"')] = m["STR_K"]
        t[m["COLON"], ord(":")] = m["VALUE"]
        if top == OBJ:
            t[m["AFTER"], ord(",")], t[m["AFTER"], ord("}")] = m["KEY"], m["AFTER"]
        if top == ARR:
            t[m["AFTER"], ord(",")], t[m["AFTER"], ord("]")] = m["VALUE"], m["AFTER"]
        for name in ("VALUE", "ARR_FIRST", "OBJ_FIRST", "KEY", "COLON", "AFTER"):
            for c in _WS:
                t[m[name], c] = m[name]
        for kind, close in (("K", "COLON"), ("V", "AFTER")):
            row = t[m[f"STR_{kind}"]]
            row[32:] = m[f"STR_{kind}"]
            row[ord('"')], row[ord("\\")] = m[close], m[f"ESC_{kind}"]
            for c in _ESCAPE_MAP:
                t[m[f"ESC_{kind}"], c] = m[f"STR_{kind}"]
            t[m[f"ESC_{kind}"], ord("u")] = m[f"U1_{kind}"]
            for k in range(1, 5):
                for c in hexdigits:
                    t[m[f"U{k}_{kind}"], c] = m[f"U{k + 1}_{kind}"] if k < 4 else m[f"STR_{kind}"]
        t[m["N_MINUS"], ord("0")], t[m["N_MINUS"], ord("I")] = m["N_ZERO"], m["LIT_Infinity_1"]
        for name in ("N_ZERO", "N_INT", "N_FRAC", "N_EXP"):
            t[m[name]] = t[m["AFTER"]]
        for c in digits:
            t[m["N_INT"], c] = m["N_INT"]
            t[m["N_DOT"], c] = t[m["N_FRAC"], c] = m["N_FRAC"]
            t[m["N_E"], c] = t[m["N_ESIGN"], c] = t[m["N_EXP"], c] = m["N_EXP"]
        for c in digits[1:]:
            t[m["N_MINUS"], c] = m["N_INT"]
        for name in ("N_ZERO", "N_INT"):
            t[m[name], ord(".")] = m["N_DOT"]
        for name in ("N_ZERO", "N_INT", "N_FRAC"):
            t[m[name], ord("e")] = t[m[name], ord("E")] = m["N_E"]
        t[m["N_E"], ord("+")] = t[m["N_E"], ord("-")] = m["N_ESIGN"]
        for lit in _LITERALS:
            for p in range(1, len(lit)):
                t[m[f"LIT_{lit.decode()}_{p}"], lit[p]] = m[f"LIT_{lit.decode()}_{p + 1}"] if p + 1 < len(lit) \
                    else m["AFTER"]
    return table


def _kmp_table(pattern: bytes) -> np.ndarray:
    """int32[len+1, 129] substring DFA; column 128 stands for every non-ASCII character."""
    size = len(pattern)
    dfa = np.zeros((size + 1, 129), np.int32)
    dfa[0, pattern[0]] = 1
    restart = 0
    for state in range(1, size + 1):
        dfa[state] = dfa[restart]
        if state < size:
            dfa[state, pattern[state]] = state + 1
            restart = dfa[restart, pattern[state]]
    dfa[size] = size  # absorbing once found
    return dfa


_TABLE = _transition_table()
_KMP = _kmp_table(INTERSECTION)
_ESCAPES = np.full(256, -1, np.int32)
for _k, _v in _ESCAPE_MAP.items():
    _ESCAPES[_k] = _v
_HEX = np.zeros(256, np.int32)
for _i, _c in enumerate("0123456789abcdef"):
    _HEX[ord(_c)] = _HEX[ord(_c.upper())] = _i
_IS_STR = np.zeros(len(MODES), bool)
_IS_ESC = np.zeros(len(MODES), bool)
_IS_U = np.zeros(len(MODES), bool)
for _kind in ("K", "V"):
    _IS_STR[MODES[f"STR_{_kind}"]] = _IS_ESC[MODES[f"ESC_{_kind}"]] = _IS_U[MODES[f"U4_{_kind}"]] = True
    for _k in range(1, 4):
        _IS_U[MODES[f"U{_k}_{_kind}"]] = True


class _Json(NamedTuple):
    mode: jax.Array
    depth: jax.Array
    stack: jax.Array
    top_obj: jax.Array
    uval: jax.Array
    track: jax.Array
    key_pos: jax.Array
    key_action: jax.Array
    key_obs: jax.Array
    cur_key: jax.Array
    act_set: jax.Array
    act_eq: jax.Array
    act_pos: jax.Array
    obs_set: jax.Array
    obs_found: jax.Array
    kmp: jax.Array


def _json_step(s: _Json, b: jax.Array, gt: jax.Array, gt_len: jax.Array) -> _Json:
    """One byte of the JSON automaton (scalar state, int32 byte): a table lookup plus member tracking."""
    i32, m = jnp.int32, MODES
    mode = s.mode
    below = jnp.maximum(s.depth - 1, 0).astype(jnp.uint32)
    top_is_arr = (s.stack[below // 32] >> (below % 32)) & 1
    top = jnp.where(s.depth > 0, jnp.where(top_is_arr == 1, ARR, OBJ), 0).astype(i32)
    nxt = jnp.asarray(_TABLE)[top, mode, b].astype(i32)
    quote = b == ord('"')
    push = jnp.where((nxt == m["OBJ_FIRST"]) & (b == ord("{")), OBJ,
                     jnp.where((nxt == m["ARR_FIRST"]) & (b == ord("[")), ARR, 0))
    pop = ((b == ord("}")) | (b == ord("]"))) & (nxt == m["AFTER"])
    level = s.depth.astype(jnp.uint32)
    bit = jnp.uint32(1) << (level % 32)
    word = (s.stack[level // 32] & ~bit) | jnp.where(push == ARR, bit, jnp.uint32(0))
    stack = jnp.where(push > 0, s.stack.at[level // 32].set(word), s.stack)
    depth = s.depth + (push > 0).astype(i32) - pop.astype(i32)

    is_u = jnp.asarray(_IS_U)[mode]
    uval = jnp.where(is_u, s.uval * 16 + jnp.asarray(_HEX)[b], 0)
    emit = ((jnp.asarray(_IS_STR)[mode] & (nxt == mode)) | (jnp.asarray(_IS_ESC)[mode] & jnp.asarray(_IS_STR)[nxt])
            | (is_u & jnp.asarray(_IS_STR)[nxt]))
    ch = jnp.where(jnp.asarray(_IS_STR)[mode], b, jnp.where(jnp.asarray(_IS_ESC)[mode], jnp.asarray(_ESCAPES)[b], uval))

    key_starts = ((mode == m["OBJ_FIRST"]) | (mode == m["KEY"])) & quote
    member_value_starts = (mode == m["VALUE"]) & (s.depth == 1) & (top == OBJ) & (nxt != m["VALUE"])
    act_start = member_value_starts & (s.cur_key == CUR_ACTION)
    obs_start = member_value_starts & (s.cur_key == CUR_OBS)
    str_closes = ((mode == m["STR_K"]) | (mode == m["STR_V"])) & quote
    value_str_starts = ((mode == m["VALUE"]) | (mode == m["ARR_FIRST"])) & quote
    track = jnp.select(
        [key_starts, act_start & quote, obs_start & quote, value_str_starts, str_closes],
        [jnp.where(s.depth == 1, TRACK_KEY, TRACK_NONE), TRACK_ACTION, TRACK_OBS, TRACK_NONE, TRACK_NONE], s.track)

    key_emit = emit & (s.track == TRACK_KEY)
    action_key, obs_key = jnp.asarray(list(ACTION_KEY)), jnp.asarray(list(OBS_KEY))
    key_action = jnp.where(key_starts, True, s.key_action & ~(key_emit & (
        (s.key_pos >= len(ACTION_KEY)) | (ch != action_key[jnp.minimum(s.key_pos, len(ACTION_KEY) - 1)]))))
    key_obs = jnp.where(key_starts, True, s.key_obs & ~(key_emit & (
        (s.key_pos >= len(OBS_KEY)) | (ch != obs_key[jnp.minimum(s.key_pos, len(OBS_KEY) - 1)]))))
    key_pos = jnp.where(key_starts, 0, s.key_pos + key_emit.astype(i32))
    key_closes = str_closes & (s.track == TRACK_KEY)
    cur_key = jnp.where(key_closes, jnp.select([key_action & (key_pos == len(ACTION_KEY)),
                                                 key_obs & (key_pos == len(OBS_KEY))], [CUR_ACTION, CUR_OBS], CUR_NONE),
                        s.cur_key)

    act_emit = emit & (s.track == TRACK_ACTION)
    gt_char = gt[jnp.clip(s.act_pos, 0, gt.shape[0] - 1)].astype(i32)
    act_eq = jnp.where(act_start, quote, s.act_eq & ~(act_emit & ((s.act_pos >= gt_len) | (ch != gt_char))))
    act_pos = jnp.where(act_start, 0, s.act_pos + act_emit.astype(i32))
    act_eq = act_eq & ~(str_closes & (s.track == TRACK_ACTION) & (act_pos != gt_len))
    obs_emit = emit & (s.track == TRACK_OBS)
    kmp = jnp.where(obs_start, 0, jnp.where(obs_emit, jnp.asarray(_KMP)[s.kmp, jnp.minimum(ch, 128)], s.kmp))
    obs_found = jnp.where(obs_start, False, s.obs_found | (kmp == len(INTERSECTION)))

    return _Json(mode=nxt, depth=depth, stack=stack, top_obj=s.top_obj | ((s.depth == 0) & (push == OBJ)),
                 uval=uval.astype(i32), track=track.astype(i32), key_pos=key_pos, key_action=key_action,
                 key_obs=key_obs, cur_key=cur_key.astype(i32), act_set=s.act_set | act_start, act_eq=act_eq,
                 act_pos=act_pos, obs_set=s.obs_set | obs_start, obs_found=obs_found, kmp=kmp.astype(i32))


def _json_members(reply: jax.Array, length: jax.Array, gt: jax.Array, gt_len: jax.Array):
    """(json_ok, act_set, act_eq, obs_set, obs_found) of one reply (scalars)."""
    false, zero = jnp.bool_(False), jnp.int32(0)
    stack_words = (reply.shape[0] + 32) // 32  # one bit per nesting level (1 = array), depth <= length
    init = _Json(mode=jnp.int32(MODES["VALUE"]), depth=zero, stack=jnp.zeros(stack_words, jnp.uint32),
                 top_obj=false, uval=zero, track=zero, key_pos=zero, key_action=false, key_obs=false, cur_key=zero,
                 act_set=false, act_eq=false, act_pos=zero, obs_set=false, obs_found=false, kmp=zero)

    def body(state, x):
        """Advance on one byte; bytes past the length leave the state unchanged."""
        b, valid = x
        new = _json_step(state, b, gt, gt_len)
        return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, state), None

    valid = jnp.arange(reply.shape[0]) < length
    final, _ = jax.lax.scan(body, init, (reply.astype(jnp.int32), valid))
    ok = (final.mode == MODES["AFTER"]) & (final.depth == 0) & final.top_obj
    return ok, final.act_set, final.act_eq, final.obs_set, final.obs_found


def _prefix_starts(padded: jax.Array, length: int, pattern: bytes) -> jax.Array:
    """bool[L]: pattern occurs at each position (padded has at least len(pattern) trailing -1)."""
    hits = jnp.ones(length, bool)
    for k, c in enumerate(pattern):
        hits = hits & (padded[k:k + length] == c)
    return hits


def _regex_capture(padded: jax.Array, length: int, pattern: bytes, next_quote: jax.Array, next_nl: jax.Array):
    """(found, start, end) of Python `re.search(pattern + '(.*?)"')` over the bytes."""
    starts = _prefix_starts(padded, length, pattern)
    cap = jnp.arange(length) + len(pattern)
    ok = starts & (next_quote[cap] < next_nl[cap])
    first = jnp.argmax(ok)
    return jnp.any(ok), cap[first], next_quote[cap[first]]


def _regex_members(reply: jax.Array, length: jax.Array, gt: jax.Array, gt_len: jax.Array):
    """(act_eq, obs_has_intersection) by the regex path ('None' when a pattern does not match)."""
    n = reply.shape[0]
    pad = max(len(OBS_PREFIX), gt.shape[0], len(INTERSECTION)) + 1
    b = jnp.where(jnp.arange(n) < length, reply.astype(jnp.int32), -1)
    padded = jnp.concatenate([b, jnp.full(pad, -1, jnp.int32)])
    idx = jnp.arange(n + pad)
    next_quote = jax.lax.cummin(jnp.where(padded == ord('"'), idx, _BIG), reverse=True)
    next_nl = jax.lax.cummin(jnp.where(padded == ord("\n"), idx, _BIG), reverse=True)
    a_found, a_start, a_end = _regex_capture(padded, n, ACTION_PREFIX, next_quote, next_nl)
    window = jax.lax.dynamic_slice(padded, (a_start,), (gt.shape[0],))
    k = jnp.arange(gt.shape[0])
    a_eq = (a_end - a_start == gt_len) & jnp.all((k >= gt_len) | (window == gt.astype(jnp.int32)))
    none = jnp.asarray(list(b"None"))
    gt_is_none = (gt_len == 4) & jnp.all(gt[:4].astype(jnp.int32) == none) if gt.shape[0] >= 4 else jnp.bool_(False)
    o_found, o_start, o_end = _regex_capture(padded, n, OBS_PREFIX, next_quote, next_nl)
    inter = _prefix_starts(padded, n, INTERSECTION)
    pos = jnp.arange(n)
    o_inter = jnp.any(inter & (pos >= o_start) & (pos + len(INTERSECTION) <= o_end))
    return jnp.where(a_found, a_eq, gt_is_none), o_found & o_inter


def feedback_id(reply: jax.Array, length: jax.Array, gt_action: jax.Array, gt_action_len: jax.Array,
                gt_obs_intersection: jax.Array) -> jax.Array:
    """int32 feedback index of one reply (0 correct, 1 not at intersection, 2 at intersection, 3 wrong action).

    reply uint8[L], length int32, gt_action uint8[A] (zero padded), gt_action_len int32, gt_obs_intersection bool
    ('intersection' in the rail point's landmark text).
    """
    ok, act_set, act_eq_json, obs_set, obs_found_json = _json_members(reply, length, gt_action, gt_action_len)
    act_eq_re, obs_inter_re = _regex_members(reply, length, gt_action, gt_action_len)
    correct = jnp.where(ok & act_set, act_eq_json, act_eq_re)
    claims = jnp.where(ok & obs_set, obs_found_json, obs_inter_re)
    gt_inter = jnp.asarray(gt_obs_intersection, bool)
    return jnp.select([correct, claims & ~gt_inter, ~claims & gt_inter], [0, 1, 2], 3).astype(jnp.int32)


def feedback_ids(replies: jax.Array, lengths: jax.Array, gt_actions: jax.Array, gt_action_lens: jax.Array,
                 gt_obs_intersection: jax.Array) -> jax.Array:
    """int32[B] `feedback_id` of a batch: replies uint8[B, L], lengths int32[B], gt_actions uint8[B, A],
    gt_action_lens int32[B], gt_obs_intersection bool[B]."""
    return jax.vmap(feedback_id)(replies, lengths, gt_actions, gt_action_lens, gt_obs_intersection)


def rewards_of(feedback: jax.Array) -> jax.Array:
    """float32 rewards of feedback indices."""
    return jnp.asarray(FEEDBACK_REWARDS, jnp.float32)[feedback]
