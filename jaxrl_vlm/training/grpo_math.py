"""Arithmetic of the group-relative algorithms (GRPO, Dr. GRPO, RLOO): episode returns from the update's rows, the
advantage of each episode against its group, and the normalisation of per-token losses.

Sources: GRPO (Shao et al. 2024, DeepSeekMath), Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like Training"),
RLOO (Ahmadian et al. 2024, after Kool et al. 2019); conventions of TRL's GRPOTrainer and verl's core_algos.
- The group's std is the unbiased one (torch's `std()`, as TRL and verl use) plus 1e-4 (TRL's epsilon).
- A group whose returns are all equal gets advantage 0 exactly (not the float residue of subtracting its mean),
  and so does a group with fewer than 2 members present: neither carries a learning signal.
- Loss normalisation (`LOSS_NORMS`), over the per-token loss terms l of a mini-batch's replies:
  'token': sum of l over all tokens / the tokens (TRL 'dapo'/'bnpo', verl 'token-mean'; every token weighs the
  same); 'sequence': mean over replies of each reply's token mean (the GRPO paper, TRL 'grpo', verl
  'seq-mean-token-mean'; a short reply's tokens weigh more); 'constant': mean over replies of each reply's token
  sum / N, the generation budget (Dr. GRPO, TRL 'dr_grpo', verl 'seq-mean-token-sum-norm'; no length bias).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SCALES = ("group", "none")  # ppo.scale_rewards: divide by the group's std, or not (Dr. GRPO)
LOSS_NORMS = ("token", "sequence", "constant")
STD_EPS = 1e-4


def episode_returns(reward: jax.Array, turn_valid: jax.Array, episode: jax.Array | None) -> tuple[jax.Array,
                                                                                                  jax.Array]:
    """(returns f32[E], present bool[E]) of the episodes 0..E-1 of the update's rows: the sum of each episode's
    valid rewards over all its rows (conversations) and turns, and whether it has a valid turn.

    reward f32[E, T], turn_valid bool[E, T]; episode int32[E]: each row's episode in [0, E), negative for padding
    rows (`rl_update.PPOBatch`), or None: row i is episode i."""
    e = reward.shape[0]
    episode = jnp.arange(e, dtype=jnp.int32) if episode is None else episode
    slot = jnp.where(episode >= 0, episode, e)  # padding rows fall into a spare segment, dropped below
    row_return = jnp.sum(jnp.where(turn_valid, reward, 0.0), axis=1)
    returns = jax.ops.segment_sum(row_return, slot, num_segments=e + 1)[:e]
    rows = jax.ops.segment_sum(jnp.any(turn_valid, axis=1).astype(jnp.int32), slot, num_segments=e + 1)[:e]
    return returns, rows > 0


def flat_groups(returns: jax.Array, present: jax.Array) -> jax.Array:
    """bool[N]: groups (rows of returns f32[N, G], present bool[N, G]) with fewer than 2 members present or whose
    present members' returns are all equal: they carry no learning signal."""
    high = jnp.max(jnp.where(present, returns, -jnp.inf), axis=1)
    low = jnp.min(jnp.where(present, returns, jnp.inf), axis=1)
    return (jnp.sum(present, axis=1) < 2) | (high == low)


def group_advantages(returns: jax.Array, present: jax.Array, *, leave_one_out: bool, scale_by_std: bool) -> jax.Array:
    """f32[N, G] advantages of N groups of G episodes (returns f32[N, G]; present bool[N, G]: absent members are
    ignored and get 0).

    GRPO: R - mean of the group; RLOO (leave_one_out): R - mean of the group's other members (= G/(G-1) x GRPO's);
    then, with scale_by_std, divided by the group's unbiased std + 1e-4. `flat_groups` get 0.
    """
    m = present.astype(jnp.float32)
    count = jnp.sum(m, axis=1, keepdims=True)
    total = jnp.sum(returns * m, axis=1, keepdims=True)
    mean = total / jnp.maximum(count, 1.0)
    baseline = (total - returns) / jnp.maximum(count - 1.0, 1.0) if leave_one_out else mean
    advantages = returns - baseline
    if scale_by_std:
        var = jnp.sum((returns - mean) ** 2 * m, axis=1, keepdims=True) / jnp.maximum(count - 1.0, 1.0)
        advantages = advantages / (jnp.sqrt(var) + STD_EPS)
    return jnp.where(present & ~flat_groups(returns, present)[:, None], advantages, 0.0)


def loss_sum(values: jax.Array, mask: jax.Array, norm: str) -> jax.Array:
    """f32 scalar: the numerator of a normalised per-token loss over some replies (values f32[..., N] per token,
    mask bool[..., N] the replies' tokens; leading axes index replies), to divide by `loss_units` of the
    mini-batch: 'token': sum of the masked values; 'sequence': sum over replies of their mean; 'constant': sum
    over replies of their sum / N."""
    masked = jnp.where(mask, values, 0.0)
    if norm == "token":
        return jnp.sum(masked)
    if norm == "sequence":
        return jnp.sum(jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1))
    if norm == "constant":
        return jnp.sum(masked) / values.shape[-1]
    raise ValueError(f"unknown loss normalisation {norm!r}; expected one of {LOSS_NORMS}")


def loss_units(mask: jax.Array, norm: str) -> jax.Array:
    """f32 scalar: what a normalised per-token loss is a mean over (mask bool[..., N] as in `loss_sum`): the tokens
    ('token'), or the replies with at least one token ('sequence', 'constant')."""
    if norm == "token":
        return jnp.sum(mask.astype(jnp.float32))
    return jnp.sum(jnp.any(mask, axis=-1).astype(jnp.float32))
