"""The RL update every algorithm shares (PPO, GRPO, RLOO), all inside one jit; the algorithm is its advantage
estimator and its loss (`Algorithm`).

`make_update(algorithm, tx)` builds `update(state, batch, rng) -> (state, metrics)`:
1. `algorithm.prepare(params, batch)`: score the batch with the current params (the old log-probs, and values for a
   critic) and estimate the advantages over the WHOLE batch, before any shuffling, so a mini-batch (or a data
   shard) may hold any conversations: groups and episodes need not stay whole in one;
2. `epochs` passes over the conversations, each shuffled and cut into `minibatches`; one optimizer step per
   mini-batch, its gradient accumulated exactly over `micro_batches` (a scan) to bound activation memory. A
   micro-batch's loss is its share of the mini-batch's loss: the algorithm divides its micro-batch sums by the
   mini-batch's `loss_denominator` (its valid turns, or tokens), so the accumulated gradient is the mini-batch's.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from jaxrl_vlm.training.sft_step import TrainState


class PPOBatch(NamedTuple):
    """E conversations of up to T turns (replies of up to N tokens), right-padded to L tokens: the batch of every
    algorithm of the RL job (config section `ppo`).

    ids int32[E, L], mask bool[E, L]; reply_tokens int32[E, T, N]; reply_len, reply_start int32[E, T];
    turn_valid bool[E, T]; reward float32[E, T]; vision: None or Mllama arrays with leading E (pixel_values,
    aspect_ratio_ids, aspect_ratio_mask, cross_attention_mask int32[E, L, M, tiles]); ref_logp: the reference
    policy's log-probs (only when kl_coef > 0, else None) in the algorithm's shape (`Algorithm.reference_logp`:
    float32[E, T] per reply, or float32[E, T, N] per token); episode: int32[E] the episode of each conversation, in
    [0, E) (rows of an episode consecutive, in time order; padding rows negative) or None (one conversation per
    episode).
    """

    ids: jax.Array
    mask: jax.Array
    reply_tokens: jax.Array
    reply_len: jax.Array
    reply_start: jax.Array
    turn_valid: jax.Array
    reward: jax.Array
    vision: Any = None
    ref_logp: Any = None
    episode: Any = None


class Algorithm(Protocol):
    """An RL algorithm: its advantage estimator (`prepare`) and its loss. `hyper` has epochs, minibatches and
    micro_batches; `critic`: whether the params hold a value head ({'policy', 'value'}, else {'policy'})."""

    hyper: Any
    critic: bool

    def reference_logp(self, reference: Any, batch: PPOBatch) -> jax.Array:
        """The reference policy's (its params) log-probs of the batch's replies: what batch.ref_logp holds."""

    def prepare(self, params: Any, batch: PPOBatch) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """(data: the batch under 'batch' and per-conversation arrays (leading axis E) the loss reads, e.g. old
        log-probs and advantages; batch-level metrics (f32 scalars))."""

    def loss_denominator(self, minibatch: dict[str, Any]) -> jax.Array:
        """f32 scalar: what the mini-batch's loss is a mean over (its valid turns, or tokens)."""

    def loss(self, params: Any, micro: dict[str, Any], denominator: jax.Array) -> tuple[jax.Array, dict]:
        """(the micro-batch's share of the mini-batch loss, {metric: its share}); micro: a slice of `prepare`'s data."""


def split(tree: Any, parts: int) -> Any:
    """Every leaf [E, ...] -> [parts, E / parts, ...] (consecutive slices); ValueError when E % parts."""
    def split_leaf(x):
        if x.shape[0] % parts:
            raise ValueError(f"{x.shape[0]} episodes are not divisible into {parts} parts")
        return x.reshape(parts, x.shape[0] // parts, *x.shape[1:])
    return jax.tree_util.tree_map(split_leaf, tree)


def make_update(algorithm: Algorithm, tx: optax.GradientTransformation):
    """Build the pure `update(state: TrainState, batch: PPOBatch, rng) -> (TrainState, metrics)`; jit it with the
    state donated. metrics: the mean over optimizer steps of 'loss', 'grad_norm' and the loss's metrics, and the
    batch-level metrics of `algorithm.prepare`."""
    hyper = algorithm.hyper
    if hyper.epochs < 1 or hyper.minibatches < 1 or hyper.micro_batches < 1:
        raise ValueError(f"epochs, minibatches and micro_batches must be >= 1, got {hyper}")
    grad_fn = jax.value_and_grad(algorithm.loss, has_aux=True)

    def minibatch_step(state: TrainState, minibatch: dict[str, Any]):
        denominator = algorithm.loss_denominator(minibatch)
        micros = split(minibatch, hyper.micro_batches)
        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        first = jax.tree_util.tree_map(lambda x: x[0], micros)
        no_parts = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                          jax.eval_shape(algorithm.loss, state.params, first, denominator)[1])

        def accumulate(carry, micro):
            grads, loss, parts = carry
            (m_loss, m_parts), m_grads = grad_fn(state.params, micro, denominator)
            grads = jax.tree_util.tree_map(lambda g, h: g + h.astype(jnp.float32), grads, m_grads)
            return (grads, loss + m_loss, jax.tree_util.tree_map(jnp.add, parts, m_parts)), None

        (grads, loss, parts), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), no_parts), micros)
        grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    def update(state: TrainState, batch: PPOBatch, rng: jax.Array):
        num_rows = batch.ids.shape[0]
        data, batch_metrics = algorithm.prepare(state.params, batch)

        def epoch(state, key):
            order = jax.random.permutation(key, num_rows)
            shuffled = jax.tree_util.tree_map(lambda x: jnp.take(x, order, axis=0), data)
            return jax.lax.scan(minibatch_step, state, split(shuffled, hyper.minibatches))

        state, metrics = jax.lax.scan(epoch, state, jax.random.split(rng, hyper.epochs))
        return state, {**{k: jnp.mean(v) for k, v in metrics.items()}, **batch_metrics}

    return update
