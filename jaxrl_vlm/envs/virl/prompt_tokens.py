"""Token tables for assembling V-IRL prompts on the device (spec virl.md §1.5, §1.9).

Every string that can appear in a prompt is one of a finite set: the template segments around the three
placeholders, the global instruction of each route (one per relative label of its first turn), the history line
prefixes `O_{i}: ` / `A_{i}: `, the observation and action strings (each with its trailing newline), and the VL
current-observation line. They are tokenised once on the host (`encode` must not add special tokens); the device
concatenates the pieces with gathers. Decoding the result gives exactly the host-rendered prompt (byte-level BPE
tokenizers decode a concatenation to the concatenated text); the ids can differ from tokenising the whole prompt at
once only at piece boundaries, which all lie at newlines, spaces after ':' or template placeholders.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.virl.prompts import Q_VIRL_L, Q_VIRL_VL, action_space_text

Encode = Callable[[str], Sequence[int]]


@dataclasses.dataclass
class StringTable:
    """Unique strings with host token ids padded to one width (pad 0)."""
    strings: list[str] = dataclasses.field(default_factory=list)
    index: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, text: str) -> int:
        """Id of `text`, adding it if new."""
        if text not in self.index:
            self.index[text] = len(self.strings)
            self.strings.append(text)
        return self.index[text]

    def tokenize(self, encode: Encode) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32[N, W], lengths int32[N])."""
        ids = [list(encode(s)) for s in self.strings]
        width = max(1, max(len(x) for x in ids))
        tokens = np.zeros((len(ids), width), np.int32)
        for i, x in enumerate(ids):
            tokens[i, :len(x)] = x
        return tokens, np.array([len(x) for x in ids], np.int32)


def template_segments(vision: bool, absolute_action: bool) -> tuple[str, str, str]:
    """(before instruction, between instruction and history, after history) of the filled Q template."""
    template = (Q_VIRL_VL if vision else Q_VIRL_L).replace("{{", "{").replace("}}", "}")
    head, rest = template.split("{instruction}")
    middle, tail = rest.split("{obs_act_seq}")
    return head, middle.replace("{action_space}", action_space_text(absolute_action)), tail


def assemble(piece_ids: jax.Array, piece_lens: jax.Array, tokens: jax.Array, max_len: int,
             pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Concatenate pieces of a token table into int32[max_len] (pad_id after the end) and the total length.

    piece_ids int32[P] rows of `tokens` (int32[N, W]); piece_lens int32[P] tokens used of each (0 to skip a piece).
    """
    ends = jnp.cumsum(piece_lens)
    starts = ends - piece_lens
    pos = jnp.arange(max_len)
    # The piece holding position p is the last one starting at or before p (empty pieces share their successor's
    # start and come before it): count piece starts with a scatter-add and a cumulative sum.
    marks = jnp.zeros(max_len, jnp.int32).at[starts].add(1, mode="drop")
    which = jnp.clip(jnp.cumsum(marks) - 1, 0, piece_ids.shape[0] - 1)
    offset = jnp.clip(pos - starts[which], 0, tokens.shape[1] - 1)
    out = tokens[piece_ids[which], offset]
    total = ends[-1]
    return jnp.where(pos < total, out, pad_id).astype(jnp.int32), total.astype(jnp.int32)
