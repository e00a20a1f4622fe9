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
LITERALS = (b"null", b"true", b"false", b"NaN", b"Infinity", b"-Infinity")
(VALUE, ARR_FIRST, OBJ_FIRST, KEY, COLON, AFTER, STR, STR_ESC, STR_U, N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E,
 N_ESIGN, N_EXP, LIT, ERR) = range(19)
OBJ, ARR = 1, 2
TRACK_NONE, TRACK_KEY, TRACK_ACTION, TRACK_OBS = range(4)
CUR_NONE, CUR_ACTION, CUR_OBS = range(3)


def _kmp_table(pattern: bytes) -> np.ndarray:
    """int32[len+1, 129] substring DFA; column 128 stands for every non-ASCII character."""
    m = len(pattern)
    dfa = np.zeros((m + 1, 129), np.int32)
    dfa[0, pattern[0]] = 1
    restart = 0
    for state in range(1, m + 1):
        dfa[state] = dfa[restart]
        if state < m:
            dfa[state, pattern[state]] = state + 1
            restart = dfa[restart, pattern[state]]
    dfa[m] = m  # absorbing once found
    return dfa


_KMP = _kmp_table(INTERSECTION)
_LIT_TABLE = np.zeros((len(LITERALS), 10), np.int32)
_LIT_LEN = np.array([len(s) for s in LITERALS], np.int32)
for _i, _s in enumerate(LITERALS):
    _LIT_TABLE[_i, :len(_s)] = list(_s)
_ESCAPES = np.full(128, -1, np.int32)
for _k, _v in {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}.items():
    _ESCAPES[ord(_k)] = ord(_v)
_HEX = np.full(256, -1, np.int32)
for _i, _c in enumerate("0123456789abcdef"):
    _HEX[ord(_c)] = _i
    _HEX[ord(_c.upper())] = _i
_LIT_START = np.full(256, -1, np.int32)
for _i, _c in enumerate("ntfNI"):
    _LIT_START[ord(_c)] = _i


