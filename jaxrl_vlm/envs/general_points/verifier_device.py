"""GeneralPoints verifier on the device: jitted, batched over reply bytes, same answers as `verifier.score_response`.

Input: `reply uint8[B, L]` (UTF-8 bytes, left-aligned), `reply_len int32[B]`, `ranks int32[B, 4]`, the face rule and
the GP-L/GP-VL switch (bool scalars or bool[B], may be traced), and a `DeviceSolutionTable`. Everything is
vectorised over the batch; the only sequential pass is one `lax.scan` over the L byte positions that validates JSON.

Design (each stage is a function below):
1. JSON (`_json_valid`): a pushdown automaton over bytes. The lexer is a table-driven DFA (strings, escapes, the JSON
   number grammar, `true/false/null/NaN/Infinity/-Infinity`); the parser keeps the expected-token state, the depth
   and the container types as a bit stack in one int32, so nesting is limited to `JSON_MAX_DEPTH` = 31 (the host
   verifier uses the same limit), and it counts integer digits for the `JSON_MAX_INT_DIGITS` rule. Once the
   document is known valid, the rest is read with vectorised tricks (`_json_fields`): string masks from quote and
   backslash-run parity, depth by cumsum, JSON string unescaping by compaction (each escape emits one byte, `\\uXXXX`
   above ASCII emits the marker 0x80: everything downstream only distinguishes ASCII from non-ASCII), last-wins
   keys at depth 1, the list elements of `cards` at depth 2. That reading is skipped (`lax.cond`) for batches with
   no JSON document.
2. Regexes (`_first_match`): `"formula": "(.*?)"` is the first literal hit whose next `"` comes before the next
   newline; `"cards": \\[([^\\]]+)\\]` the first literal hit whose next `]` exists and is not adjacent.
3. Formula (`_analyse_formula`): byte classes, token starts, the sequence rules (the paren stack is a clamped cumsum:
   depth_t = S_t - min(0, min_{s<=t} S_s)), canonical numbers (leading zeros stripped), hand multiset counts,
   first-appearance lists. Numbers outside the hand are deduplicated exactly by (length, key, key): values of up to
   9 digits are their own key; longer ones use doubling ranks of substrings (Karp-Miller-Rosenberg), computed only
   when a batch holds such a number. The exact value of a complete formula (4 numbers, 3 operators, any parens) is
   the expression tree read off the operators' (depth, precedence, position) order, in int32 rationals. PARTIAL and
   the longest correct token prefix come from the longest common prefix with the hand's solution strings, a walk of
   at most 15 steps down a prefix trie of all solutions (`DeviceSolutionTable`).
4. Feedback: the message list is laid out as a fixed sequence of "virtual" fragment slots (each slot a fragment id
   and an active flag; one slot per formula byte for the sequence messages, the listed digits and the partially
   correct prefix, plus a few fixed slots), compacted by cumsum into `fragments int32[B, K]`, K = 3L + 17.
   Fragment ids index `feedback_fragment_texts()`: the fixed message texts, `.`, `]`, one fragment per
   digit/operator/paren character for text copied from the reply (numbers in lists, the partially correct prefix),
   and `, `-prefixed variants of the fragments that can start a later message or list item. A tokenizer can
   tokenize each fragment once and map fragment ids to token ids on the device. The bytes are the fragments' texts
   concatenated: `feedback uint8[B, F]` with F = `feedback_width(L)`, the sum of the longest text each slot can
   hold, so no feedback for a reply of length <= L can overflow (when the whole batch's feedback fits 512 bytes it
   is expanded in a narrow buffer and zero-padded). Inside a caller's jit, unused outputs (e.g. the bytes when only
   fragments are used) are dropped by XLA.

Batch-level `lax.cond`s pick cheaper paths (no JSON, short feedback, few or short invalid numbers); under `vmap` they
become selects and both sides run, with the same results.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.general_points import verifier as host
from jaxrl_vlm.envs.general_points.solver import MAX_SOLUTION_LEN, multiset_code, solution_table

JSON_MAX_DEPTH = host.JSON_MAX_DEPTH
JSON_MAX_INT_DIGITS = host.JSON_MAX_INT_DIGITS
MIN_REPLY_BYTES = 16
MAX_REPLY_BYTES = 32768  # keeps the doubling-rank pair keys of long numbers inside int32
_CHAR_FRAGMENTS = "0123456789+-*/()"
_SEQ_MESSAGES = (host.MSG_AFTER_NUMBER, host.MSG_AFTER_OPERATOR, host.MSG_BEFORE_OPEN, host.MSG_AFTER_CLOSE,
                 host.MSG_UNMATCHED)
_HEADS = (host.MSG_INVALID_NUMBERS + "[", host.MSG_TOO_MANY_HEAD + "[", host.MSG_UNUSED + "[")
_FRAGMENTS = (
    ("",)
    + tuple(_CHAR_FRAGMENTS)
    + (".", "]", host.MSG_VISION, host.MSG_ILLEGAL) + _SEQ_MESSAGES + _HEADS
    + ("]" + host.MSG_TOO_MANY_TAIL, host.MSG_CORRECT, host.MSG_PARTIAL, host.MSG_NO_MATCH,
       host.MSG_PARTLY_CORRECT_TAIL)
    + tuple(", " + t for t in tuple(_CHAR_FRAGMENTS[:10]) + _SEQ_MESSAGES + _HEADS)  # after an earlier item or message
)
_FID = {text: i for i, text in enumerate(_FRAGMENTS)}
F_PERIOD, F_CLOSE = _FID["."], _FID["]"]
F_CHAR0 = 1
F_VISION, F_ILLEGAL = _FID[host.MSG_VISION], _FID[host.MSG_ILLEGAL]
F_SEQ = np.array([_FID[m] for m in _SEQ_MESSAGES], dtype=np.int32)
F_INVALID_HEAD, F_TOO_MANY_HEAD, F_UNUSED_HEAD = (_FID[h] for h in _HEADS)
F_TOO_MANY_TAIL = _FID["]" + host.MSG_TOO_MANY_TAIL]
F_CORRECT, F_PARTIAL, F_NO_MATCH = _FID[host.MSG_CORRECT], _FID[host.MSG_PARTIAL], _FID[host.MSG_NO_MATCH]
F_PARTLY_TAIL = _FID[host.MSG_PARTLY_CORRECT_TAIL]
_WITH_SEPARATOR = np.arange(len(_FRAGMENTS), dtype=np.int32)  # fragment id -> id of ", " + its text
for _text, _i in _FID.items():
    if ", " + _text in _FID:
        _WITH_SEPARATOR[_i] = _FID[", " + _text]


def feedback_fragment_texts() -> list[str]:
    """Host list of the fragment texts; fragment id i of `VerifierOutput.fragments` stands for text i (0 is empty)."""
    return list(_FRAGMENTS)


def _fragment_table() -> tuple[np.ndarray, np.ndarray]:
    width = max(len(t) for t in _FRAGMENTS)
    texts = np.zeros((len(_FRAGMENTS), width), dtype=np.uint8)
    for i, t in enumerate(_FRAGMENTS):
        texts[i, : len(t)] = np.frombuffer(t.encode("ascii"), dtype=np.uint8)
    return texts, np.array([len(t) for t in _FRAGMENTS], dtype=np.int32)


_BYTE_TO_FRAGMENT = np.zeros(256, dtype=np.int32)
for _i, _c in enumerate(_CHAR_FRAGMENTS):
    _BYTE_TO_FRAGMENT[ord(_c)] = F_CHAR0 + _i


_SYMBOLS = _CHAR_FRAGMENTS  # the trie alphabet
_BYTE_TO_SYMBOL = np.full(256, -1, dtype=np.int32)
for _i, _c in enumerate(_SYMBOLS):
    _BYTE_TO_SYMBOL[ord(_c)] = _i


class DeviceSolutionTable(NamedTuple):
    """Solutions of every multiset for one target as a prefix trie (device arrays).

    lookup: int32[14**4] base-14 multiset code -> row m (its trie root is node m); trie: int32[nodes, 16] child of a
    node for each symbol of `0123456789+-*/()` (-1 where no solution continues that way); target: int32[].
    """

    lookup: jax.Array
    trie: jax.Array
    target: jax.Array


def _solution_trie(table) -> np.ndarray:
    """int32[nodes, 16]: the prefix trie of every multiset's solution strings; nodes 0..M-1 are the roots."""
    rows = np.repeat(np.arange(len(table.counts)), table.counts)
    symbols = _BYTE_TO_SYMBOL[table.strings]
    node = rows.copy()
    total = len(table.counts)
    edges = []
    for depth in range(table.strings.shape[1]):
        live = table.lengths > depth
        pairs, inverse = np.unique(np.stack([node[live], symbols[live, depth]], axis=1), axis=0, return_inverse=True)
        ids = total + np.arange(len(pairs))
        edges.append((pairs[:, 0], pairs[:, 1], ids))
        node = node.copy()
        node[live] = ids[inverse.reshape(-1)]
        total += len(pairs)
    trie = np.full((total, len(_SYMBOLS)), -1, dtype=np.int32)
    for parent, symbol, child in edges:
        trie[parent, symbol] = child
    return trie


