"""Optimizers and learning-rate schedules shared by SFT and PPO."""
from __future__ import annotations

import re
from typing import Sequence

import jax
import optax


def warmup_cosine_schedule(peak_lr: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to peak_lr over warmup_steps, then cosine decay to end_lr at total_steps."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps, decay_steps=total_steps, end_value=end_lr
    )


def warmup_constant_schedule(peak_lr: float, warmup_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to peak_lr over warmup_steps, then constant (the reference's effective SFT schedule,
    training.md §3.3: its DeepSpeed WarmupLR replaced the configured cosine)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return optax.warmup_constant_schedule(init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps)


def trainable_mask(params, frozen_patterns: Sequence[str]):
    """Pytree of bools: False for leaves whose '/'-joined path matches any regex in frozen_patterns."""
    compiled = [re.compile(p) for p in frozen_patterns]

    def keep(path, _):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return not any(c.search(name) for c in compiled)

    return jax.tree_util.tree_map_with_path(keep, params)


def adamw(
    schedule: optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-7,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    trainable=None,
) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; leaves where the `trainable` mask pytree is False get zero updates."""
    parts = []
    if max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    tx = optax.chain(*parts)
    if trainable is None:
        return tx
    labels = jax.tree_util.tree_map(lambda t: "train" if t else "freeze", trainable)
    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
