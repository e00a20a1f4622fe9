"""PPO arithmetic (spec training.md §4): GAE, advantage normalisation, the clipped losses, reply log-probs, and the
optional KL penalty and entropy bonus (not in the reference). The clipped surrogate, the k3 KL estimate and token
entropies serve the group-relative algorithms too, per token (training/grpo.py).

Fidelity decisions (the reference is SFTvsRL `rl/trainer/algo/ppo.py` and `VLMPolicy.evaluate`):
- GAE is the reference's recursion (gamma 0.9, lambda 0.95); `dones[t]` marks the last step of an episode, so the
  bootstrap value after it is masked. Whether a budget-exhausted episode counts as done is the caller's choice
  (the reference leaves it undone, and GAE then bootstraps into the next episode; see training.md §4.3).
- Advantages are normalised with the unbiased standard deviation plus 1e-5, as torch's `std()` does.
- Ratio guard: where the probability ratio exceeds `ratio_guard` (10 in the reference) the sample uses the clipped
  surrogate only. The reference applies it to mini-batches of one sample, so per-sample here is the same rule.
- Reply log-prob: logits are divided by the temperature before the log-softmax. The reply is split at the last
  occurrence of the key pattern (the tokens of ` "formula":`) into thought (before it) and action (from it on);
  logp = thought_coef * thought + action. Without the pattern the action is the reply's last 5 tokens, as in the
  reference's runs: its fallback takes the index of the 4th-from-last scored token and then sums from one position
  before it (`selected_log_probs[:, match_index - 1:]`), 5 tokens (this is every V-IRL reply, training.md §4.4).
  Deviations: every generated token is scored (the reference never scores its first two tokens and masks token
  id 0 as padding), and the fallback applies to any reply length (the reference returns constants for replies
  under 4 tokens).
- KL penalty: the k3 estimator exp(-x) + x - 1 of KL(policy || reference), x = logp - ref_logp per reply. It is
  >= 0, and its gradient pulls each reply's log-prob towards the reference's from either side; the plain estimate
  mean(x) would, as a loss on fixed samples, only push every sampled reply's log-prob down. x is clipped to +-20
  nats so that one reply cannot overflow the exponential.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def gae(rewards: jax.Array, values: jax.Array, dones: jax.Array, next_value: jax.Array, *, gamma: float = 0.9,
        lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over time-major arrays.

    rewards, values, dones: f32/bool[T, N] (dones[t]: episode ended after step t); next_value: f32[N], the value of
    the state after step T-1. Returns (advantages f32[T, N], returns f32[T, N] = advantages + values).
    """
    not_done = 1.0 - dones.astype(jnp.float32)
    next_values = jnp.concatenate([values[1:], next_value[None]], axis=0)
    deltas = rewards + gamma * next_values * not_done - values

    def backward(carry, x):
        delta, keep = x
        adv = delta + gamma * lam * keep * carry
        return adv, adv

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(next_value, dtype=jnp.float32), (deltas, not_done),
                                 reverse=True)
    return advantages, advantages + values