@functools.lru_cache(maxsize=8)
def device_solution_table(target: int = 24) -> DeviceSolutionTable:
    """The (cached) device copy of `solution_table(target)` as a prefix trie (about 400k nodes, 26 MB for 24)."""
    table = solution_table(target)
    return DeviceSolutionTable(jnp.asarray(table.lookup), jnp.asarray(_solution_trie(table)),
                               jnp.asarray(target, dtype=jnp.int32))


class VerifierOutput(NamedTuple):
    """Result of `score_bytes` for a batch of B replies of L bytes.

    reward float32[B]; feedback uint8[B, F] and feedback_len int32[B] (ASCII bytes, zero-padded, F =
    `feedback_width(L)`); fragments int32[B, K] and num_fragments int32[B] (ids into `feedback_fragment_texts()`,
    zero-padded, K = 3L + 17); is_correct bool[B] (reward 5).
    """

    reward: jax.Array
    feedback: jax.Array
    feedback_len: jax.Array
    fragments: jax.Array
    num_fragments: jax.Array
    is_correct: jax.Array


# ----------------------------------------------------------------------------------------------------------------
# Small vectorised helpers over the last axis.

def _shift_right(x: jax.Array, fill) -> jax.Array:
    """x[..., p-1] at p (fill at 0)."""
    return jnp.concatenate([jnp.full(x.shape[:-1] + (1,), fill, x.dtype), x[..., :-1]], axis=-1)


def _shift_left(x: jax.Array, k: int, fill) -> jax.Array:
    """x[..., p+k] at p (fill past the end)."""
    pad = jnp.full(x.shape[:-1] + (k,), fill, x.dtype)
    return jnp.concatenate([x[..., k:], pad], axis=-1)


_BLOCK = 256


