"""Chat templates cut into static text pieces around the message contents, for assembling conversations as token
ids on the device (every task's prompts: `chat_layout` probes a tokenizer's template once on the host).

The probe renders sentinel contents with `apply_chat_template` and checks that the template is append-only (the
rendering of turn k is a prefix of turn k+1) and changes contents at most by trimming whitespace (Llama 3 does
`content | trim`; ChatML does not); anything else raises ValueError.

Replies re-rendered on the device (`ReplyTrim`, `trim_reply`): a model's reply ids become the ids of the assistant
content as a trimming template renders it. Reply tokens that decode to whitespace only are dropped at both ends and
the first and last remaining tokens are replaced by the pre-tokenized stripped text of that token (tables over the
vocabulary). Whitespace is judged per token from `decode([id])`. Known limitation: a boundary token whose bytes are
not complete UTF-8 (byte-level BPE pieces of a multi-byte character) is left untouched, so if the first/last token of
a reply is such a piece with a leading/trailing space, or a multi-byte Unicode space is split over byte tokens at an
end, the ids keep whitespace that the template would trim. Reply ids past the tokenizer's vocabulary count as
content. Module-level helpers for token rows: `concat_ids`, `left_padded`.
"""
from __future__ import annotations

import weakref
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

_USER_0, _USER_1, _USER_2 = "<<CHAT_USER_0>>", "<<CHAT_USER_1>>", "<<CHAT_USER_2>>"
_ASSISTANT_1, _ASSISTANT_2 = "<<CHAT_ASSISTANT_1>>", "<<CHAT_ASSISTANT_2>>"
MAX_STRIP_PIECE = 8  # ids of a token's stripped text, at most


class ChatLayout(NamedTuple):
    """The static text of a chat template around the message contents (host strings).

    head: text before the first user content; user_tail: after a user content through the generation prompt;
    assistant_tail: after an assistant content up to the next user content. first_user_strip: whether the template
    trims (left, right) whitespace of the first user content's text; user_strip, assistant_strip: whether it trims
    later user contents and assistant contents (both ends).
    """

    head: str
    user_tail: str
    assistant_tail: str
    first_user_strip: tuple[bool, bool]
    user_strip: bool
    assistant_strip: bool


def first_user_message(text: str, language_only: bool, image_token: str | None) -> dict:
    """The first user message dict: a string (text tasks, or image tasks with an explicit image token) or
    [image, text] parts (the template places its image placeholder)."""
    if language_only:
        return {"role": "user", "content": text}
    if image_token is not None:
        return {"role": "user", "content": image_token + text}
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}


