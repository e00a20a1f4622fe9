"""GeneralPoints prompt and revision-turn token ids, assembled on the device (spec generalpoints.md §3).

The host renders a conversation with the tokenizer's own chat template (`apply_chat_template`, one user message and
the generation prompt; a revision turn appends the model's reply as an assistant message and the user message
`You failed this trial because {feedback}`). Doing that per hand and per turn on the host is slow and forces the
rollout off the device, so `build_prompt_codec` does it once:

1. It probes the chat template with sentinel message contents and cuts the rendered text into the static pieces
   around them (text before the first user content, after a user content up to and including the generation prompt,
   after an assistant content up to the next user content). It checks that the template is append-only (the
   rendering of turn k is a prefix of turn k+1) and finds whether it trims message contents (Llama 3 does
   `content | trim`; ChatML does not); anything else raises ValueError.
2. It tokenizes every static piece once, plus the small set of variable pieces: each card name, the list
   punctuation `['`, `', '`, `']`, and each feedback fragment text of the verifier.
3. On the device, `prompt_ids` and `append_revision` assemble int32[B, T] ids per row by gathers from that token
   bank (and from the row's own previous ids and reply ids).

Fidelity: the assembled ids decode (`tokenizer.decode`) to EXACTLY the text `apply_chat_template` renders for the same
conversation. The first GP-L prompt's ids are also the tokenizer's own ids of that text (what SFT data and the
reference feed the model): the cut around the card list is placed on the pre-tokenizer's boundaries, found per
tokenizer (`_card_list_cut`; tested for SmolLM2 and Llama 3). Revision turns keep the model's own reply ids, and
their feedback pieces are tokenized one by one, so there token boundaries may differ from a re-tokenization of the
rendered text. This needs a byte-level BPE
tokenizer, whose decode of a concatenation is the concatenation of decodes (GPT-2/SmolLM2, Llama 3, Qwen), and
decoding without clean-up of tokenization spaces. Templates that insert the current date (Llama 3.2's
`strftime_now`) must get it explicitly through `template_kwargs` (e.g. `{"date_string": "26 Jul 2024"}`); the same
kwargs must be used for host renderings that are compared with these ids.

Trimming templates: a user content is trimmed on the host before tokenizing; the assistant content is the model's
reply ids, trimmed on the device (`chat.trim_reply`, with its known limitation).

Reply ids must exclude the stop token (the template writes its own end-of-turn marker). The VL prompt is the user
content [image, text]: with a multimodal template (content as a list of parts) the template places its image
placeholder; for a text-only template pass `image_token` and it is written at the start of the user text. Revision
user messages are plain strings in both modes. `gp_conversation` builds the matching host-side message list.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_vlm.envs.chat import (ChatLayout, ReplyTrim, chat_layout, first_user_message, left_padded,
                                 reply_trim_tables, split_once, trim_reply)
from jaxrl_vlm.envs.general_points import env, prompts

_CARDS_SENTINEL = "<<GP_CARDS>>"
_CARD_OPEN, _CARD_SEP, _CARD_CLOSE = "['", "', '", "']"


def gp_conversation(
    ranks: Sequence[int],
    replies: Sequence[str] = (),
    feedbacks: Sequence[str] = (),
    *,
    face_cards_as_10: bool,
    language_only: bool,
    target: int = 24,
    image_token: str | None = None,
) -> list[dict]:
    """Host message list of a GP episode: the task prompt, then per revision the reply and the feedback message."""
    if len(replies) != len(feedbacks):
        raise ValueError(f"need one feedback per reply, got {len(replies)} replies and {len(feedbacks)} feedbacks")
    text = prompts.user_message(ranks, face_cards_as_10=face_cards_as_10, language_only=language_only, target=target)
    messages = [first_user_message(text, language_only, image_token)]
    for reply, feedback in zip(replies, feedbacks):
        messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": prompts.feedback_message(feedback)})
    return messages


@struct.dataclass
class PromptCodec:
    """Pre-tokenized pieces of the GP chat (device arrays) and where each piece lies in the bank.

    bank: int32[N] all piece token ids, concatenated; piece_start/piece_len: int32[P].
    Pieces: chat head, first user content before/after the cards list (GP-VL: all of it, no cards list), `['`,
    `', '`, `']`, user tail, assistant tail, feedback prefix, the 13 card names, the feedback fragments.
    trim: the reply trimming tables when the template trims assistant contents, else None.
    """

    bank: jax.Array
    piece_start: jax.Array
    piece_len: jax.Array
    trim: ReplyTrim | None
    language_only: bool = struct.field(pytree_node=False)
    num_fragments: int = struct.field(pytree_node=False)


# Piece ids in the bank, in the order build_prompt_codec tokenizes them.
_HEAD, _PROMPT_PRE, _PROMPT_POST, _OPEN, _SEP, _CLOSE, _USER_TAIL, _ASSISTANT_TAIL, _FEEDBACK_PREFIX = range(9)
_CARD_NAME0 = 9
_FRAGMENT0 = _CARD_NAME0 + len(prompts.RANK_NAMES)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


# Every rank at every position, beside several neighbours, and each rank repeated.
_PROBE_HANDS = tuple([r, r % 13 + 1, (r + 4) % 13 + 1, (r + 8) % 13 + 1] for r in range(1, 14)) + tuple(
    [r] * 4 for r in range(1, 14))


def _card_list_cut(tokenizer, layout: ChatLayout, pre: str, post: str) -> tuple[str, str, str, str]:
    """(pre, card_open, card_close, post): where to cut the first user message around the card list so that the
    pieces, tokenized one by one, give the ids the tokenizer gives the whole rendered prompt (the ids SFT data and
    the reference have). BPE merges never cross the pre-tokenizer's boundaries, so the cut must fall on one: the
    space before `['` belongs to it for GPT-2-style pre-tokenizers (` ['`), and Llama 3's also attaches the newlines
    after `']`. Tries moving the whitespace around the list into its open / close pieces, checked on probe hands;
    without a match it keeps the plain cut (the ids still decode to the exact text)."""
    space = len(pre) - len(pre.rstrip())
    newlines = len(post) - len(post.lstrip())
    head, tail, sep = (_encode(tokenizer, t) for t in (layout.head, layout.user_tail, _CARD_SEP))
    names = [_encode(tokenizer, name) for name in prompts.RANK_NAMES]

    def matches(cut: tuple[str, str, str, str]) -> bool:
        p, o, c, q = (_encode(tokenizer, t) for t in cut)
        for hand in _PROBE_HANDS:
            cards = [tok for i, r in enumerate(hand) for tok in (sep if i else []) + names[r - 1]]
            whole = cut[1] + _CARD_SEP.join(prompts.card_names(hand)) + cut[2]
            if head + p + o + cards + c + q + tail != _encode(tokenizer, layout.head + cut[0] + whole + cut[3]
                                                              + layout.user_tail):
                return False
        return True

    for k in range(space, -1, -1):
        for j in range(newlines + 1):
            cut = (pre[:len(pre) - k], pre[len(pre) - k:] + _CARD_OPEN, _CARD_CLOSE + post[:j], post[j:])
            if matches(cut):
                return cut
    return pre, _CARD_OPEN, _CARD_CLOSE, post


def build_prompt_codec(
    tokenizer,
    *,
    language_only: bool,
    face_cards_as_10: bool,
    target: int = 24,
    fragment_texts: Sequence[str] | None = None,
    image_token: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> PromptCodec:
    """Tokenize the static and variable pieces of the GP chat once (host); see the module docstring.

    fragment_texts: the feedback fragment strings (default: `env.feedback_fragment_texts()`, the ids of the env's
    `info['fragments']`); a feedback is the concatenation of its fragments.
    """
    if fragment_texts is None:
        fragment_texts = env.feedback_fragment_texts()
    layout = chat_layout(tokenizer, language_only=language_only, image_token=image_token, template_kwargs=template_kwargs)
    text = prompts.user_message([1, 1, 1, 1], face_cards_as_10=face_cards_as_10, language_only=language_only,
                                target=target)
    if language_only:
        cards = repr(prompts.card_names([1, 1, 1, 1]))
        pre, post = split_once(text.replace(cards, _CARDS_SENTINEL), _CARDS_SENTINEL, "cards list")
    else:
        pre, post = text, ""
    left, right = layout.first_user_strip
    pre = pre.lstrip() if left else pre
    if right:
        pre, post = (pre, post.rstrip()) if language_only else (pre.rstrip(), post)
    card_open, card_close = _CARD_OPEN, _CARD_CLOSE
    if language_only:
        pre, card_open, card_close, post = _card_list_cut(tokenizer, layout, pre, post)
    feedback_prefix = prompts.FEEDBACK_PREFIX.lstrip() if layout.user_strip else prompts.FEEDBACK_PREFIX
    texts = [layout.head, pre, post, card_open, _CARD_SEP, card_close, layout.user_tail, layout.assistant_tail,
             feedback_prefix, *prompts.RANK_NAMES, *fragment_texts]
    pieces = [_encode(tokenizer, t) for t in texts]
    lengths = np.array([len(p) for p in pieces], dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
    bank = np.array([tok for p in pieces for tok in p] or [0], dtype=np.int32)
    return PromptCodec(
        bank=jnp.asarray(bank), piece_start=jnp.asarray(starts), piece_len=jnp.asarray(lengths),
        trim=reply_trim_tables(tokenizer) if layout.assistant_strip else None, language_only=language_only,
        num_fragments=len(fragment_texts),
    )


def revision_overhead(codec: PromptCodec) -> int:
    """Tokens a revision turn adds besides the reply and the feedback fragments: assistant tail, feedback prefix and
    user tail (generation prompt). Host int."""
    lengths = np.asarray(jax.device_get(codec.piece_len))
    return int(lengths[[_ASSISTANT_TAIL, _FEEDBACK_PREFIX, _USER_TAIL]].sum())


def _assemble_row(starts: jax.Array, lens: jax.Array, bank: jax.Array, extra: jax.Array, width: int, pad_id: int):
    """Concatenate pieces (start, length) into int32[width]; a start >= len(bank) reads extra[start - len(bank)].

    The piece under each output position is the last piece beginning at or before it: piece ids scattered (max) at
    their begin positions, then a running max. Pieces beginning together are empty except the last one.
    """
    ends = jnp.cumsum(lens)
    begins = ends - lens
    t = jnp.arange(width, dtype=jnp.int32)
    piece_ids = jnp.arange(lens.shape[0], dtype=jnp.int32)
    owner = jnp.full((width,), -1, jnp.int32).at[jnp.where(begins < width, begins, width)].max(piece_ids, mode="drop")
    k = jnp.maximum(jax.lax.cummax(owner), 0)
    pos = starts[k] + t - begins[k]
    n_bank = bank.shape[0]
    from_bank = bank[jnp.clip(pos, 0, n_bank - 1)]
    from_extra = extra[jnp.clip(pos - n_bank, 0, extra.shape[0] - 1)]
    total = ends[-1]
    ids = jnp.where(t < total, jnp.where(pos < n_bank, from_bank, from_extra), pad_id)
    return ids.astype(jnp.int32), jnp.minimum(total, width).astype(jnp.int32), total > width


def _to_right_padded(ids: jax.Array, lengths: jax.Array) -> jax.Array:
    """Left-padded int32[B, T] -> right-padded (rows rolled so their tokens start at column 0)."""
    shift = ids.shape[1] - lengths
    cols = (jnp.arange(ids.shape[1])[None, :] + shift[:, None]) % ids.shape[1]
    return jnp.take_along_axis(ids, cols, axis=1)


class TokenBatch(NamedTuple):
    """ids int32[B, T] padded on one side; lengths int32[B] (clipped to T); overflow bool[B]: the text was cut at T."""

    ids: jax.Array
    lengths: jax.Array
    overflow: jax.Array


def _check_padding_side(padding_side: str) -> None:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")


def _finish(ids: jax.Array, lengths: jax.Array, overflow: jax.Array, padding_side: str, pad_id: int) -> TokenBatch:
    """Right-padded assembly -> TokenBatch padded on padding_side."""
    if padding_side == "left":
        ids, _ = left_padded(ids, lengths, pad_id)
    return TokenBatch(ids, lengths, overflow)


def prompt_ids(
    codec: PromptCodec, ranks: jax.Array, *, width: int, pad_id: int = 0, padding_side: str = "right"
) -> TokenBatch:
    """Token ids of the GP first-turn prompt (chat template + generation prompt) for hands ranks int32[B, 4] (1..13).

    Jittable (width, pad_id, padding_side static). GP-VL prompts do not depend on the ranks.
    """
    _check_padding_side(padding_side)
    p = codec
    if p.language_only:
        names = _CARD_NAME0 + jnp.clip(ranks.astype(jnp.int32), 1, len(prompts.RANK_NAMES)) - 1

        def fixed(piece: int) -> jax.Array:
            return jnp.full((ranks.shape[0], 1), piece, jnp.int32)

        order = jnp.concatenate(
            [fixed(_HEAD), fixed(_PROMPT_PRE), fixed(_OPEN), names[:, :1], fixed(_SEP),
             names[:, 1:2], fixed(_SEP), names[:, 2:3], fixed(_SEP), names[:, 3:], fixed(_CLOSE),
             fixed(_PROMPT_POST), fixed(_USER_TAIL)], axis=1)
    else:
        order = jnp.broadcast_to(jnp.array([_HEAD, _PROMPT_PRE, _USER_TAIL], jnp.int32), (ranks.shape[0], 3))
    extra = jnp.zeros((1,), jnp.int32)
    assemble = jax.vmap(lambda o: _assemble_row(p.piece_start[o], p.piece_len[o], p.bank, extra, width, pad_id))
    ids, lengths, overflow = assemble(order)
    return _finish(ids, lengths, overflow, padding_side, pad_id)


def append_revision(
    codec: PromptCodec,
    prev: TokenBatch,
    reply_ids: jax.Array,
    reply_len: jax.Array,
    fragments: jax.Array,
    num_fragments: jax.Array,
    *,
    width: int,
    pad_id: int = 0,
    padding_side: str = "right",
) -> TokenBatch:
    """Continue each conversation with a revision turn, on the device.

    prev: the ids that were fed to the model (padded on padding_side); reply_ids int32[B, R] right-padded with
    reply_len int32[B] (without the stop token); fragments int32[B, K] fragment ids with num_fragments int32[B].
    Returns prev + reply (as the assistant message) + `You failed this trial because {feedback}` (user message) +
    the generation prompt, as int32[B, width].
    """
    _check_padding_side(padding_side)
    p = codec
    prev_ids = _to_right_padded(prev.ids, prev.lengths) if padding_side == "left" else prev.ids
    t_prev = prev_ids.shape[1]
    n_bank = p.bank.shape[0]
    k = fragments.shape[1]

    def row(prev_row, prev_len, reply_row, r_len, frag_row, n_frag):
        reply_row = reply_row.astype(jnp.int32)
        reply_ids, reply_len = (reply_row, r_len) if p.trim is None else trim_reply(p.trim, reply_row, r_len)
        frag_piece = _FRAGMENT0 + jnp.clip(frag_row, 0, max(p.num_fragments - 1, 0))
        frag_len = jnp.where(jnp.arange(k) < n_frag, p.piece_len[frag_piece], 0)
        fixed = jnp.array([_ASSISTANT_TAIL, _FEEDBACK_PREFIX], jnp.int32)
        starts = jnp.concatenate([jnp.array([n_bank, n_bank + t_prev], jnp.int32), p.piece_start[fixed],
                                  p.piece_start[frag_piece], p.piece_start[_USER_TAIL][None]])
        lens = jnp.concatenate([prev_len[None], jnp.asarray(reply_len, jnp.int32)[None], p.piece_len[fixed], frag_len,
                                p.piece_len[_USER_TAIL][None]])
        return _assemble_row(starts, lens, p.bank, jnp.concatenate([prev_row, reply_ids]), width, pad_id)

    ids, lengths, overflow = jax.vmap(row)(prev_ids, prev.lengths, reply_ids, reply_len, fragments, num_fragments)
    return _finish(ids, lengths, overflow | prev.overflow, padding_side, pad_id)
