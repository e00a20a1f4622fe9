"""KV-cache sampler: a jitted prefill (append a chunk of tokens to the cache) and a jitted `lax.while_loop` decode,
both with the cache donated. Greedy (temperature 0), temperature and top-p sampling; per-row EOS; continuation of an
existing cache with appended tokens (multi-turn revision without re-prefilling the conversation).

Model interface (`DecodeModel`): a hashable object with
  decode_params(params) -> the params in the form `step` runs fastest in a loop (called once per jit, inside it)
  step(params, input_ids[B,T], token_mask[B,T], cache: KVCache, extra) -> (float32 logits [B,V] of column T-1, cache)
  init_cache(batch, capacity) -> KVCache
`extra` is any pytree threaded unchanged through every step (Mllama: the per-image cross-attention K/V).

Cache invariant between calls (`DecodeState`): every generated token except the last sampled one ("pending") is
in the cache; `extend` writes the pending token (if it is a real token) in front of the appended chunk.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.models.layers import CACHE_SLOT_AXIS, KVCache
from jaxrl_vlm.models.sharding import to_host
from jaxrl_vlm.shapes import round_up

CAPACITY_ROUNDING = 16


class DecodeModel(Protocol):
    """What the sampler needs from a model (see module docstring)."""

    def decode_params(self, params: Any) -> Any: ...

    def step(self, params: Any, input_ids: jax.Array, token_mask: jax.Array, cache: KVCache,
             extra: Any) -> tuple[jax.Array, KVCache]: ...

    def init_cache(self, batch: int, capacity: int) -> KVCache: ...


class DecodeState(NamedTuple):
    """Sampler state between calls: the cache, the last sampled token per row not yet written to it, and the
    model's `extra` pytree (kept for later turns).

    pending: int32[B]; pending_valid: bool[B] (False for rows that had already finished).
    """

    cache: KVCache
    pending: jax.Array
    pending_valid: jax.Array
    extra: Any = None


class SampleOutput(NamedTuple):
    """tokens int32[B,N] (pad after EOS); logprobs float32[B,N] (0 after EOS); lengths int32[B] (incl. EOS)."""

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    state: DecodeState


def sample_logits(logits: jax.Array, rng: jax.Array, temperature: jax.Array,
                  top_p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pick tokens int32[B] from float32 logits [B,V] and return their log-probs float32[B].

    temperature == 0: argmax, log-prob under softmax(logits). temperature > 0: sample from softmax(logits /
    temperature) restricted to the smallest top-p nucleus; log-prob under softmax(logits / temperature) (before the
    nucleus truncation).
    """
    logits = logits.astype(jnp.float32)
    scale = jnp.where(temperature > 0, temperature, 1.0)
    scaled = logits / scale
    logp_all = jax.nn.log_softmax(scaled, axis=-1)

    def nucleus(x: jax.Array) -> jax.Array:
        desc = jnp.sort(x, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(desc, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(x >= threshold, x, -jnp.inf)

    def sample(x: jax.Array) -> jax.Array:
        x = jax.lax.cond(top_p < 1.0, nucleus, lambda y: y, x)
        return jax.random.categorical(rng, x, axis=-1).astype(jnp.int32)

    greedy = lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32)
    tokens = jax.lax.cond(temperature > 0, sample, greedy, scaled)
    return tokens, jnp.take_along_axis(logp_all, tokens[:, None], axis=-1)[:, 0]


def lengths_without_stop(tokens: Any, lengths: Any, eos_ids: Any) -> jax.Array:
    """Reply lengths int32[B] without a final stop token (what a verifier reads; a chat template writes its own
    end-of-turn) from sampled tokens int[B, N] and lengths int[B] that include it; eos_ids: int sequence."""
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    stopped = (lengths > 0) & jnp.isin(last, jnp.asarray(eos_ids))
    return jnp.where(stopped, lengths - 1, lengths).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def append_tokens(model: DecodeModel, params: Any, cache: KVCache, input_ids: jax.Array, token_mask: jax.Array,
                  extra: Any) -> tuple[jax.Array, KVCache]:
    """Prefill / continuation: write int32[B,T] tokens (left-padded chunk) into the donated cache.

    Returns float32 logits [B,V] after the last column and the updated cache.
    """
    return model.step(model.decode_params(params), input_ids, token_mask, cache, extra)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "write_stop_tokens"),
                   donate_argnames=("cache",))