def render(tokenizer, messages: list[dict], template_kwargs: Mapping[str, Any]) -> str:
    """The template's text of messages, with the generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)


def split_once(text: str, sentinel: str, what: str) -> tuple[str, str]:
    """(before, after) the only occurrence of sentinel in text; ValueError naming `what` otherwise."""
    if text.count(sentinel) != 1:
        raise ValueError(f"chat template: expected the {what} content exactly once in the rendering, got {text!r}")
    before, after = text.split(sentinel)
    return before, after


def _strip_mode(rendered: str, sentinel: str, what: str) -> tuple[bool, bool]:
    """Whether a template trimmed the leading and the trailing tab of a content written as `\t{sentinel}\t`."""
    if sentinel not in rendered:
        raise ValueError(f"chat template drops or rewrites the {what} content; rendering: {rendered!r}")
    return "\t" + sentinel not in rendered, sentinel + "\t" not in rendered


def chat_layout(
    tokenizer, *, language_only: bool, image_token: str | None = None, template_kwargs: Mapping[str, Any] | None = None
) -> ChatLayout:
    """Probe a tokenizer's chat template with sentinel contents and cut it into static text pieces.

    Raises ValueError when the template is not append-only across turns or changes contents beyond trimming.
    """
    kw = dict(template_kwargs or {})

    def first(text: str) -> dict:
        return first_user_message(text, language_only, image_token)

    def turn(reply: str, user: str) -> list[dict]:
        return [{"role": "assistant", "content": reply}, {"role": "user", "content": user}]

    try:
        one = render(tokenizer, [first(_USER_0)], kw)
    except Exception as err:  # the template's own error (e.g. list contents in a text-only template)
        raise ValueError(f"chat template cannot render the {'text' if language_only else 'image'} prompt: {err}; "
                         "for an image prompt with a text-only template pass image_token") from err
    head, user_tail = split_once(one, _USER_0, "first user")
    two = render(tokenizer, [first(_USER_0), *turn(_ASSISTANT_1, _USER_1)], kw)
    three = render(tokenizer, [first(_USER_0), *turn(_ASSISTANT_1, _USER_1), *turn(_ASSISTANT_2, _USER_2)], kw)
    if not two.startswith(one):
        raise ValueError(f"chat template is not append-only: 1 turn renders {one!r} but 2 turns render {two!r}")
    rest = two[len(one):]
    reply, after_reply = split_once(rest, _ASSISTANT_1, "assistant")
    assistant_tail, after_user = split_once(after_reply, _USER_1, "second user")
    if reply or after_user != user_tail:
        raise ValueError(f"chat template writes turns differently: first turn ends {user_tail!r}, second {rest!r}")
    if three != two + _ASSISTANT_2 + assistant_tail + _USER_2 + user_tail:
        raise ValueError(f"chat template is not append-only from the second to the third turn: {three!r}")
    padded = render(tokenizer, [first(f"\t{_USER_0}\t"), *turn(f"\t{_ASSISTANT_1}\t", f"\t{_USER_1}\t")], kw)
    strips = {}
    for sentinel, what in ((_USER_1, "user"), (_ASSISTANT_1, "assistant")):
        left, right = _strip_mode(padded, sentinel, what)
        if left != right:
            raise ValueError(f"chat template trims only one end of {what} contents; rendering: {padded!r}")
        strips[what] = left
    return ChatLayout(
        head=head,
        user_tail=user_tail,
        assistant_tail=assistant_tail,
        first_user_strip=_strip_mode(padded, _USER_0, "first user"),
        user_strip=strips["user"],
        assistant_strip=strips["assistant"],
    )


def concat_ids(parts: Sequence[tuple[jax.Array, jax.Array]], width: int, pad_id: int = 0):
    """Concatenate right-padded id rows [(ids int32[W_i], length int32[]), ...] into (int32[width] right-padded
    with pad_id, length int32[] clipped to width, overflow bool[]: the total exceeded width). Jittable."""
    lengths = jnp.stack([jnp.asarray(n, jnp.int32) for _, n in parts])
    ends = jnp.cumsum(lengths)
    starts = ends - lengths
    pos = jnp.arange(width)
    out = jnp.full((width,), pad_id, jnp.int32)
    for k, (ids, _) in enumerate(parts):
        offset = pos - starts[k]
        inside = (offset >= 0) & (offset < lengths[k])
        out = jnp.where(inside, ids[jnp.clip(offset, 0, ids.shape[0] - 1)], out)
    return out, jnp.minimum(ends[-1], width), ends[-1] > width


def left_padded(ids: jax.Array, lengths: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Right-padded ids int32[B, W] with lengths int32[B] -> (left-padded ids (pad_id before), mask bool[B, W])."""
    width = ids.shape[1]
    cols = (jnp.arange(width)[None, :] - (width - lengths)[:, None]) % width
    mask = jnp.arange(width)[None, :] >= (width - lengths)[:, None]
    return jnp.where(mask, jnp.take_along_axis(ids, cols, axis=1), pad_id), mask


@struct.dataclass
class ReplyTrim:
    """Device tables for trimming reply ids as a template trims assistant contents (module docstring), over a
    vocabulary of V tokens: whitespace_only bool[V]; lstrip_ids int32[V, MAX_STRIP_PIECE] with lstrip_len int32[V]:
    the ids of each token's text without its leading whitespace (itself when there is none); likewise rstrip, strip."""

    whitespace_only: jax.Array
    lstrip_ids: jax.Array
    lstrip_len: jax.Array
    rstrip_ids: jax.Array
    rstrip_len: jax.Array
    strip_ids: jax.Array
    strip_len: jax.Array