def _scan_last(x: jax.Array, kind: str, reverse: bool = False) -> jax.Array:
    """Inclusive prefix (suffix if reverse) 'sum', 'max' or 'min' along the last axis. Long axes are done in blocks
    of _BLOCK (XLA's CPU cumulative reductions cost quadratic time in the axis length)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.int32)
    if kind == "sum":
        op, identity, inner = jnp.add, 0, jax.lax.cumsum
    elif kind == "max":
        op, identity, inner = jnp.maximum, jnp.iinfo(x.dtype).min, jax.lax.cummax
    else:
        op, identity, inner = jnp.minimum, jnp.iinfo(x.dtype).max, jax.lax.cummin
    n = x.shape[-1]
    if n <= _BLOCK:
        return inner(x, axis=x.ndim - 1, reverse=reverse)
    if reverse:
        return jnp.flip(_scan_last(jnp.flip(x, axis=-1), kind), axis=-1)
    pad = (-n) % _BLOCK
    y = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=identity)
    y = inner(y.reshape(x.shape[:-1] + (-1, _BLOCK)), axis=x.ndim)
    before = _shift_right(_scan_last(y[..., -1], kind), identity)
    return op(y, before[..., None]).reshape(x.shape[:-1] + (-1,))[..., :n]


def _cumsum(x: jax.Array) -> jax.Array:
    """Inclusive int32 prefix sum along the last axis."""
    return _scan_last(x.astype(jnp.int32), "sum")


def _last_index(mask: jax.Array) -> jax.Array:
    """int32: largest index <= p where mask holds (-1 if none)."""
    idx = jnp.arange(mask.shape[-1], dtype=jnp.int32)
    return _scan_last(jnp.where(mask, idx, -1), "max")


def _next_index(mask: jax.Array) -> jax.Array:
    """int32: smallest index >= p where mask holds (length if none)."""
    n = mask.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    return _scan_last(jnp.where(mask, idx, n), "min", reverse=True)


def _take(x: jax.Array, idx: jax.Array, fill=0) -> jax.Array:
    """x[b, idx[b, ...]] along the last axis, fill where idx is out of range."""
    n = x.shape[-1]
    idx = jnp.broadcast_to(idx, (x.shape[0],) + idx.shape[1:])
    ok = (idx >= 0) & (idx < n)
    flat = idx.reshape(idx.shape[0], -1)
    got = jnp.take_along_axis(x, jnp.clip(flat, 0, n - 1), axis=-1).reshape(idx.shape)
    return jnp.where(ok, got, jnp.asarray(fill, x.dtype))


def _window(x: jax.Array, start: jax.Array, length: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """Left-aligned copy of x[b, start[b]:start[b]+length[b]] in width columns, zero-padded; returns (bytes, mask)."""
    i = jnp.arange(width, dtype=jnp.int32)
    inside = i[None] < length[:, None]
    return jnp.where(inside, _take(x, start[:, None] + i[None]), 0).astype(x.dtype), inside


def _encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# 1. JSON validity: table-driven lexer + pushdown parser in one scan.

_WS = b" \t\n\r"
_LITERALS = ("true", "false", "null", "NaN", "Infinity")
_LEX_OUT, _LEX_STR, _LEX_ESC = 0, 1, 2
_LEX_U = (3, 4, 5, 6)
_LEX_MINUS, _LEX_ZERO, _LEX_INT, _LEX_DOT, _LEX_FRAC, _LEX_EXP, _LEX_EXP_SIGN, _LEX_EXP_DIG = range(7, 15)
_LEX_LIT_DONE = 15
_LEX_FIRST_LIT = 16
_LEX_END = -1  # the token ended before this byte
_LEX_ERR = -2
_P_VALUE, _P_VALUE_OR_CLOSE, _P_KEY, _P_KEY_OR_CLOSE, _P_COLON, _P_AFTER = range(6)


def _lexer_table() -> tuple[np.ndarray, np.ndarray]:
    """(next state int32[S, 256], token-may-end-here bool[S]) of the JSON lexer."""
    lit_states = {}
    for word in _LITERALS:
        for k in range(1, len(word)):
            lit_states[(word, k)] = _LEX_FIRST_LIT + len(lit_states)
    n = _LEX_FIRST_LIT + len(lit_states)
    table = np.full((n, 256), _LEX_ERR, dtype=np.int32)
    delimiters = list(_WS) + [ord(c) for c in ",:]}"]
    digits = [ord(c) for c in "0123456789"]
    # between tokens: structural bytes and whitespace stay OUT, token starts enter their state
    for c in list(_WS) + [ord(c) for c in ",:[]{}"]:
        table[_LEX_OUT, c] = _LEX_OUT
    table[_LEX_OUT, ord('"')] = _LEX_STR
    table[_LEX_OUT, ord("-")] = _LEX_MINUS
    table[_LEX_OUT, ord("0")] = _LEX_ZERO
    for c in digits[1:]:
        table[_LEX_OUT, c] = _LEX_INT
    for word in _LITERALS:
        table[_LEX_OUT, ord(word[0])] = lit_states[(word, 1)]
    # strings (control characters are not allowed raw, as in json.loads(strict=True))
    table[_LEX_STR, 0x20:] = _LEX_STR
    table[_LEX_STR, ord('"')] = _LEX_OUT
    table[_LEX_STR, ord("\\")] = _LEX_ESC
    for c in '"\\/bfnrt':
        table[_LEX_ESC, ord(c)] = _LEX_STR
    table[_LEX_ESC, ord("u")] = _LEX_U[0]
    for k, state in enumerate(_LEX_U):
        for c in "0123456789abcdefABCDEF":
            table[state, ord(c)] = _LEX_U[k + 1] if k + 1 < 4 else _LEX_STR
    # numbers: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?
    table[_LEX_MINUS, ord("0")] = _LEX_ZERO
    for c in digits[1:]:
        table[_LEX_MINUS, c] = _LEX_INT
    table[_LEX_MINUS, ord("I")] = lit_states[("Infinity", 1)]
    for c in digits:
        table[_LEX_INT, c] = _LEX_INT
        table[_LEX_DOT, c] = _LEX_FRAC
        table[_LEX_FRAC, c] = _LEX_FRAC
        table[_LEX_EXP, c] = _LEX_EXP_DIG
        table[_LEX_EXP_SIGN, c] = _LEX_EXP_DIG
        table[_LEX_EXP_DIG, c] = _LEX_EXP_DIG
    for state in (_LEX_ZERO, _LEX_INT):
        table[state, ord(".")] = _LEX_DOT
    for state in (_LEX_ZERO, _LEX_INT, _LEX_FRAC):
        table[state, ord("e")] = table[state, ord("E")] = _LEX_EXP
    table[_LEX_EXP, ord("+")] = table[_LEX_EXP, ord("-")] = _LEX_EXP_SIGN
    for (word, k), state in lit_states.items():
        table[state, ord(word[k])] = lit_states[(word, k + 1)] if k + 1 < len(word) else _LEX_LIT_DONE
    can_end = np.zeros(n, dtype=bool)
    can_end[[_LEX_ZERO, _LEX_INT, _LEX_FRAC, _LEX_EXP_DIG, _LEX_LIT_DONE]] = True
    scalar = np.zeros(n, dtype=bool)
    scalar[_LEX_MINUS:] = True
    for state in np.flatnonzero(scalar):
        for c in delimiters + [ord(c) for c in '"[{']:
            if table[state, c] == _LEX_ERR:
                table[state, c] = _LEX_END if can_end[state] else _LEX_ERR
    return table, can_end


_LEX_TABLE, _LEX_CAN_END = _lexer_table()
_WORD_BYTES = np.isin(np.arange(256), np.frombuffer(
    b"0123456789+-.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8))
# byte kinds for the parser: 0 other/ws, 1 '{', 2 '[', 3 '}', 4 ']', 5 ',', 6 ':', 7 '"', 8 scalar start
_BYTE_KIND = np.zeros(256, dtype=np.int32)
for _c, _k in zip("{[}],:\"", range(1, 8)):
    _BYTE_KIND[ord(_c)] = _k
for _c in "-0123456789tfnNI":
    _BYTE_KIND[ord(_c)] = 8


def _json_valid(reply: jax.Array, reply_len: jax.Array) -> jax.Array:
    """bool[B]: the reply is one JSON document that Python's json.loads accepts (with the module's two limits)."""
    b, n = reply.shape
    lex = jnp.asarray(_LEX_TABLE.reshape(-1))
    kinds = jnp.asarray(_BYTE_KIND)
    width = _LEX_TABLE.shape[1]
    pure_int = jnp.asarray(np.isin(np.arange(len(_LEX_CAN_END)), [_LEX_ZERO, _LEX_INT]))

    def step(carry, xs):
        mode, pstate, depth, stack, ok, ndig = carry
        byte, live = xs
        byte = byte.astype(jnp.int32)
        m1 = lex[jnp.maximum(mode, 0) * width + byte]
        ended = m1 == _LEX_END
        ok_end = ~(ended & pure_int[mode] & (ndig > JSON_MAX_INT_DIGITS))
        fresh = ended | (mode == _LEX_OUT)
        new_mode = jnp.where(ended, lex[_LEX_OUT * width + byte], m1)
        kind = jnp.where(fresh, kinds[byte], 0)
        value_expected = (pstate == _P_VALUE) | (pstate == _P_VALUE_OR_CLOSE)
        key_expected = (pstate == _P_KEY) | (pstate == _P_KEY_OR_CLOSE)
        top_is_obj = ((stack >> jnp.maximum(depth - 1, 0)) & 1) == 1
        opening = (kind == 1) | (kind == 2)
        good = jnp.select(
            [opening, kind == 3, kind == 4, kind == 5, kind == 6, kind == 7, kind == 8],
            [value_expected & (depth < JSON_MAX_DEPTH),
             ((pstate == _P_KEY_OR_CLOSE) | (pstate == _P_AFTER)) & (depth >= 1) & top_is_obj,
             ((pstate == _P_VALUE_OR_CLOSE) | (pstate == _P_AFTER)) & (depth >= 1) & ~top_is_obj,
             (pstate == _P_AFTER) & (depth >= 1),
             pstate == _P_COLON,
             key_expected | value_expected,
             value_expected],
            True)
        new_pstate = jnp.select(
            [kind == 1, kind == 2, (kind == 3) | (kind == 4) | (kind == 8), kind == 5, kind == 6, kind == 7],
            [jnp.full_like(pstate, _P_KEY_OR_CLOSE), jnp.full_like(pstate, _P_VALUE_OR_CLOSE),
             jnp.full_like(pstate, _P_AFTER), jnp.where(top_is_obj, _P_KEY, _P_VALUE),
             jnp.full_like(pstate, _P_VALUE), jnp.where(key_expected, _P_COLON, _P_AFTER)],
            pstate)
        bit = jnp.left_shift(1, jnp.minimum(depth, 30))
        new_stack = jnp.where(kind == 1, stack | bit, jnp.where(kind == 2, stack & ~bit, stack))
        new_depth = depth + opening.astype(jnp.int32) - ((kind == 3) | (kind == 4)).astype(jnp.int32)
        is_digit = (byte >= 48) & (byte <= 57)
        new_ndig = jnp.where(fresh, 0, ndig) + (is_digit & pure_int[jnp.maximum(new_mode, 0)]).astype(jnp.int32)
        new_ok = ok & good & ok_end & (new_mode != _LEX_ERR)
        new = (jnp.maximum(new_mode, 0), new_pstate, new_depth, new_stack, new_ok, new_ndig)
        return tuple(jnp.where(live, a, c) for a, c in zip(new, carry)), None

    zeros = jnp.zeros((b,), jnp.int32)
    init = (zeros + _LEX_OUT, zeros + _P_VALUE, zeros, zeros, jnp.ones((b,), bool), zeros)
    live = jnp.arange(n, dtype=jnp.int32)[:, None] < reply_len[None, :]
    (mode, pstate, depth, _, ok, ndig), _ = jax.lax.scan(step, init, (reply.T, live))
    can_end = jnp.asarray(_LEX_CAN_END)
    tail_ok = (mode == _LEX_OUT) | (can_end[mode] & ~(pure_int[mode] & (ndig > JSON_MAX_INT_DIGITS)))
    return ok & tail_ok & (pstate == _P_AFTER) & (depth == 0) & (reply_len > 0)


# ----------------------------------------------------------------------------------------------------------------
# 1b. Fields of a valid JSON document.

class _Span(NamedTuple):
    """Per-row byte range [start, start+length) of some source array, and whether it exists."""

    start: jax.Array
    length: jax.Array
    found: jax.Array


def _card_code(length: jax.Array, c0: jax.Array, c1: jax.Array) -> jax.Array:
    """Rank 1..13 of a plain card name given its length and first two bytes, 0 if it is not a name."""
    one = jnp.select([c0 == ord("A"), (c0 >= ord("2")) & (c0 <= ord("9")), c0 == ord("J"), c0 == ord("Q"),
                      c0 == ord("K")], [1, c0.astype(jnp.int32) - ord("0"), 11, 12, 13], 0)
    two = jnp.where((c0 == ord("1")) & (c1 == ord("0")), 10, 0)
    return jnp.where(length == 1, one, jnp.where(length == 2, two, 0))


def _same_cards(codes: jax.Array, ranks: jax.Array) -> jax.Array:
    """bool[B]: 4 card codes (0 = not a name) are the hand's ranks as a multiset."""
    return jnp.all(jnp.sort(codes, axis=-1) == jnp.sort(ranks, axis=-1), axis=-1)