def decode(model: DecodeModel, params: Any, cache: KVCache, extra: Any, logits: jax.Array, rng: jax.Array,
           temperature: jax.Array, top_p: jax.Array, eos_ids: jax.Array, pad_id: jax.Array,
           max_new_tokens: int, active: jax.Array | None = None, write_stop_tokens: bool = True
           ) -> tuple[jax.Array, jax.Array, jax.Array, KVCache, jax.Array, jax.Array]:
    """Sample up to `max_new_tokens` tokens with a `lax.while_loop`, starting from `logits` [B,V] (the prefill's).

    Rows stop after an EOS (any of eos_ids int32[E]); the loop stops when every row has. Rows where `active`
    (bool[B], default all) is False generate nothing (length 0, pending invalid). With write_stop_tokens False, a
    sampled EOS is never written to the cache (pending invalid), so a chat template's own end-of-turn text can
    follow the reply. Returns tokens int32[B,N]
    (pad_id after EOS), log-probs float32[B,N], lengths int32[B], the cache, the pending tokens int32[B] and their
    validity bool[B] (see `DecodeState`).
    """
    batch = logits.shape[0]
    params = model.decode_params(params)
    active = jnp.ones((batch,), bool) if active is None else active
    rng, key = jax.random.split(rng)
    first, first_logp = sample_logits(logits, key, temperature, top_p)
    first = jnp.where(active, first, pad_id)
    first_logp = jnp.where(active, first_logp, 0.0)
    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    logprobs = jnp.zeros((batch, max_new_tokens), jnp.float32).at[:, 0].set(first_logp)
    done = jnp.isin(first, eos_ids) | ~active
    writable = (lambda tok, valid: valid) if write_stop_tokens else (lambda tok, valid: valid & ~jnp.isin(tok, eos_ids))
    carry = (jnp.int32(1), cache, tokens, logprobs, done, active.astype(jnp.int32), first, writable(first, active),
             rng)

    def cond(c):
        return (c[0] < max_new_tokens) & ~jnp.all(c[4])

    def body(c):
        i, cache, tokens, logprobs, done, lengths, pending, pending_valid, rng = c
        step_logits, cache = model.step(params, pending[:, None], pending_valid[:, None], cache, extra)
        rng, key = jax.random.split(rng)
        tok, logp = sample_logits(step_logits, key, temperature, top_p)
        tok = jnp.where(done, pad_id, tok)
        logp = jnp.where(done, 0.0, logp)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
        logprobs = jax.lax.dynamic_update_slice(logprobs, logp[:, None], (0, i))
        active = ~done
        return (i + 1, cache, tokens, logprobs, done | jnp.isin(tok, eos_ids), lengths + active, tok,
                writable(tok, active), rng)

    _, cache, tokens, logprobs, _, lengths, pending, pending_valid, _ = jax.lax.while_loop(cond, body, carry)
    return tokens, logprobs, lengths, cache, pending, pending_valid


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"), donate_argnames=("cache",))
def prefill_and_decode(model: DecodeModel, params: Any, cache: KVCache, input_ids: jax.Array, token_mask: jax.Array,
                       extra: Any, rng: jax.Array, temperature: jax.Array, top_p: jax.Array, eos_ids: jax.Array,
                       pad_id: jax.Array, max_new_tokens: int
                       ) -> tuple[jax.Array, jax.Array, jax.Array, KVCache, jax.Array, jax.Array]:
    """`append_tokens` then `decode` in one jit (the params are prepared by `model.decode_params` once)."""
    params = model.decode_params(params)
    logits, cache = append_tokens(model, params, cache, input_ids, token_mask, extra)
    return decode(model, params, cache, extra, logits, rng, temperature, top_p, eos_ids, pad_id, max_new_tokens)