_REPLY_TRIMS: "weakref.WeakKeyDictionary[Any, ReplyTrim]" = weakref.WeakKeyDictionary()


def reply_trim_tables(tokenizer) -> ReplyTrim:
    """The `ReplyTrim` tables of a tokenizer's whole vocabulary (host work of seconds for 128k tokens; cached per
    tokenizer object). ValueError when a token's stripped text needs more than MAX_STRIP_PIECE ids."""
    cached = _REPLY_TRIMS.get(tokenizer)
    if cached is not None:
        return cached
    vocab_size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)], clean_up_tokenization_spaces=False)
    whitespace = np.array([t.strip() == "" and "\ufffd" not in t for t in texts], dtype=bool)
    tables = []
    for strip in (str.lstrip, str.rstrip, str.strip):
        ids = np.zeros((vocab_size, MAX_STRIP_PIECE), dtype=np.int32)
        lens = np.ones(vocab_size, dtype=np.int32)
        ids[:, 0] = np.arange(vocab_size)
        changed = [i for i, t in enumerate(texts) if "\ufffd" not in t and strip(t) != t and not whitespace[i]]
        encoded = tokenizer([strip(texts[i]) for i in changed], add_special_tokens=False)["input_ids"] if changed else []
        for i, toks in zip(changed, encoded):
            if len(toks) > MAX_STRIP_PIECE:
                raise ValueError(f"token {i} ({texts[i]!r}) re-tokenizes to more than {MAX_STRIP_PIECE} ids")
            ids[i, : len(toks)] = toks
            lens[i] = len(toks)
        tables += [jnp.asarray(ids), jnp.asarray(lens)]
    trim = ReplyTrim(jnp.asarray(whitespace), *tables)
    _REPLY_TRIMS[tokenizer] = trim
    return trim


def trim_reply(trim: ReplyTrim, reply: jax.Array, reply_len: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ids of one reply (int32[N], reply_len int32[] without a stop token) as a trimming template renders the
    assistant content: (int32[N + 2 * MAX_STRIP_PIECE] right-padded with 0, length int32[]). Jittable."""
    width = reply.shape[0]
    i = jnp.arange(width)
    vocab = trim.whitespace_only.shape[0]
    known = (reply >= 0) & (reply < vocab)  # ids past the tokenizer's vocabulary count as content, kept as they are
    safe = jnp.where(known, reply, 0)
    content = (i < reply_len) & ~(known & trim.whitespace_only[safe])
    first = jnp.min(jnp.where(content, i, width))
    last = jnp.max(jnp.where(content, i, -1))
    single = first == last

    def stripped(pos, ids_table, len_table):
        pos = jnp.clip(pos, 0, width - 1)
        as_is = jnp.zeros((MAX_STRIP_PIECE,), jnp.int32).at[0].set(reply[pos].astype(jnp.int32))
        return (jnp.where(known[pos], ids_table[safe[pos]], as_is), jnp.where(known[pos], len_table[safe[pos]], 1))

    head_ids, head_len = stripped(first, trim.lstrip_ids, trim.lstrip_len)
    both_ids, both_len = stripped(first, trim.strip_ids, trim.strip_len)
    head_ids, head_len = jnp.where(single, both_ids, head_ids), jnp.where(single, both_len, head_len)
    tail_ids, tail_len = stripped(last, trim.rstrip_ids, trim.rstrip_len)
    empty = last < first
    head_len = jnp.where(empty, 0, head_len)
    tail_len = jnp.where(empty | single, 0, tail_len)
    middle = jnp.roll(reply.astype(jnp.int32), -(first + 1))
    middle_len = jnp.maximum(last - first - 1, 0)
    ids, length, _ = concat_ids([(head_ids, head_len), (middle, middle_len), (tail_ids, tail_len)],
                                width + 2 * MAX_STRIP_PIECE)
    return ids, length