def _json_fields(reply: jax.Array, reply_len: jax.Array, ranks: jax.Array):
    """For a valid JSON document: (is_object, formula: (has key, is string, decoded span), cards: (has key,
    is string, decoded span, list_ok), decoded bytes uint8[B, L])."""
    bsz, n = reply.shape
    idx = jnp.arange(n, dtype=jnp.int32)
    live = idx[None] < reply_len[:, None]
    is_bs = (reply == ord("\\")) & live
    last_non_bs = _last_index(~is_bs)
    run_before = idx[None] - 1 - _shift_right(last_non_bs, -1)  # backslashes right before p
    quote = (reply == ord('"')) & live & (run_before % 2 == 0)
    parity = _cumsum(quote) % 2 == 1
    opening = quote & parity
    closing = quote & ~parity
    content = parity & ~quote & live
    outside = live & ~content & ~quote
    openers = outside & ((reply == ord("{")) | (reply == ord("[")))
    closers = outside & ((reply == ord("}")) | (reply == ord("]")))
    depth_before = _cumsum(openers.astype(jnp.int32) - closers.astype(jnp.int32)) - openers + closers
    ws = (reply == 32) | (reply == 9) | (reply == 10) | (reply == 13)
    significant = live & ~content & ~(outside & ws)
    prev_sig = _take(reply, _shift_right(_last_index(significant), -1), 0)
    next_sig = _next_index(significant)
    first = next_sig[:, 0]
    is_object = _take(reply, first[:, None], 0)[:, 0] == ord("{")

    # JSON string unescaping by compaction
    esc = content & is_bs & (run_before % 2 == 0)
    follower = _shift_left(reply, 1, 0)
    u_esc = esc & (follower == ord("u"))
    covered = _shift_right(esc, False)
    for k in range(2, 6):
        covered = covered | jnp.concatenate([jnp.zeros((bsz, k), bool), u_esc[:, :-k]], axis=-1)
    emit = content & ~covered
    hexval = jnp.zeros((bsz, n), jnp.int32)
    for k in range(2, 6):
        h = _shift_left(reply, k, 0).astype(jnp.int32)
        digit = jnp.where(h <= ord("9"), h - ord("0"), (h | 0x20) - ord("a") + 10)
        hexval = hexval * 16 + digit
    simple = jnp.asarray(np.array([{ord('"'): 34, ord("\\"): 92, ord("/"): 47, ord("b"): 8, ord("f"): 12,
                                    ord("n"): 10, ord("r"): 13, ord("t"): 9}.get(c, 0) for c in range(256)],
                                   dtype=np.uint8))
    escaped = jnp.where(u_esc, jnp.where(hexval < 0x80, hexval, 0x80).astype(jnp.uint8), simple[follower])
    decoded_byte = jnp.where(esc, escaped, reply)
    dpos = _cumsum(emit) - emit
    decoded = jnp.zeros((bsz, n), jnp.uint8).at[jnp.arange(bsz)[:, None], jnp.where(emit, dpos, n)].set(
        decoded_byte, mode="drop")
    close_of = _next_index(closing)  # closing quote at or after p
    str_start = _shift_left(dpos, 1, 0)  # decoded start of a string opening at p
    str_len = _take(dpos, _shift_left(close_of, 1, n), 0) - str_start

    def decoded_equals(word: str) -> jax.Array:
        starts_word = jnp.ones((bsz, n), bool)
        for k, c in enumerate(word.encode("ascii")):
            starts_word = starts_word & (_shift_left(decoded, k, 0) == c)
        return opening & (str_len == len(word)) & _take(starts_word, str_start, False)

    is_key = opening & (depth_before == 1) & ((prev_sig == ord("{")) | (prev_sig == ord(",")))

    def value_of(word: str):
        pos = jnp.max(jnp.where(is_key & decoded_equals(word), idx[None], -1), axis=-1)
        has = pos >= 0
        close = _take(close_of, pos[:, None] + 1, n)[:, 0]
        colon = _take(next_sig, close[:, None] + 1, n)[:, 0]
        v = _take(next_sig, colon[:, None] + 1, n)[:, 0]
        first_byte = _take(reply, v[:, None], 0)[:, 0]
        is_str = has & (first_byte == ord('"'))
        start = _take(str_start, v[:, None], 0)[:, 0]
        length = _take(str_len, v[:, None], 0)[:, 0]
        return has, is_str, _Span(start, length, is_str), v, first_byte

    f_has, f_str, f_span, _, _ = value_of("formula")
    c_has, c_str, c_span, c_v, c_first = value_of("cards")
    # cards as a JSON list: its elements sit at depth 2 between the '[' at c_v and its closing ']'
    is_list = c_has & (c_first == ord("["))
    close_list = _take(_next_index(closers & (depth_before == 2)), c_v[:, None] + 1, n)[:, 0]
    word = outside & jnp.asarray(_WORD_BYTES)[reply]
    value_start = opening | openers | (word & ~_shift_right(word, False))
    element = value_start & (depth_before == 2) & (idx[None] > c_v[:, None]) & (idx[None] < close_list[:, None])
    pair = _take(decoded.astype(jnp.int32) * 256 + _shift_left(decoded, 1, 0), str_start, 0)
    c0, c1 = pair >> 8, pair & 255
    codes = jnp.where(opening, _card_code(str_len, c0, c1), 0)
    rank = _cumsum(element)
    four_codes = jnp.stack([jnp.sum(jnp.where(element & (rank == k + 1), codes, 0), axis=-1) for k in range(4)], -1)
    list_ok = is_list & (element.sum(axis=-1) == 4) & _same_cards(four_codes, ranks)
    return is_object, (f_has, f_str, f_span), (c_has, c_str, c_span, list_ok), decoded


