"""Chat conversations -> token ids and the SFT loss mask (spec training.md §3.2).

The conversation is rendered with the checkpoint's own chat template and cut into segments at assistant turns:
the text the template adds up to and including the generation prompt is a prompt segment (not supervised); the text
it adds for an assistant message (the reply and its end-of-turn token, plus whatever the template writes after it,
e.g. SmolLM2's newline) is a response segment (supervised). Each segment is tokenized separately without special
tokens, as the reference does, so segment boundaries are token boundaries.

Replies are supervised as written, untrimmed, as the reference's `{reply}<|eot_id|>\n` does (training.md §3.2):
where a template trims message contents (Llama 3's `| trim`) the response segment is the raw reply followed by what
the template writes after the content (`<|eot_id|>`), e.g. the expert reply's leading and trailing newlines are
kept; rollouts continue the KV cache with replies untrimmed too. Not reproduced: the newline the reference writes
after `<|eot_id|>` and its hand-written header for later turns; both are its own separators, which the chat template
and our rollout prompts lack, so supervising them would teach tokens a rollout never shows. Later turns use the chat
template, so training and rollout prompts are the same token sequence.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

Message = dict[str, Any]


class TokenizedConversation(NamedTuple):
    """input_ids int32[T]; loss_mask bool[T], True where the token belongs to an assistant response segment;
    image uint8[H, W, 3] for a conversation whose first user message shows one image (None for text)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray
    image: np.ndarray | None = None


def _render(tokenizer, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def conversation_segments(tokenizer, messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """Cut a rendered conversation into (text, supervised) segments; raises if the template is not prefix-stable."""
    if not messages:
        raise ValueError("empty conversation")
    roles = [m.get("role") for m in messages]
    if roles[-1] != "assistant":
        raise ValueError(f"conversation must end with an assistant message, got roles {roles}")
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError(
                f"chat template is not prefix-stable at message {i}: rendering a longer conversation changed the text "
                "of a shorter one, so prompt and response tokens cannot be separated"
            )
        response = full[len(prompt):]
        content = message.get("content")
        if isinstance(content, str) and content != content.strip() and response.startswith(content.strip()):
            response = content + response[len(content.strip()):]  # the reply as written (the reference's target)
        segments.append((prompt[len(done):], False))
        segments.append((response, True))
        done = full
    return segments


def tokenize_conversation(tokenizer, messages: Sequence[Message], image: np.ndarray | None = None
                          ) -> TokenizedConversation:
    """Token ids and loss mask of a whole conversation (user/assistant turns, ending with an assistant turn).

    image: the picture an image part of the first user message stands for (kept with the example)."""
    ids: list[int] = []
    mask: list[bool] = []
    for text, supervised in conversation_segments(tokenizer, messages):
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(seg)
        mask.extend([supervised] * len(seg))
    return TokenizedConversation(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool), image)
