"""Sequential-revision rollouts of GeneralPoints on the device: one jit, no host round trip between turns.

For a batch of B freshly reset episodes, `rollout` runs up to `turns` (= verify_iter) turns of

    append to the KV cache -> sample a reply (`sampler.decode`) -> reply tokens to bytes -> verify (env.step_batch)
    -> append the revision turn (reply end, 'You failed this trial because {feedback}', generation prompt)

with `lax.scan` over turns and the KV cache carried from turn to turn, so no turn re-prefills the conversation.
Episodes that ended (success, or the last turn) stop generating: their rows are masked.

The conversation a row sees is exactly its cache: the prompt ids (`prompt_tokens.prompt_ids`), each reply's tokens
as sampled, and the revision suffix. When a reply ends with a stop token, the stop token is not written: the chat
template's assistant tail (which starts with the end-of-turn token for ChatML and Llama 3) closes the turn instead.
For templates that trim message contents (Llama 3), the reply stays untrimmed in the cache, while the evaluation
(which re-renders each turn as the reference does) trims it; for ChatML (SmolLM2) both are the same token sequence.

Every token written to the cache is also written, at the same slot, into `slot_tokens`; `compact` turns the slots
into right-padded conversations for teacher-forced scoring. Turn t's reply starts at `reply_start[:, t]` in the
compact conversation (the count of tokens before it), so its value is read at `reply_start - 1`, the last prompt
token, and reply token j is scored by the logits at `reply_start + j - 1`.

Episode ends (a fidelity decision, see ppo.py): success, or `turns` replies without success. The reference
generates one more reply after the budget and scores it -1 (`step_limit_reached`) whatever it says; we do not
generate it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_vlm.envs.general_points import env as gp_env
from jaxrl_vlm.envs.general_points import prompt_tokens
from jaxrl_vlm.envs.general_points.token_bytes import tokens_to_bytes
from jaxrl_vlm.models import sampler


@dataclasses.dataclass(frozen=True)
class RolloutShapes:
    """Static sizes of a rollout: turns per episode, new tokens per reply, and the token widths of the first
    prompt and of a revision suffix. The KV cache holds the worst case, `capacity` slots."""

    turns: int
    max_new_tokens: int
    prompt_width: int
    suffix_width: int

    @property
    def chunk_width(self) -> int:
        """Width of a revision chunk: the pending last reply token plus the suffix."""
        return 1 + self.suffix_width

    @property
    def capacity(self) -> int:
        """KV-cache slots for the longest possible episode."""
        return self.prompt_width + self.max_new_tokens + (self.turns - 1) * (self.chunk_width + self.max_new_tokens)


class Episodes(NamedTuple):
    """A batch of B rolled-out episodes of up to T turns (replies of up to N tokens); device arrays.

    slot_tokens int32[B, C] and slot_valid bool[B, C]: the token at every KV-cache slot and whether the slot holds
    one. reply_tokens int32[B, T, N] (pad after the reply), reply_len int32[B, T] (incl. a final stop token),
    reply_start int32[B, T] (tokens before the reply in the compact conversation), sample_logp float32[B, T, N]
    (the sampler's log-probs, at the sampling temperature), reward float32[B, T], turn_valid bool[B, T] (the turn
    was played), success bool[B], overflow bool[B] (a revision suffix did not fit suffix_width: the episode ended
    there, as a failure, instead of continuing with a cut-off turn).
    """

    slot_tokens: jax.Array
    slot_valid: jax.Array
    reply_tokens: jax.Array
    reply_len: jax.Array
    reply_start: jax.Array
    sample_logp: jax.Array
    reward: jax.Array
    turn_valid: jax.Array
    success: jax.Array
    overflow: jax.Array


def suffix_width(codec: prompt_tokens.PromptCodec, feedback_tokens: int) -> int:
    """Token width of a revision suffix with up to feedback_tokens tokens of verifier feedback: assistant tail,
    feedback prefix, feedback and user tail."""
    return prompt_tokens.revision_overhead(codec) + feedback_tokens


def revision_suffix(codec: prompt_tokens.PromptCodec, fragments: jax.Array, num_fragments: jax.Array,
                    width: int, pad_id: int) -> prompt_tokens.TokenBatch:
    """Left-padded ids int32[B, width] of what follows a reply: assistant tail + 'You failed this trial because '
    + the feedback fragments int32[B, K] (num_fragments int32[B] of them) + the user tail / generation prompt."""
    batch = fragments.shape[0]
    empty = prompt_tokens.TokenBatch(jnp.zeros((batch, 1), jnp.int32), jnp.zeros((batch,), jnp.int32),
                                     jnp.zeros((batch,), bool))
    return prompt_tokens.append_revision(codec, empty, jnp.zeros((batch, 1), jnp.int32),
                                         jnp.zeros((batch,), jnp.int32), fragments, num_fragments, width=width,
                                         pad_id=pad_id, padding_side="left")


class _Carry(NamedTuple):
    cache: Any
    slot_tokens: jax.Array
    env_state: Any
    pending: jax.Array
    pending_valid: jax.Array
    rng: jax.Array
    overflow: jax.Array


class _Turn(NamedTuple):
    tokens: jax.Array
    logp: jax.Array
    length: jax.Array
    start: jax.Array
    reward: jax.Array
    played: jax.Array


@functools.partial(jax.jit, static_argnames=("decoder", "shapes", "pad_id"))
def rollout(decoder: sampler.DecodeModel, params: Any, codec: prompt_tokens.PromptCodec, env_params: gp_env.EnvParams,
            byte_table: Any, env_state: gp_env.EnvState, prompt: prompt_tokens.TokenBatch, extra: Any,
            rng: jax.Array, temperature: jax.Array, top_p: jax.Array, eos_ids: jax.Array, *,
            shapes: RolloutShapes, pad_id: int) -> Episodes:
    """Roll out B episodes from reset env states (leaves [B, ...]) and their first prompts (left-padded
    TokenBatch of width shapes.prompt_width). extra: the decoder's per-batch state (Mllama image K/V, else None).
    temperature/top_p: float32[] sampling settings (temperature 0 = greedy); eos_ids int32[E]. Pure and jittable."""
    batch, width = prompt.ids.shape
    if width != shapes.prompt_width:
        raise ValueError(f"prompt width {width} != shapes.prompt_width {shapes.prompt_width}")
    n = shapes.max_new_tokens
    params = decoder.decode_params(params)
    cache = decoder.init_cache(batch, shapes.capacity)
    slot_tokens = jnp.zeros((batch, shapes.capacity + max(n, shapes.chunk_width)), jnp.int32)

    def generate(cache, slot_tokens, logits, rng, env_state):
        """Sample replies of the still-running rows after a prefill whose last logits are `logits`."""
        start = jnp.sum(cache.valid, axis=1, dtype=jnp.int32)
        index = cache.index
        rng, key = jax.random.split(rng)
        tokens, logp, length, cache, pending, pending_valid = sampler.decode(
            decoder, params, cache, extra, logits, key, temperature, top_p, eos_ids, jnp.int32(pad_id), n,
            active=~env_state.done, write_stop_tokens=False)
        slot_tokens = jax.lax.dynamic_update_slice(slot_tokens, tokens, (0, index))
        text_len = sampler.lengths_without_stop(tokens, length, eos_ids)
        reply_bytes, byte_len = tokens_to_bytes(tokens, text_len, byte_table)
        played = ~env_state.done
        _, env_state, reward, _, info = gp_env.step_batch(env_state, reply_bytes, byte_len, env_params)
        turn = _Turn(tokens, logp, length, start, jnp.where(played, reward, 0.0), played)
        return cache, slot_tokens, env_state, pending, pending_valid, rng, info, turn

    mask = jnp.arange(width)[None, :] >= width - prompt.lengths[:, None]
    logits, cache = decoder.step(params, prompt.ids, mask, cache, extra)
    slot_tokens = jax.lax.dynamic_update_slice(slot_tokens, prompt.ids, (0, 0))
    cache, slot_tokens, env_state, pending, pending_valid, rng, info, first = generate(
        cache, slot_tokens, logits, rng, env_state)

    def next_turn(carry: tuple[_Carry, Any]) -> tuple[tuple[_Carry, Any], _Turn]:
        c, info = carry
        suffix = revision_suffix(codec, info["fragments"], info["num_fragments"], shapes.suffix_width, pad_id)
        overflow = suffix.overflow & ~c.env_state.done
        env_state = c.env_state.replace(done=c.env_state.done | overflow)
        live = ~env_state.done
        write_pending = c.pending_valid & live
        suffix_mask = (jnp.arange(shapes.suffix_width)[None, :] >= shapes.suffix_width - suffix.lengths[:, None])
        ids = jnp.concatenate([c.pending[:, None], suffix.ids], axis=1)
        chunk_mask = jnp.concatenate([write_pending[:, None], suffix_mask & live[:, None]], axis=1)
        slot_tokens = jax.lax.dynamic_update_slice(c.slot_tokens, ids, (0, c.cache.index))
        logits, cache = decoder.step(params, ids, chunk_mask, c.cache, extra)
        cache, slot_tokens, env_state, pending, pending_valid, rng, info, turn = generate(
            cache, slot_tokens, logits, c.rng, env_state)
        carry = _Carry(cache, slot_tokens, env_state, pending, pending_valid, rng, c.overflow | overflow)
        return (carry, info), turn

    def skip(carry: tuple[_Carry, Any]) -> tuple[tuple[_Carry, Any], _Turn]:
        zeros_i = jnp.zeros((batch,), jnp.int32)
        empty = _Turn(jnp.full((batch, n), pad_id, jnp.int32), jnp.zeros((batch, n), jnp.float32), zeros_i, zeros_i,
                      jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), bool))
        return carry, empty

    def body(carry, _):
        return jax.lax.cond(jnp.all(carry[0].env_state.done), skip, next_turn, carry)

    carry = _Carry(cache, slot_tokens, env_state, pending, pending_valid, rng, jnp.zeros((batch,), bool))
    (carry, _), later = jax.lax.scan(body, (carry, info), None, length=shapes.turns - 1)
    turns = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], axis=0), first, later)
    to_batch_major = lambda x: jnp.moveaxis(x, 0, 1)
    return Episodes(
        slot_tokens=carry.slot_tokens[:, :shapes.capacity], slot_valid=carry.cache.valid,
        reply_tokens=to_batch_major(turns.tokens), reply_len=to_batch_major(turns.length),
        reply_start=to_batch_major(turns.start), sample_logp=to_batch_major(turns.logp),
        reward=to_batch_major(turns.reward), turn_valid=to_batch_major(turns.played),
        success=carry.env_state.success, overflow=carry.overflow)


def compact(slot_tokens: jax.Array, slot_valid: jax.Array, width: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Right-padded conversations (ids int32[B, width], mask bool[B, width]) from cache slots int32[B, C] / bool[B, C]
    (valid slots kept in order). width must be >= the longest conversation."""
    order = jnp.argsort(~slot_valid, axis=1, stable=True)[:, :width]
    ids = jnp.take_along_axis(slot_tokens, order, axis=1)
    mask = jnp.arange(width)[None, :] < jnp.sum(slot_valid, axis=1, keepdims=True)
    return jnp.where(mask, ids, pad_id), mask