# ----------------------------------------------------------------------------------------------------------------
# 2. The two regexes of the reference, on bytes.

def _first_match(reply: jax.Array, reply_len: jax.Array, literal: str, stop: int, crossing: int | None) -> _Span:
    """First p where `literal` starts and the capture up to the next `stop` byte is valid: it must not contain
    `crossing` (regex `.` vs newline) or, when crossing is None, must be non-empty. Capture span in reply."""
    bsz, n = reply.shape
    idx = jnp.arange(n, dtype=jnp.int32)
    live = idx[None] < reply_len[:, None]
    lit = _encode(literal)
    hit = live
    for k, c in enumerate(lit):
        hit = hit & (_shift_left(reply, k, 0) == c) & (_shift_left(live, k, False))
    begin = idx[None] + len(lit)
    next_stop = _take(_next_index((reply == stop) & live), begin, n)
    if crossing is None:
        good = next_stop > begin
    else:
        good = next_stop < _take(_next_index((reply == crossing) & live), begin, n)
    good = hit & good & (next_stop < reply_len[:, None])
    found = jnp.any(good, axis=-1)
    p = jnp.argmax(good, axis=-1).astype(jnp.int32)
    start = p + len(lit)
    end = _take(next_stop, p[:, None], 0)[:, 0]
    return _Span(start, jnp.where(found, end - start, 0), found)


def _cards_string_ok(text: jax.Array, mask: jax.Array, ranks: jax.Array) -> jax.Array:
    """bool[B]: a card string (left-aligned bytes) gives the hand's plain names after the reference's handling."""
    comma = mask & (text == ord(","))
    dropped = (text == ord("[")) | (text == ord("]")) | (text == ord("'")) | (text == ord('"')) | (text == 32)
    kept = mask & ~comma & ~dropped
    item = _cumsum(comma)
    four = comma.sum(axis=-1) == 3
    in_item = kept[:, None, :] & (item[:, None, :] == jnp.arange(4)[None, :, None])  # [B, 4, L]
    rank_in = _cumsum(in_item) * in_item
    count = in_item.sum(axis=-1)
    c0 = jnp.max(jnp.where(rank_in == 1, text[:, None, :], 0), axis=-1)
    c1 = jnp.max(jnp.where(rank_in == 2, text[:, None, :], 0), axis=-1)
    codes = _card_code(count, c0, c1)
    return four & _same_cards(codes, ranks)


# ----------------------------------------------------------------------------------------------------------------
# 3. The formula.

_FEW = 16


def _kmr_ranks(symbols: jax.Array, levels: int, needed: jax.Array) -> jax.Array:
    """int32[levels, B, L]: at level k <= needed, a rank of the substring of length 2**k starting at each position
    (equal ranks <=> equal bytes; past the end counts as one extra symbol). Levels above `needed` are left zero."""
    bsz, n = symbols.shape
    rows = jnp.arange(bsz)[:, None]
    idx = jnp.arange(n, dtype=jnp.int32)

    def level(k, ranks):
        prev = ranks[k - 1]
        later = _take(prev, idx[None] + jnp.left_shift(1, k - 1), n + 299)
        key = prev * (n + 300) + later
        order = jnp.argsort(key, axis=-1)
        sorted_key = jnp.take_along_axis(key, order, axis=-1)
        new = _cumsum(sorted_key != _shift_right(sorted_key, -1))
        return ranks.at[k].set(jnp.zeros_like(key).at[rows, order].set(new))

    ranks = jnp.zeros((levels, bsz, n), jnp.int32).at[0].set(symbols)
    return jax.lax.fori_loop(1, needed + 1, level, ranks)


def _invalid_number_firsts(fb: jax.Array, z: jax.Array, canon_len: jax.Array, value: jax.Array,
                           invalid: jax.Array) -> jax.Array:
    """bool[B, L]: the invalid-number token starts that are the first with their canonical digit string (value:
    the number at token starts whose canonical length is at most 9)."""
    bsz, n = fb.shape
    idx = jnp.arange(n, dtype=jnp.int32)
    d = fb.astype(jnp.int32)
    small = canon_len <= 9
    levels = max(1, int(np.ceil(np.log2(n))) + 1)

    level = jnp.clip(31 - jax.lax.clz(jnp.maximum(canon_len, 1)), 0, levels - 1)

    def long_keys(_):
        ranks = _kmr_ranks(d, levels, jnp.max(jnp.where(invalid, level, 0)))
        span = jnp.left_shift(1, level)
        pick = lambda pos: jnp.take_along_axis(  # noqa: E731
            jnp.moveaxis(ranks, 0, -1).reshape(bsz, n * levels),
            jnp.clip(pos, 0, n - 1) * levels + level, axis=-1)
        return pick(z), pick(z + canon_len - span)

    needs_long = jnp.any(invalid & ~small)
    key_a, key_b = jax.lax.cond(needs_long, long_keys, lambda _: (value, jnp.zeros_like(value)), None)
    key_a = jnp.where(small, value, key_a)
    key_b = jnp.where(small, 0, key_b)

    def dedupe_by_sort(_):
        big = jnp.iinfo(jnp.int32).max
        k0 = jnp.where(invalid, canon_len, big)
        positions = jnp.broadcast_to(idx, (bsz, n))
        *_, order = jax.lax.sort((k0, key_a, key_b, positions, positions), dimension=1, num_keys=4)
        s0 = jnp.take_along_axis(k0, order, -1)
        sa = jnp.take_along_axis(key_a, order, -1)
        sb = jnp.take_along_axis(key_b, order, -1)
        new_group = (s0 != _shift_right(s0, -1)) | (sa != _shift_right(sa, -1)) | (sb != _shift_right(sb, -1))
        return jnp.zeros((bsz, n), bool).at[jnp.arange(bsz)[:, None], order].set(new_group) & invalid

    def dedupe_pairwise(_):
        # the (at most _FEW) invalid tokens of each row, compacted, compared pairwise
        rows = jnp.arange(bsz)[:, None]
        slot = jnp.where(invalid, _cumsum(invalid) - 1, _FEW)
        gather = jnp.zeros((bsz, _FEW), jnp.int32).at[rows, slot].set(jnp.broadcast_to(idx, (bsz, n)), mode="drop")
        used = jnp.arange(_FEW)[None] < invalid.sum(axis=-1, keepdims=True)
        keys = [jnp.take_along_axis(k, gather, axis=-1) for k in (canon_len, key_a, key_b)]
        same = used[:, :, None] & used[:, None, :] & (jnp.arange(_FEW)[:, None] > jnp.arange(_FEW)[None, :])
        for k in keys:
            same = same & (k[:, :, None] == k[:, None, :])
        first = used & ~jnp.any(same, axis=-1)
        return jnp.zeros((bsz, n), bool).at[rows, jnp.where(first, gather, n)].set(True, mode="drop")

    count = invalid.sum(axis=-1)
    branch = jnp.where(jnp.all(count <= 1), 0, jnp.where(jnp.all(count <= _FEW), 1, 2))
    return jax.lax.switch(branch, [lambda _: invalid, dedupe_pairwise, dedupe_by_sort], None)