def grow_cache(cache: KVCache, capacity: int) -> KVCache:
    """Cache with `capacity` slots (>= current), new slots empty and invalid; every array keeps its sharding."""
    extra = capacity - cache.capacity
    if extra <= 0:
        return cache

    def pad(c: KVCache) -> KVCache:
        def pad_slots(x: jax.Array) -> jax.Array:
            widths = [(0, 0)] * x.ndim
            widths[CACHE_SLOT_AXIS] = (0, extra)
            return jnp.pad(x, widths)
        return c._replace(k=jax.tree_util.tree_map(pad_slots, c.k), v=jax.tree_util.tree_map(pad_slots, c.v),
                          valid=jnp.pad(c.valid, [(0, 0), (0, extra)]))
    return jax.jit(pad, out_shardings=jax.tree_util.tree_map(lambda x: x.sharding, cache))(cache)


def _sample(model: DecodeModel, params: Any, cache: KVCache, input_ids: Any, token_mask: Any, extra: Any,
            max_new_tokens: int, temperature: float, top_p: float, seed: int, eos_ids: Sequence[int],
            pad_id: int) -> SampleOutput:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got temperature={temperature}, top_p={top_p}")
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
    tokens, logprobs, lengths, cache, pending, pending_valid = prefill_and_decode(
        model, params, cache, input_ids, token_mask, extra, jax.random.PRNGKey(seed), jnp.float32(temperature),
        jnp.float32(top_p), eos, jnp.int32(pad_id), max_new_tokens)
    state = DecodeState(cache, pending, pending_valid, extra)
    return SampleOutput(to_host(tokens), to_host(logprobs), to_host(lengths), state)


def sample(model: DecodeModel, params: Any, input_ids: Any, attention_mask: Any, *, max_new_tokens: int,
           eos_ids: Sequence[int], pad_id: int, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
           extra: Any = None, capacity: int | None = None) -> SampleOutput:
    """Prefill left-padded prompts int32[B,T] (attention_mask [B,T]) into a fresh cache and sample.

    `capacity` reserves cache slots for later `extend` turns (default: prompt + max_new_tokens, rounded up).
    """
    batch, length = np.shape(input_ids)
    needed = round_up(length + max_new_tokens, CAPACITY_ROUNDING)
    cache = model.init_cache(batch, max(needed, capacity or 0))
    return _sample(model, params, cache, input_ids, attention_mask, extra, max_new_tokens, temperature, top_p,
                   seed, eos_ids, pad_id)


def extend(model: DecodeModel, params: Any, state: DecodeState, input_ids: Any, attention_mask: Any, *,
           max_new_tokens: int, eos_ids: Sequence[int], pad_id: int, temperature: float = 0.0, top_p: float = 1.0,
           seed: int = 0) -> SampleOutput:
    """Continue a conversation: append left-padded tokens int32[B,T] (e.g. a feedback turn) after the pending
    token of `state` and sample again, without re-prefilling earlier turns (state.extra is reused). Grows the cache
    when needed. `state` is consumed (its cache buffers are donated).
    """
    ids = jnp.concatenate([state.pending[:, None], jnp.asarray(input_ids, jnp.int32)], axis=1)
    mask = jnp.concatenate([state.pending_valid[:, None], jnp.asarray(attention_mask).astype(bool)], axis=1)
    cache = state.cache
    needed = int(to_host(cache.index)) + ids.shape[1] + max_new_tokens
    if needed > cache.capacity:
        cache = grow_cache(cache, round_up(needed, CAPACITY_ROUNDING))
    return _sample(model, params, cache, ids, mask, state.extra, max_new_tokens, temperature, top_p, seed, eos_ids,
                   pad_id)
