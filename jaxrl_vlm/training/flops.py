"""Training compute in the paper's accounting (spec generalpoints.md §7), from token counts we measure.

    SFT: 6 N (D_init + D_sft)        RL: 6 N (D_init + D_rl) + 2 N D_buffer

N: parameters of the policy (value head excluded). D_init: tokens the initial checkpoint was fine-tuned on (the
SFT warm start). D_sft / D_rl: tokens that went through a training forward and backward pass (PPO: every epoch
counts its tokens again). D_buffer: tokens that went through inference-only forward passes to fill the rollout
buffer (the rollout's prefill and decode, the scoring of old log-probs and values, and the KL reference's scoring
when the penalty is on). The paper estimates D_buffer = 6 D_rl for GP; we count it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


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