def _rat_apply(op, an, ad, bn, bd):
    """(num, den, ok) of a op b for int32 rationals; op 0..3 = + - * /."""
    num = jnp.select([op == 0, op == 1, op == 2], [an * bd + bn * ad, an * bd - bn * ad, an * bn], an * bd)
    den = jnp.select([op == 3], [ad * bn], ad * bd)
    ok = (op != 3) | (bn != 0)
    return num, jnp.where(ok, den, 1), ok


def _evaluate(values, ops, keys):
    """Exact value of a 4-number, 3-operator formula whose operators have parse keys (lower = applied last)."""
    one = jnp.ones_like(values[0])

    def tree3(v, o, k):
        # v: 3 (num, den) leaves, o/k: 2 ops; the root is the op with the smaller key
        left_root = k[0] < k[1]
        an, ad, ok1 = _rat_apply(o[1], v[1][0], v[1][1], v[2][0], v[2][1])
        rn, rd, ok2 = _rat_apply(o[0], v[0][0], v[0][1], an, ad)
        bn, bd, ok3 = _rat_apply(o[0], v[0][0], v[0][1], v[1][0], v[1][1])
        ln, ld, ok4 = _rat_apply(o[1], bn, bd, v[2][0], v[2][1])
        return (jnp.where(left_root, rn, ln), jnp.where(left_root, rd, ld),
                jnp.where(left_root, ok1 & ok2, ok3 & ok4))

    leaves = [(v, one) for v in values]
    root = jnp.argmin(jnp.stack(keys, -1), axis=-1)
    rn1, rd1, ok_r1 = tree3(leaves[1:], ops[1:], keys[1:])
    n1, d1, ok1 = _rat_apply(ops[0], leaves[0][0], one, rn1, rd1)
    an, ad, oka = _rat_apply(ops[0], leaves[0][0], one, leaves[1][0], one)
    bn, bd, okb = _rat_apply(ops[2], leaves[2][0], one, leaves[3][0], one)
    n2, d2, ok2 = _rat_apply(ops[1], an, ad, bn, bd)
    ln3, ld3, ok_l3 = tree3(leaves[:3], ops[:2], keys[:2])
    n3, d3, ok3 = _rat_apply(ops[2], ln3, ld3, leaves[3][0], one)
    num = jnp.select([root == 0, root == 1], [n1, n2], n3)
    den = jnp.select([root == 0, root == 1], [d1, d2], d3)
    ok = jnp.select([root == 0, root == 1], [ok_r1 & ok1, oka & okb & ok2], ok_l3 & ok3)
    return num, den, ok


class _FormulaResult(NamedTuple):
    """Reward of the formula stage and its feedback as virtual fragment slots."""

    reward: jax.Array
    units: jax.Array  # int32[B, U] fragment ids of the virtual slots
    active: jax.Array  # bool[B, U]
    is_correct: jax.Array