def normalize_advantages(advantages: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """(a - mean) / (unbiased std + 1e-5) over the entries where mask is True (all when mask is None)."""
    m = jnp.ones_like(advantages) if mask is None else mask.astype(advantages.dtype)
    n = jnp.sum(m)
    mean = jnp.sum(advantages * m) / jnp.maximum(n, 1.0)
    var = jnp.sum(((advantages - mean) ** 2) * m) / jnp.maximum(n - 1.0, 1.0)
    return (advantages - mean) / (jnp.sqrt(var) + 1e-5) * m


class PPOLosses(NamedTuple):
    """Scalar losses and diagnostics of one PPO mini-batch."""

    total: jax.Array
    policy: jax.Array
    value: jax.Array
    clip_fraction: jax.Array
    approx_kl: jax.Array


def clipped_surrogate(new_logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, *, clip: float,
                      ratio_guard: float | None = None) -> tuple[jax.Array, jax.Array]:
    """(objective, ratio), f32 arrays of the inputs' common shape (a reply's or a token's log-probs): ratio =
    exp(new - old) and objective = min(r*A, clip(r, 1-c, 1+c)*A), only the clipped term where r > ratio_guard."""
    ratio = jnp.exp(new_logp - old_logp)
    surr1 = ratio * advantages
    surr2 = jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages
    objective = jnp.minimum(surr1, surr2)
    if ratio_guard is not None:
        objective = jnp.where(ratio > ratio_guard, surr2, objective)
    return objective, ratio


def ppo_losses(new_logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, values: jax.Array,
               old_values: jax.Array, returns: jax.Array, mask: jax.Array | None = None, *, clip: float = 0.1,
               value_coef: float = 0.5, ratio_guard: float | None = 10.0) -> PPOLosses:
    """Clipped surrogate + clipped value loss, averaged over samples where mask (f32/bool[N]) is set.

    All inputs f32[N]. total = value_coef * value + policy, with
    policy = -mean(min(r*A, clip(r, 1-c, 1+c)*A)) (only the clipped term where r > ratio_guard) and
    value = 0.5 * mean(max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2)).
    """
    m = jnp.ones_like(new_logp) if mask is None else mask.astype(new_logp.dtype)
    n = jnp.maximum(jnp.sum(m), 1.0)
    per_sample, ratio = clipped_surrogate(new_logp, old_logp, advantages, clip=clip, ratio_guard=ratio_guard)
    policy = -jnp.sum(per_sample * m) / n
    clipped_values = old_values + jnp.clip(values - old_values, -clip, clip)
    value_sq = jnp.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    value = 0.5 * jnp.sum(value_sq * m) / n
    clip_fraction = jnp.sum((jnp.abs(ratio - 1.0) > clip) * m) / n
    approx_kl = jnp.sum((old_logp - new_logp) * m) / n
    return PPOLosses(value_coef * value + policy, policy, value, clip_fraction, approx_kl)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """log p(tokens) under softmax(logits / temperature): logits f32/bf16[B, T, V], tokens int32[B, T] -> f32[B, T]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def action_start(tokens: jax.Array, lengths: jax.Array, pattern: jax.Array, fallback_tail: int = 5) -> jax.Array:
    """Index where the action part starts: the last occurrence of `pattern` (int32[P]) inside tokens[:length].

    tokens int32[B, T], lengths int32[B] -> int32[B]; without an occurrence, max(length - fallback_tail, 0).
    """
    p = pattern.shape[0]
    t = tokens.shape[1]
    starts = jnp.arange(t)
    windows = jnp.stack([jnp.roll(tokens, -k, axis=1) for k in range(p)], axis=-1)  # [B, T, P]
    match = jnp.all(windows == pattern[None, None, :], axis=-1) & (starts[None, :] + p <= lengths[:, None])
    last = jnp.max(jnp.where(match, starts[None, :], -1), axis=1)
    return jnp.where(last >= 0, last, jnp.maximum(lengths - fallback_tail, 0)).astype(jnp.int32)


def reply_logprob(token_logp: jax.Array, tokens: jax.Array, lengths: jax.Array, pattern: jax.Array, *,
                  thought_coef: float = 0.5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logp, thought, action), each f32[B]: thought/action sums of token_logp f32[B, T] before/from action_start."""
    positions = jnp.arange(tokens.shape[1])[None, :]
    valid = positions < lengths[:, None]
    is_action = positions >= action_start(tokens, lengths, pattern)[:, None]
    thought = jnp.sum(jnp.where(valid & ~is_action, token_logp, 0.0), axis=1)
    action = jnp.sum(jnp.where(valid & is_action, token_logp, 0.0), axis=1)
    return thought_coef * thought + action, thought, action


KL_LOG_RATIO_CLIP = 20.0


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Elementwise k3 = exp(-x) + x - 1, x = clip(logp - ref_logp, +-20), of log-probs of any (equal) shape (a
    reply's or a token's): each sample's non-negative estimate of KL(policy || reference)."""
    x = jnp.clip(logp - ref_logp, -KL_LOG_RATIO_CLIP, KL_LOG_RATIO_CLIP)
    return jnp.exp(-x) + x - 1.0


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean over masked samples of k3 = exp(-x) + x - 1, x = clip(logp - ref_logp, +-20): a non-negative estimate
    of KL(policy || reference) from samples of the policy. logp, ref_logp f32[N]; mask f32/bool[N] -> f32 scalar."""
    m = jnp.ones_like(logp) if mask is None else mask.astype(logp.dtype)
    return jnp.sum(kl_k3(logp, ref_logp) * m) / jnp.maximum(jnp.sum(m), 1.0)


def token_entropy(logits: jax.Array, temperature: float) -> jax.Array:
    """Entropy (nats) of softmax(logits / temperature) at every position: logits f32/bf16[B, T, V] -> f32[B, T]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def mean_token_entropy(logits: jax.Array, lengths: jax.Array, temperature: float) -> jax.Array:
    """Per reply, the mean over its first `lengths` tokens of the entropy (nats) of softmax(logits / temperature).

    logits f32/bf16[B, T, V], lengths int32[B] -> f32[B] (0 for an empty reply)."""
    entropy = token_entropy(logits, temperature)
    valid = jnp.arange(logits.shape[1])[None, :] < lengths[:, None]
    return jnp.sum(entropy * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)
