"""Training compute in the paper's accounting (spec generalpoints.md §7), from token counts we measure.

    SFT: 6 N (D_init + D_sft)        RL: 6 N (D_init + D_rl) + 2 N D_buffer

N: parameters of the policy (value head excluded). D_init: tokens the initial checkpoint was fine-tuned on (the
SFT warm start). D_sft / D_rl: tokens that went through a training forward and backward pass (RL: every epoch
counts its tokens again). D_buffer: tokens that went through inference-only forward passes to fill the rollout
buffer (the rollout's prefill and decode, the scoring of old log-probs and values, and the KL reference's scoring
when the penalty is on). The paper estimates D_buffer = 6 D_rl for GP; we count it.

Tokens are counted as the paper's reference counts them (`VLMValue.evaluate`: 6 x the sequence of every
transition it scores): a transition, one reply, is its whole prompt (earlier turns of its conversation included)
plus the reply, and an image adds `image_tokens` (the reference adds 1600 for Llama-3.2-Vision: its 560 px tile
in 14 px patches). So a multi-turn conversation of T replies counts its prefix T times, as the reference, which
re-encodes each transition, spends it. Our update scores a conversation once (its turns share the prefix), so what
it actually processes is less for multi-turn episodes; the loop logs that as `conversation_tokens` per update,
and plots and checkpoints the paper's count. SFT examples are one transition each.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


def image_tokens(model_config: Any) -> int:
    """Tokens an image adds to a transition in the paper's count: (tile side / patch side)^2 of a vision model's
    config (1600 for Llama-3.2-11B-Vision, the reference's constant), 0 for a text model."""
    vision = getattr(model_config, "vision", None)
    return 0 if vision is None else (vision.image_size // vision.patch_size) ** 2


def transition_tokens(reply_start: Any, reply_len: Any, played: Any, images: int = 0) -> int:
    """Tokens of the played transitions of rolled-out conversations in the paper's count: per reply, the tokens
    before it in its conversation (reply_start int[..., T]) plus its own (reply_len int[..., T], the stop token
    included) plus `images` image tokens; played bool[..., T]."""
    per_reply = np.asarray(reply_start, np.int64) + np.asarray(reply_len, np.int64) + images
    return int(per_reply[np.asarray(played, bool)].sum())


def param_count(params: Any) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass
class ComputeMeter:
    """Token counters and the compute they imply; JSON round trip with `state` / `from_state`."""

    num_params: int
    init_tokens: int = 0
    train_tokens: int = 0
    buffer_tokens: int = 0

    def add(self, *, train: int = 0, buffer: int = 0) -> None:
        """Count tokens of training (forward + backward) and of inference-only forward passes."""
        self.train_tokens += int(train)
        self.buffer_tokens += int(buffer)

    @property
    def gflops(self) -> float:
        """6 N (D_init + D_train) + 2 N D_buffer, in GFLOPs."""
        n = self.num_params
        return (6 * n * (self.init_tokens + self.train_tokens) + 2 * n * self.buffer_tokens) / 1e9

    def state(self) -> dict[str, int]:
        """JSON-able counters."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, int]) -> "ComputeMeter":
        """Inverse of `state`."""
        return cls(**{k: int(v) for k, v in state.items()})