def _analyse_formula(fb, flen, missing, numbers, table):
    """Score a formula (left-aligned bytes fb uint8[B, L], length flen) for hand numbers int32[B, 4]; returns the
    reward and the virtual fragment slots of the feedback (spec §4.3-§4.7)."""
    bsz, n = fb.shape
    idx = jnp.arange(n, dtype=jnp.int32)
    live = idx[None] < flen[:, None]
    dig = live & (fb >= ord("0")) & (fb <= ord("9"))
    is_op = live & ((fb == ord("+")) | (fb == ord("-")) | (fb == ord("*")) | (fb == ord("/")))
    lp = live & (fb == ord("("))
    rp = live & (fb == ord(")"))
    illegal = missing | jnp.any(live & ~(dig | is_op | lp | rp), axis=-1)
    kind = jnp.select([dig, is_op, lp, rp], [1, 2, 3, 4], 0)  # 0: start/other
    prev = _shift_right(kind, 0)
    num_start = dig & (prev != 1)
    tok = num_start | is_op | lp | rp
    after_value = (prev == 1) | (prev == 4)
    after_open = (prev == 0) | (prev == 2) | (prev == 3)
    v_num = num_start & ~after_open
    v_op = is_op & ~after_value
    v_lp = lp & ~after_open
    v_rp = rp & ~after_value
    step = (lp & after_open).astype(jnp.int32) - (rp & after_value).astype(jnp.int32)
    s = _cumsum(step)
    low_before = jnp.minimum(0, _shift_right(_scan_last(s, "min"), 0))
    v_unmatched = rp & after_value & (s < low_before)
    depth = s - jnp.minimum(0, _scan_last(s, "min"))
    seq_frag = jnp.select([v_num, v_op, v_lp, v_rp, v_unmatched], list(F_SEQ), 0)
    seq_msg = seq_frag > 0

    # numbers: run end, canonical start (leading zeros stripped), canonical length, value if <= 2 digits
    end = _next_index(~dig)
    z = jnp.minimum(_next_index(~dig | (fb != ord("0"))), end - 1)
    canon_len = end - z
    # value of the (up to 9) digits from each position to its run end, by Horner's rule over shifts
    digit = jnp.where(dig, fb.astype(jnp.int32) - ord("0"), 0)
    horner = jnp.zeros((bsz, n), jnp.int32)
    for k in range(9):
        horner = jnp.where(idx[None] + k < end, horner * 10 + _shift_left(digit, k, 0), horner)
    value = _take(horner, z, 0)
    small_value = jnp.where(canon_len <= 2, value, -1)
    leading_zero = num_start & (end - idx[None] > 1) & (fb == ord("0"))
    match = num_start[..., None] & (small_value[..., None] == numbers[:, None, :])  # [B, L, 4]
    in_hand = jnp.any(match, axis=-1)
    invalid = num_start & ~in_hand
    used = match.sum(axis=1)  # [B, 4]
    held = (numbers[:, :, None] == numbers[:, None, :]).sum(axis=-1)
    any_invalid = jnp.any(invalid, axis=-1)
    overused = used > held
    first_use = jnp.any(match & (jnp.swapaxes(_cumsum(jnp.swapaxes(match, 1, 2)), 1, 2) == 1), axis=-1)
    listed_over = num_start & first_use & jnp.any(match & overused[:, None, :], axis=-1)
    any_over = jnp.any(overused, axis=-1)
    listed_inv = _invalid_number_firsts(fb, z, canon_len, value, invalid)
    listed = jnp.where(any_invalid[:, None], listed_inv, listed_over)
    number_msg = any_invalid | any_over
    first_slot = ~jnp.any((numbers[:, :, None] == numbers[:, None, :]) & (idx[None, :4, None] > idx[None, None, :4]),
                          axis=-1)
    unused = (held > used) & first_slot
    unused_msg = jnp.any(unused, axis=-1)

    n_seq = seq_msg.sum(axis=-1)
    penalty = (n_seq > 0) | number_msg | unused_msg
    reward = -3.0 * n_seq - 2.0 * number_msg - 2.0 * unused_msg

    # value of a complete formula: 4 numbers, 3 operators
    num_rank = _cumsum(num_start) - 1
    op_rank = _cumsum(is_op) - 1
    values = [jnp.sum(jnp.where(num_start & (num_rank == k), small_value, 0), axis=-1) for k in range(4)]
    op_code = jnp.select([fb == ord("+"), fb == ord("-"), fb == ord("*")], [0, 1, 2], 3)
    precedence = (op_code >= 2).astype(jnp.int32)
    ops, keys = [], []
    for k in range(3):
        at = is_op & (op_rank == k)
        ops.append(jnp.sum(jnp.where(at, op_code, 0), axis=-1))
        keys.append(jnp.sum(jnp.where(at, depth * 8 + precedence * 4 + (3 - k), 0), axis=-1))
    num, den, ok = _evaluate(values, ops, keys)
    last_kind = _take(kind, flen[:, None] - 1, 0)[:, 0]
    complete = ((last_kind == 1) | (last_kind == 4)) & (depth[:, -1] == 0) & ~jnp.any(leading_zero, axis=-1) & ok
    complete = complete & (num_start.sum(axis=-1) == 4) & (is_op.sum(axis=-1) == 3)
    correct = complete & (num == table.target * den)

    # longest common prefix with the hand's solutions
    node = table.lookup[multiset_code(jnp.sort(numbers, axis=-1))]
    symbol = jnp.asarray(_BYTE_TO_SYMBOL)[fb]
    lcp = jnp.zeros((bsz,), jnp.int32)
    for i in range(min(n, MAX_SOLUTION_LEN)):
        go = (node >= 0) & (i < flen) & (symbol[:, i] >= 0)
        node = jnp.where(go, table.trie[jnp.maximum(node, 0), jnp.maximum(symbol[:, i], 0)], -1)
        lcp = lcp + (node >= 0)
    partial = ~complete & (lcp >= flen)
    tok_end = live & _shift_left(tok | ~live, 1, True)
    prefix_len = jnp.max(jnp.where(tok_end & (idx[None] + 1 <= lcp[:, None]), idx[None] + 1, 0), axis=-1)

    normal = ~illegal
    final_fixed = jnp.where(correct, F_CORRECT, jnp.where(partial, F_PARTIAL, F_NO_MATCH))
    outcome = normal & ~penalty
    reward = jnp.where(illegal, -3.0, jnp.where(penalty, reward, jnp.where(
        correct, 5.0, jnp.where(partial, 1.0, -1.0))))

    # virtual fragment slots, in feedback order; a message (or list item) after another one takes the variant of
    # its first fragment that starts with ", "
    with_sep = jnp.asarray(_WITH_SEPARATOR)
    char_frag = jnp.asarray(_BYTE_TO_FRAGMENT)[fb]
    run_start = _last_index(num_start)
    listed_digit = dig & _take(listed, run_start, False) & (idx[None] >= _take(z, run_start, 0))
    item_start = listed_digit & (idx[None] == _take(z, run_start, 0))
    later_item = item_start & (_cumsum(item_start) > 1)
    later_seq = seq_msg & (_cumsum(seq_msg) > 1)
    nm = normal & number_msg
    um = normal & unused_msg
    unused_later = unused & (_cumsum(unused) > 1)
    first_digit = jnp.where(numbers >= 10, numbers // 10, numbers % 10) + F_CHAR0
    fixed_on = outcome & ((final_fixed != F_NO_MATCH) | (prefix_len == 0))
    col = lambda x: x[:, None]  # noqa: E731
    slots = [
        (col(jnp.full((bsz,), F_ILLEGAL)), col(illegal)),
        (jnp.where(later_seq, with_sep[seq_frag], seq_frag), normal[:, None] & seq_msg),
        (col(jnp.where(n_seq > 0, with_sep[jnp.where(any_invalid, F_INVALID_HEAD, F_TOO_MANY_HEAD)],
                       jnp.where(any_invalid, F_INVALID_HEAD, F_TOO_MANY_HEAD))), col(nm)),
        (jnp.where(later_item, with_sep[char_frag], char_frag), listed_digit & col(nm)),
        (col(jnp.where(any_invalid, F_CLOSE, F_TOO_MANY_TAIL)), col(nm)),
        (col(jnp.where((n_seq > 0) | number_msg, with_sep[F_UNUSED_HEAD], F_UNUSED_HEAD)), col(um)),
        (jnp.stack([jnp.where(unused_later, with_sep[first_digit], first_digit), F_CHAR0 + numbers % 10],
                   axis=-1).reshape(bsz, 8),
         jnp.stack([unused, unused & (numbers >= 10)], axis=-1).reshape(bsz, 8) & col(um)),
        (col(jnp.full((bsz,), F_CLOSE)), col(um)),
        (col(final_fixed), col(fixed_on)),
        (char_frag, (idx[None] < prefix_len[:, None]) & col(outcome & ~fixed_on)),
        (col(jnp.full((bsz,), F_PARTLY_TAIL)), col(outcome & ~fixed_on)),
    ]
    frags = jnp.concatenate([jnp.broadcast_to(f, a.shape).astype(jnp.int32) for f, a in slots], axis=-1)
    active = jnp.concatenate([a for _, a in slots], axis=-1)
    return _FormulaResult(reward, frags, active, correct & outcome)


def feedback_width(n: int) -> int:
    """Bytes of `VerifierOutput.feedback` for replies of n bytes: the sum, over the virtual fragment slots, of the
    longest text each slot can hold (formulas have at most n bytes), so no feedback can overflow it."""
    _, lengths = _fragment_table()
    longest = lambda ids: max(int(lengths[i]) for i in ids)  # noqa: E731
    sep = 2
    return (longest([F_VISION]) + longest([F_ILLEGAL]) + n * (sep + longest(F_SEQ))
            + sep + longest([F_INVALID_HEAD, F_TOO_MANY_HEAD]) + n * (sep + 1) + longest([F_CLOSE, F_TOO_MANY_TAIL])
            + sep + longest([F_UNUSED_HEAD]) + 4 * (sep + 2) + 1
            + longest([F_CORRECT, F_PARTIAL, F_NO_MATCH]) + n + longest([F_PARTLY_TAIL]) + 1)


_NARROW_FEEDBACK = 512


def _render(frags: jax.Array, active: jax.Array, width: int):
    """Compact active slots into fragment ids [B, U] and expand them into feedback bytes [B, width]."""
    bsz, u = frags.shape
    texts, lengths = _fragment_table()
    text_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
    flat_text = jnp.asarray(np.concatenate([texts[i, : lengths[i]] for i in range(len(lengths))]
                                           + [np.zeros(1, np.uint8)]))
    rows = jnp.arange(bsz)[:, None]
    pos = _cumsum(active) - 1
    count = active.sum(axis=-1, dtype=jnp.int32)
    out = jnp.zeros((bsz, u), jnp.int32).at[rows, jnp.where(active, pos, u)].set(frags, mode="drop")
    frag_len = jnp.asarray(lengths)[out]
    start = _cumsum(frag_len) - frag_len
    total = frag_len.sum(axis=-1)
    # byte f of the feedback is flat_text[base[k] + f] for the fragment k that covers f
    base = jnp.asarray(text_start)[out] - start

    def expand(w: int) -> jax.Array:
        owner = jnp.full((bsz, w), -1, jnp.int32).at[rows, jnp.where(frag_len > 0, start, w)].max(
            jnp.broadcast_to(jnp.arange(u, dtype=jnp.int32), (bsz, u)), mode="drop")
        owner = _scan_last(owner, "max")
        f_idx = jnp.arange(w, dtype=jnp.int32)
        at = jnp.take_along_axis(base, jnp.maximum(owner, 0), axis=-1) + f_idx[None]
        at = jnp.where(f_idx[None] < total[:, None], at, len(flat_text) - 1)
        return jnp.pad(flat_text[at], ((0, 0), (0, width - w)))

    # feedback is short in practice: expand into a narrow buffer when the whole batch fits
    narrow = min(width, _NARROW_FEEDBACK)
    feedback = jax.lax.cond(jnp.max(total) <= narrow, lambda: expand(narrow), lambda: expand(width))
    return out, count, feedback, total


@jax.jit
def score_bytes(reply: jax.Array, reply_len: jax.Array, ranks: jax.Array, face_cards_as_10, language_only,
                table: DeviceSolutionTable) -> VerifierOutput:
    """Score B replies on the device (spec §4.1-§4.7), byte-exact with `verifier.score_response` on
    `read_reply(reply[b, :reply_len[b]])`.

    reply uint8[B, L] (16 <= L <= 32768; bytes past reply_len are ignored), reply_len int32[B], ranks int32[B, 4] in 1..13, face_cards_as_10 and language_only
    bool or bool[B]; table from `device_solution_table(target)`. Returns a `VerifierOutput`.
    """
    bsz, n = reply.shape
    if not MIN_REPLY_BYTES <= n <= MAX_REPLY_BYTES:
        raise ValueError(f"reply axis 1 has {n} bytes; score_bytes needs {MIN_REPLY_BYTES}..{MAX_REPLY_BYTES} "
                         "(pad with zeros)")
    reply = reply.astype(jnp.uint8)
    reply_len = jnp.clip(reply_len.astype(jnp.int32), 0, n)
    ranks = ranks.astype(jnp.int32)
    face = jnp.broadcast_to(jnp.asarray(face_cards_as_10, bool), (bsz,))
    lang = jnp.broadcast_to(jnp.asarray(language_only, bool), (bsz,))
    numbers = jnp.where(face[:, None], jnp.minimum(ranks, 10), ranks)

    valid = _json_valid(reply, reply_len)
    fields = functools.partial(_json_fields, reply, reply_len, ranks)
    # most replies are not JSON documents (the expert format has a trailing comma): skip reading fields then
    no_fields = lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(fields))  # noqa: E731
    is_object, (f_has, f_str, f_span), (c_has, c_str, c_span, list_ok), decoded = jax.lax.cond(
        jnp.any(valid), fields, no_fields)
    document = valid & is_object
    re_formula = _first_match(reply, reply_len, '"formula": "', ord('"'), ord("\n"))
    re_cards = _first_match(reply, reply_len, '"cards": [', ord("]"), None)

    # vision: one card string (JSON string value or regex capture), or the JSON list
    json_cards = document & c_has
    source = jnp.where(json_cards[:, None], decoded, reply)
    text, mask = _window(source, jnp.where(json_cards, c_span.start, re_cards.start),
                         jnp.where(json_cards, c_span.length, re_cards.length), n)
    string_ok = _cards_string_ok(text, mask, ranks)
    vision_ok = jnp.where(json_cards, jnp.where(c_str, string_ok, list_ok), re_cards.found & string_ok)
    vision_fail = ~lang & ~vision_ok

    # formula source, cut at the first '='
    json_formula = document & f_has
    source = jnp.where(json_formula[:, None], decoded, reply)
    flen = jnp.where(json_formula, f_span.length, re_formula.length)
    fb, _ = _window(source, jnp.where(json_formula, f_span.start, re_formula.start), flen, n)
    missing = jnp.where(json_formula, ~f_str, ~re_formula.found)
    flen = jnp.where(missing, 0, flen)
    idx = jnp.arange(n, dtype=jnp.int32)
    first_eq = jnp.min(jnp.where((fb == ord("=")) & (idx[None] < flen[:, None]), idx[None], n), axis=-1)
    flen = jnp.minimum(flen, first_eq)
    result = _analyse_formula(fb, flen, missing, numbers, table)

    vision_slot = jnp.full((bsz, 1), F_VISION, jnp.int32)
    period = jnp.full((bsz, 1), F_PERIOD, jnp.int32)
    frags = jnp.concatenate([vision_slot, result.units, period], axis=-1)
    active = jnp.concatenate([vision_fail[:, None], result.active & ~vision_fail[:, None], ~vision_fail[:, None]],
                             axis=-1)
    width = feedback_width(n)
    fragments, count, feedback, total = _render(frags, active, width)
    reward = jnp.where(vision_fail, -1.5, result.reward).astype(jnp.float32)
    return VerifierOutput(reward, feedback, total.astype(jnp.int32), fragments, count,
                          result.is_correct & ~vision_fail)


