"""Chat templates cut into static text pieces around the message contents, for assembling conversations as token
ids on the device (every task's prompts: `chat_layout` probes a tokenizer's template once on the host).

The probe renders sentinel contents with `apply_chat_template` and checks that the template is append-only (the
rendering of turn k is a prefix of turn k+1) and changes contents at most by trimming whitespace (Llama 3 does
`content | trim`; ChatML does not); anything else raises ValueError.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

_USER_0, _USER_1, _USER_2 = "<<CHAT_USER_0>>", "<<CHAT_USER_1>>", "<<CHAT_USER_2>>"
_ASSISTANT_1, _ASSISTANT_2 = "<<CHAT_ASSISTANT_1>>", "<<CHAT_ASSISTANT_2>>"


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
