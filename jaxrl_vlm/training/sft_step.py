"""The SFT update: token cross-entropy on response tokens, gradient accumulation, one optax step, all in one jit.

The loss is the mean over every supervised token of the global batch (sum of token losses / number of supervised
tokens), so accumulating over micro-batches gives exactly the large-batch gradient: each micro-batch contributes
the gradient of its token-loss SUM, and the total is divided once by the global token count.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

ApplyFn = Callable[..., jax.Array]  # apply_fn(params, input_ids, attention_mask, **extra) -> logits f32/bf16[B,T,V]


class TrainState(NamedTuple):
    """step int32[]; params and opt_state pytrees."""

    step: jax.Array
    params: Any
    opt_state: Any


def init_train_state(params, tx: optax.GradientTransformation) -> TrainState:
    """TrainState at step 0."""
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def token_losses(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of next-token cross-entropies over supervised targets, number of them).

    logits [B,T,V] predict input_ids shifted by one: position t scores token t+1, counted where loss_mask[:, t+1].
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets = input_ids[:, 1:]
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    mask = loss_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def _split_micro(batch: Mapping[str, jax.Array], micro_batches: int) -> dict[str, jax.Array]:
    def split(x):
        if x.shape[0] % micro_batches:
            raise ValueError(f"batch dimension {x.shape[0]} is not divisible by micro_batches={micro_batches}")
        return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])

    return {k: split(v) for k, v in batch.items()}


def make_sft_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, *, micro_batches: int = 1):
    """Build `step(state, batch, rng) -> (state, metrics)` (pure; jit it with donate_argnums=0).

    batch: input_ids int32[B,T], attention_mask bool[B,T], loss_mask bool[B,T], plus model extras (e.g. vision
    arrays) with leading dim B. metrics: loss (mean over supervised tokens), tokens (supervised count) and grad_norm
    (before clipping).
    """
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")

    def loss_sum(params, micro):
        extra = {k: v for k, v in micro.items() if k not in ("input_ids", "attention_mask", "loss_mask")}
        logits = apply_fn(params, micro["input_ids"], micro["attention_mask"], **extra)
        total, count = token_losses(logits, micro["input_ids"], micro["loss_mask"] & micro["attention_mask"])
        return total, count

    grad_fn = jax.value_and_grad(loss_sum, has_aux=True)

    def step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array):
        del rng  # SFT is deterministic (no dropout); kept for the common step signature.
        micro = _split_micro(batch, micro_batches)
        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)

        def accumulate(carry, mb):
            grads, total, count = carry
            (mb_total, mb_count), mb_grads = grad_fn(state.params, mb)
            grads = jax.tree_util.tree_map(lambda g, h: g + h.astype(jnp.float32), grads, mb_grads)
            return (grads, total + mb_total, count + mb_count), None

        (grads, total, count), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), jnp.float32(0)), micro)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree_util.tree_map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": total / denom, "tokens": count, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return step