def bucket_length(n: int) -> int:
    """Smallest power of two >= max(n, 64): the padded reply length used by `score_responses_on_device`."""
    return max(64, 1 << max(0, int(n - 1).bit_length()))


def encode_replies(responses: list[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of replies (lone surrogates passed through) as (uint8[B, L], int32[B]), L bucketed."""
    encoded = [r.encode("utf-8", errors="surrogatepass") for r in responses]
    width = length if length is not None else bucket_length(max([len(e) for e in encoded] + [1]))
    out = np.zeros((len(encoded), width), dtype=np.uint8)
    for i, e in enumerate(encoded):
        if len(e) > width:
            raise ValueError(f"reply {i} has {len(e)} bytes, more than the length {width}")
        out[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
    return out, np.array([len(e) for e in encoded], dtype=np.int32)


def score_responses_on_device(responses: list[str], ranks, *, face_cards_as_10, language_only, target: int = 24,
                              with_feedback: bool = False):
    """Score replies (str) with the device path: float32[B] rewards, plus the feedback strings when with_feedback.

    ranks int[B, 4]; face_cards_as_10 and language_only bool or bool[B]. Replies are padded to a power-of-two
    length (`bucket_length`) to bound recompilation.
    """
    ranks = np.asarray(ranks, dtype=np.int32)
    if ranks.shape != (len(responses), 4):
        raise ValueError(f"ranks has shape {ranks.shape}; expected ({len(responses)}, 4) for {len(responses)} replies")
    if not responses:
        empty = np.zeros((0,), np.float32)
        return (empty, []) if with_feedback else empty
    reply, reply_len = encode_replies(responses)
    rows = (len(responses),)
    face = np.broadcast_to(np.asarray(face_cards_as_10, bool), rows)
    lang = np.broadcast_to(np.asarray(language_only, bool), rows)
    out = score_bytes(jnp.asarray(reply), jnp.asarray(reply_len), jnp.asarray(ranks), jnp.asarray(face),
                      jnp.asarray(lang), device_solution_table(target))
    rewards = np.asarray(out.reward)
    if not with_feedback:
        return rewards
    feedback, lengths = np.asarray(out.feedback), np.asarray(out.feedback_len)
    return rewards, [bytes(row[:k]).decode("ascii") for row, k in zip(feedback, lengths)]