class _Json(NamedTuple):
    mode: jax.Array
    depth: jax.Array
    stack: jax.Array
    top_obj: jax.Array
    lit_id: jax.Array
    lit_pos: jax.Array
    ucount: jax.Array
    uval: jax.Array
    str_is_key: jax.Array
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
    """One byte of the JSON automaton (scalar state, int32 byte)."""
    i32 = jnp.int32
    is_ws = (b == 32) | (b == 9) | (b == 10) | (b == 13)
    is_digit = (b >= 48) & (b <= 57)
    is_e = (b == ord("e")) | (b == ord("E"))
    top = jnp.where(s.depth > 0, s.stack[jnp.maximum(s.depth - 1, 0)], 0)
    mode = s.mode

    # Numbers: continuation, or the end of a complete number (then the byte is read in AFTER mode).
    num_next = jnp.select(
        [mode == N_MINUS, mode == N_ZERO, mode == N_INT, mode == N_DOT, mode == N_FRAC, mode == N_E,
         mode == N_ESIGN, mode == N_EXP],
        [jnp.where(b == ord("0"), N_ZERO, jnp.where(is_digit, N_INT, jnp.where(b == ord("I"), LIT, ERR))),
         jnp.where(b == ord("."), N_DOT, jnp.where(is_e, N_E, -1)),
         jnp.where(is_digit, N_INT, jnp.where(b == ord("."), N_DOT, jnp.where(is_e, N_E, -1))),
         jnp.where(is_digit, N_FRAC, ERR),
         jnp.where(is_digit, N_FRAC, jnp.where(is_e, N_E, -1)),
         jnp.where((b == ord("+")) | (b == ord("-")), N_ESIGN, jnp.where(is_digit, N_EXP, ERR)),
         jnp.where(is_digit, N_EXP, ERR),
         jnp.where(is_digit, N_EXP, -1)], -2)
    in_number = num_next != -2
    number_ends = num_next == -1
    mode = jnp.where(number_ends, AFTER, mode)
    number_consumed = in_number & ~number_ends

    # Strings.
    in_str = mode == STR
    esc_char = jnp.where(b < 128, jnp.asarray(_ESCAPES)[jnp.minimum(b, 127)], -1)
    hex_val = jnp.asarray(_HEX)[b]
    uval = s.uval * 16 + hex_val
    emit = ((in_str & (b != ord('"')) & (b != ord("\\")) & (b >= 32))
            | ((mode == STR_ESC) & (esc_char >= 0))
            | ((mode == STR_U) & (hex_val >= 0) & (s.ucount == 3)))
    ch = jnp.select([in_str, mode == STR_ESC], [b, esc_char], uval)
    str_mode = jnp.select(
        [in_str & (b == ord('"')), in_str & (b == ord("\\")), in_str & (b < 32), in_str,
         mode == STR_ESC, (mode == STR_U) & (hex_val < 0), (mode == STR_U) & (s.ucount == 3)],
        [jnp.where(s.str_is_key, COLON, AFTER), STR_ESC, ERR, STR,
         jnp.where(b == ord("u"), STR_U, jnp.where(esc_char >= 0, STR, ERR)), ERR, STR], STR_U)
    ucount = jnp.where(mode == STR_ESC, 0, s.ucount + 1)
    str_closes = in_str & (b == ord('"'))

    # Structural characters.
    value_mode = (mode == VALUE) | (mode == ARR_FIRST)
    lit_start = jnp.asarray(_LIT_START)[b]
    value_next = jnp.select(
        [is_ws, b == ord('"'), b == ord("{"), b == ord("["), b == ord("-"), b == ord("0"), is_digit, lit_start >= 0,
         (mode == ARR_FIRST) & (b == ord("]"))],
        [mode, STR, OBJ_FIRST, ARR_FIRST, N_MINUS, N_ZERO, N_INT, LIT, AFTER], ERR)
    after_next = jnp.select(
        [is_ws, (b == ord(",")) & (top == OBJ), (b == ord(",")) & (top == ARR), (b == ord("}")) & (top == OBJ),
         (b == ord("]")) & (top == ARR)],
        [AFTER, KEY, VALUE, AFTER, AFTER], ERR)
    key_next = jnp.select([is_ws, b == ord('"'), (mode == OBJ_FIRST) & (b == ord("}"))], [mode, STR, AFTER], ERR)
    colon_next = jnp.select([is_ws, b == ord(":")], [COLON, VALUE], ERR)
    lit_expected = jnp.asarray(_LIT_TABLE)[s.lit_id, jnp.minimum(s.lit_pos, 9)]
    lit_done = s.lit_pos + 1 == jnp.asarray(_LIT_LEN)[s.lit_id]
    lit_next = jnp.where(b == lit_expected, jnp.where(lit_done, AFTER, LIT), ERR)

    new_mode = jnp.select(
        [mode == ERR, number_consumed, (mode >= STR) & (mode <= STR_U), value_mode, mode == AFTER,
         (mode == OBJ_FIRST) | (mode == KEY), mode == COLON, mode == LIT],
        [ERR, num_next, str_mode, value_next, after_next, key_next, colon_next, lit_next], ERR).astype(i32)

    push = jnp.where(value_mode & (b == ord("{")), OBJ, jnp.where(value_mode & (b == ord("[")), ARR, 0))
    pop = (((mode == AFTER) & (new_mode == AFTER) & ((b == ord("}")) | (b == ord("]"))))
           | ((mode == OBJ_FIRST) & (b == ord("}"))) | ((mode == ARR_FIRST) & (b == ord("]"))))
    stack = jnp.where(push > 0, s.stack.at[s.depth].set(push.astype(s.stack.dtype)), s.stack)
    depth = s.depth + (push > 0).astype(i32) - pop.astype(i32)
    top_obj = s.top_obj | ((s.depth == 0) & (push == OBJ))

    starts_lit_from_minus = (mode == N_MINUS) & (b == ord("I"))
    lit_id = jnp.where(value_mode & (lit_start >= 0), lit_start, jnp.where(starts_lit_from_minus, 5, s.lit_id))
    lit_pos = jnp.where(value_mode & (lit_start >= 0), 1,
                        jnp.where(starts_lit_from_minus, 2, jnp.where(mode == LIT, s.lit_pos + 1, s.lit_pos)))

    # Member tracking of the top-level object.
    key_starts = ((mode == OBJ_FIRST) | (mode == KEY)) & (b == ord('"'))
    member_value_starts = (mode == VALUE) & (s.depth == 1) & (top == OBJ) & ~is_ws
    value_str_starts = value_mode & (b == ord('"'))
    act_start = member_value_starts & (s.cur_key == CUR_ACTION)
    obs_start = member_value_starts & (s.cur_key == CUR_OBS)
    track = jnp.select(
        [key_starts, act_start & (b == ord('"')), obs_start & (b == ord('"')), value_str_starts, str_closes],
        [jnp.where(s.depth == 1, TRACK_KEY, TRACK_NONE), TRACK_ACTION, TRACK_OBS, TRACK_NONE, TRACK_NONE], s.track)
    str_is_key = jnp.where(key_starts, True, jnp.where(value_str_starts, False, s.str_is_key))

    ascii_ch = jnp.minimum(ch, 128)
    key_emit = emit & (s.track == TRACK_KEY)
    key_action = jnp.where(key_starts, True, s.key_action & ~(key_emit & (
        (s.key_pos >= len(ACTION_KEY)) | (ch != jnp.asarray(list(ACTION_KEY))[jnp.minimum(s.key_pos, len(ACTION_KEY) - 1)]))))
    key_obs = jnp.where(key_starts, True, s.key_obs & ~(key_emit & (
        (s.key_pos >= len(OBS_KEY)) | (ch != jnp.asarray(list(OBS_KEY))[jnp.minimum(s.key_pos, len(OBS_KEY) - 1)]))))
    key_pos = jnp.where(key_starts, 0, s.key_pos + key_emit.astype(i32))
    key_closes = str_closes & (s.track == TRACK_KEY)
    cur_key = jnp.where(key_closes, jnp.select([key_action & (key_pos == len(ACTION_KEY)),
                                                 key_obs & (key_pos == len(OBS_KEY))], [CUR_ACTION, CUR_OBS], CUR_NONE),
                        s.cur_key)

    act_emit = emit & (s.track == TRACK_ACTION)
    gt_char = gt[jnp.clip(s.act_pos, 0, gt.shape[0] - 1)].astype(i32)
    act_eq = jnp.where(act_start, b == ord('"'),
                       s.act_eq & ~(act_emit & ((s.act_pos >= gt_len) | (ch != gt_char))))
    act_pos = jnp.where(act_start, 0, s.act_pos + act_emit.astype(i32))
    act_eq = act_eq & ~(str_closes & (s.track == TRACK_ACTION) & (act_pos != gt_len))
    obs_emit = emit & (s.track == TRACK_OBS)
    kmp = jnp.where(obs_start, 0, jnp.where(obs_emit, jnp.asarray(_KMP)[s.kmp, ascii_ch], s.kmp))
    obs_found = jnp.where(obs_start, False, s.obs_found | (kmp == len(INTERSECTION)))

    return _Json(mode=new_mode, depth=depth, stack=stack, top_obj=top_obj, lit_id=lit_id.astype(i32),
                 lit_pos=lit_pos.astype(i32), ucount=ucount.astype(i32), uval=jnp.where(mode == STR_ESC, 0, uval),
                 str_is_key=str_is_key, track=track.astype(i32), key_pos=key_pos, key_action=key_action,
                 key_obs=key_obs, cur_key=cur_key.astype(i32), act_set=s.act_set | act_start, act_eq=act_eq,
                 act_pos=act_pos, obs_set=s.obs_set | obs_start, obs_found=obs_found, kmp=kmp.astype(i32))


def _json_members(reply: jax.Array, length: jax.Array, gt: jax.Array, gt_len: jax.Array):
    """(json_ok, act_set, act_eq, obs_set, obs_found) of one reply (scalars)."""
    i32, false = jnp.int32, jnp.bool_(False)
    zero = jnp.int32(0)
    init = _Json(mode=jnp.int32(VALUE), depth=zero, stack=jnp.zeros(reply.shape[0] + 1, jnp.int8), top_obj=false,
                 lit_id=zero, lit_pos=zero, ucount=zero, uval=zero, str_is_key=false, track=zero, key_pos=zero,
                 key_action=false, key_obs=false, cur_key=zero, act_set=false, act_eq=false, act_pos=zero,
                 obs_set=false, obs_found=false, kmp=zero)

    def body(state, x):
        b, valid = x
        new = _json_step(state, b, gt, gt_len)
        return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, state), None

    valid = jnp.arange(reply.shape[0]) < length
    final, _ = jax.lax.scan(body, init, (reply.astype(i32), valid))
    ok = (final.mode == AFTER) & (final.depth == 0) & final.top_obj
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
