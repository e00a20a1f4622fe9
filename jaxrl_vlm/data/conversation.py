"""Chat conversations -> token ids and the SFT loss mask (spec training.md §3.2).

The conversation is rendered with the checkpoint's own chat template and cut into segments at assistant turns:
the text the template adds up to and including the generation prompt is a prompt segment (not supervised); the text
it adds for an assistant message (the reply and its end-of-turn token, plus whatever the template writes after it,
e.g. SmolLM2's newline) is a response segment (supervised). Each segment is tokenized separately without special
tokens, as the reference does, so segment boundaries are token boundaries. Deviation from the reference: later
turns use the chat template rather than a hand-written header (the reference adds a newline after `<|eot_id|>` that
the Llama-3 template does not), so training and rollout prompts are the same token sequence.
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
        segments.append((prompt[len(done):], False))
        segments.append((full[len(prompt):], True))
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
