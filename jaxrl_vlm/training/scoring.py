"""Teacher-forced scores of a batch's replies: one forward pass over each whole conversation, every turn's reply
scored in the context it was sampled in (the reply's token j by the logits at reply_start + j - 1).

`score_replies` gives what PPO's loss reads per reply (the reference's thought/action log-prob, training.md §4.4,
and the value at the last prompt token); `score_tokens` gives per-token log-probs and entropies, what the
token-level losses of the group algorithms read. Log-probs are of softmax(logits / temperature), the sampling
distribution before top-p.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_vlm.models import llama
from jaxrl_vlm.training import ppo_math
from jaxrl_vlm.training.policy import PolicyModel
from jaxrl_vlm.training.rl_update import PPOBatch, split


class ReplyScores(NamedTuple):
    """float32[E, T] each: reply log-prob (0.5 thought + action), value at the last prompt token, mean token entropy."""

    logp: jax.Array
    value: jax.Array
    entropy: jax.Array


class TokenScores(NamedTuple):
    """float32[E, T, N] each: log-prob and entropy (0 unless asked for) of every reply token's prediction; positions
    past a reply's length hold the scores of its padding."""

    logp: jax.Array
    entropy: jax.Array


def _reply_logits(policy: PolicyModel, params: dict[str, Any], batch: PPOBatch) -> tuple[jax.Array, jax.Array]:
    """(hidden states [E, L, H] of the conversations, logits [E * T, N, V] predicting each reply token)."""
    e, t, n = batch.reply_tokens.shape
    length = batch.ids.shape[1]
    vision = batch.vision or {}
    cross = policy.encode_images(params["policy"], {k: v for k, v in vision.items() if k != "cross_attention_mask"},
                                 vision.get("cross_attention_mask"))
    hidden = policy.hidden(params["policy"], batch.ids, batch.mask, cross)
    positions = jnp.clip(batch.reply_start[..., None] + jnp.arange(n) - 1, 0, length - 1).reshape(e, t * n)
    reply_hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
    return hidden, policy.logits(params["policy"], reply_hidden).reshape(e * t, n, -1)


def score_replies(policy: PolicyModel, params: dict[str, Any], batch: PPOBatch, pattern: jax.Array, hyper: Any,
                  with_entropy: bool = False) -> ReplyScores:
    """Teacher-forced scores of every turn of every conversation (see ReplyScores). params: {'policy': ...,
    'value': ...} (without 'value' the values are 0); pattern int32[P]: the action key's token ids (e.g.
    ` "formula":`); hyper: temperature and thought_coef (`ppo.PPOHyper`)."""
    e, t, n = batch.reply_tokens.shape
    length = batch.ids.shape[1]
    hidden, logits = _reply_logits(policy, params, batch)
    tokens = batch.reply_tokens.reshape(e * t, n)
    lengths = batch.reply_len.reshape(e * t)
    token_logp = ppo_math.token_logprobs(logits, tokens, hyper.temperature)
    logp, _, _ = ppo_math.reply_logprob(token_logp, tokens, lengths, pattern, thought_coef=hyper.thought_coef)
    entropy = jnp.zeros((e * t,), jnp.float32)
    if with_entropy:
        entropy = ppo_math.mean_token_entropy(logits, lengths, hyper.temperature)
    value = jnp.zeros((e, t), jnp.float32)
    if "value" in params:
        prompt_end = jnp.clip(batch.reply_start - 1, 0, length - 1)
        value = llama.value_head(params["value"], jnp.take_along_axis(hidden, prompt_end[..., None], axis=1))
    return ReplyScores(logp.reshape(e, t), value.reshape(e, t), entropy.reshape(e, t))


def score_tokens(policy: PolicyModel, params: dict[str, Any], batch: PPOBatch, temperature: float,
                 with_entropy: bool = False) -> TokenScores:
    """Teacher-forced per-token scores of every reply (see TokenScores); params: {'policy': ...}."""
    e, t, n = batch.reply_tokens.shape
    _, logits = _reply_logits(policy, params, batch)
    logp = ppo_math.token_logprobs(logits, batch.reply_tokens.reshape(e * t, n), temperature)
    entropy = ppo_math.token_entropy(logits, temperature) if with_entropy else jnp.zeros_like(logp)
    return TokenScores(logp.reshape(e, t, n), entropy.reshape(e, t, n))


def score_in_chunks(score: Callable[[Any, PPOBatch], Any], params: Any, batch: PPOBatch, chunks: int) -> Any:
    """score(params, part) over `chunks` sequential slices of the conversations (bounded memory), without
    gradients; leaves concatenated back to leading axis E."""
    scored = jax.lax.map(lambda part: score(params, part), split(batch, chunks))
    return jax.tree_util.tree_map(lambda x: jax.lax.stop_gradient(x.reshape(-1, *x.shape[2:])), scored)
