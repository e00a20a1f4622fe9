"""Multi-turn rollouts of any `envs.protocol.Environment` on the device: one jit, no host round trip between turns.

For a batch of B reset episodes, `rollout` runs up to `env.conversations` conversations per episode (`lax.scan`),
each of up to `env.turns` replies (an inner `lax.scan`), with the KV cache carried from turn to turn:

    prefill env.prompt(state) (in chunks, skipping all-padding ones) -> [sample a reply (`sampler.decode`) -> reply
    tokens to bytes -> env.step -> append the pending reply token and step.feedback_ids] x turns -> the budget's
    forced step

Every conversation starts from an empty cache (GeneralPoints has one conversation per episode; V-IRL one per route
point, spec virl.md §1.9). Image tasks (`env.vision`) show one image per conversation: at its opening the rollout
renders `env.image` of every row's state (in chunks of IMAGE_CHUNK) and the decoder turns them into its `extra`
(`decoder.image_extra`: Mllama preprocesses, encodes and computes the cross-attention K/V on the device), so a
V-IRL-VL route sees a new 2x2 view grid at every point without leaving the jit. Conversations are synchronous across
rows: a row whose step says `fresh` (a correct V-IRL move) waits, masked, until the others finish the conversation,
then every running row opens its next one. Rows that are done stop generating; a conversation round that no row
needs is skipped (`lax.cond`).

The conversation a row sees is exactly its cache: the prompt ids, each reply's tokens as sampled, and the feedback.
When a reply ends with a stop token, the stop token is not written: the chat template's assistant tail (which starts
with the end-of-turn token for ChatML and Llama 3) closes the turn instead.

Chat templates that trim message contents (Llama 3's `| trim`) render an earlier reply trimmed when the reference
re-renders the conversation for the next turn. `trim` (a `chat.ReplyTrim`) does that on the device: before a
continuation the reply's slots are marked invalid and its trimmed ids are written after them with the feedback, so
the next reply sees exactly the re-rendered conversation (positions follow the valid slots). Evaluation uses it for
such templates; PPO does not (it scores each reply in the conversation it was sampled in, one sequence per
conversation, which needs the replies as sampled in the cache).

Every token written to the cache is also written, at the same slot, into `slot_tokens`; `compact` turns the slots
into right-padded conversations for teacher-forced scoring. Turn t's reply starts at `reply_start[..., t]` in the
compact conversation (the count of tokens before it), so its value is read at `reply_start - 1`, the last prompt
token, and reply token j is scored by the logits at `reply_start + j - 1`. (With `trim`, the slots hold each
conversation's final re-rendered form, in which only the last reply is as sampled.)

Budget (a fidelity decision, see ppo.py): after `turns` replies without `done` or `fresh`, the env's forced step is
called with an empty reply instead of generating one more reply (the reference generates it and ignores it). A
prompt or feedback that does not fit its width ends the episode there, as a failure (`overflow`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.chat import MAX_STRIP_PIECE, ReplyTrim, left_padded, trim_reply
from jaxrl_vlm.models import sampler
from jaxrl_vlm.models.token_bytes import tokens_to_bytes
from jaxrl_vlm.shapes import round_up

PREFILL_CHUNK = 128  # prompt columns written per prefill step; chunks that are padding in every row are skipped
IMAGE_CHUNK = 8  # images rendered at a time (a renderer's temporaries scale with it)


@dataclasses.dataclass(frozen=True)
class RolloutShapes:
    """Static sizes of a conversation: replies per conversation, new tokens per reply, and the token widths of the
    opening prompt and of a feedback turn. The KV cache holds the worst case, `capacity` slots."""

    turns: int
    max_new_tokens: int
    prompt_width: int
    feedback_width: int
    trim: bool = False

    @property
    def chunk_width(self) -> int:
        """Width of a continuation chunk: the pending last reply token (re-rendering: the whole trimmed reply) plus
        the feedback."""
        reply = self.max_new_tokens + 2 * MAX_STRIP_PIECE if self.trim else 1
        return reply + self.feedback_width

    @property
    def capacity(self) -> int:
        """KV-cache slots for the longest possible conversation."""
        return self.prompt_width + self.max_new_tokens + (self.turns - 1) * (self.chunk_width + self.max_new_tokens)


def rollout_shapes(env: protocol.Environment, max_new_tokens: int, trim: bool = False) -> RolloutShapes:
    """The conversation sizes of an env for replies of up to max_new_tokens tokens (the prompt width as prefilled:
    a multiple of PREFILL_CHUNK when wider than one chunk); trim: replies re-rendered trimmed (`rollout`'s trim)."""
    width = env.prompt_width if env.prompt_width <= PREFILL_CHUNK else round_up(env.prompt_width, PREFILL_CHUNK)
    return RolloutShapes(env.turns, max_new_tokens, width, env.feedback_width, trim)


class Episodes(NamedTuple):
    """B rolled-out episodes of up to R conversations of up to T turns (replies of up to N tokens); device arrays.

    slot_tokens int32[B, R, C] and slot_valid bool[B, R, C]: each conversation's token at every KV-cache slot and
    whether the slot holds one. reply_tokens int32[B, R, T, N] (pad after the reply), reply_len int32[B, R, T]
    (incl. a final stop token), reply_start int32[B, R, T] (tokens before the reply in the compact conversation),
    sample_logp float32[B, R, T, N] (the sampler's log-probs, at the sampling temperature), reward float32[B, R, T],
    turn_valid bool[B, R, T] (the turn was played), success bool[B], overflow bool[B] (a prompt or feedback did
    not fit its width: the episode ended there, as a failure), counts {rate: (hits int32[B], trials int32[B])}
    summed over the episode's env steps (forced steps included), outcomes int32[B, K]: replies per verdict of
    `env.outcome_names` (K of them; they sum to the played turns), state: the final env states,
    conversation_state: image tasks, the env state at each conversation's opening (leaves [B, R, ...]: what its
    image is rendered from), else None.
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
    counts: dict[str, tuple[jax.Array, jax.Array]]
    outcomes: jax.Array
    state: Any
    conversation_state: Any = None


class _Progress(NamedTuple):
    """Per-episode carry across conversations: env state, done, success, overflow, counts, outcomes."""

    state: Any
    done: jax.Array
    success: jax.Array
    overflow: jax.Array
    counts: dict[str, tuple[jax.Array, jax.Array]]
    outcomes: jax.Array


class _Turn(NamedTuple):
    tokens: jax.Array
    logp: jax.Array
    length: jax.Array
    start: jax.Array
    reward: jax.Array
    played: jax.Array


def _where_rows(rows: jax.Array, new: Any, old: Any) -> Any:
    """Per leaf: new where rows (bool[B]) else old."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(rows.reshape(rows.shape + (1,) * (a.ndim - 1)), a, b),
                                  new, old)


def _apply_step(env, env_params, progress: _Progress, rows: jax.Array, reply: jax.Array, reply_len: jax.Array):
    """env.step for the rows (bool[B]) only; (progress, step outputs)."""
    stepped, out = protocol.step_batch(env, progress.state, reply, reply_len, env_params)
    counts = {name: (hits + (rows & out.counts[name][0]).astype(jnp.int32),
                     trials + (rows & out.counts[name][1]).astype(jnp.int32))
              for name, (hits, trials) in progress.counts.items()}
    outcomes = progress.outcomes + (rows[:, None] & (out.outcome[:, None] == jnp.arange(
        progress.outcomes.shape[1]))).astype(jnp.int32)
    progress = _Progress(state=_where_rows(rows, stepped, progress.state), done=progress.done | (rows & out.done),
                         success=jnp.where(rows, out.success, progress.success), overflow=progress.overflow,
                         counts=counts, outcomes=outcomes)
    return progress, out


def slot_layout(ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Left-padded prompts int32[B, W] (mask bool[B, W]) in the order `rollout`'s prefill writes them to cache slots:
    chunks of PREFILL_CHUNK columns that are padding in every row are skipped, so the written chunks come first."""
    width = ids.shape[1]
    if width <= PREFILL_CHUNK:
        return ids
    extra_cols = -width % PREFILL_CHUNK
    ids = jnp.pad(ids, ((0, 0), (extra_cols, 0)))
    mask = jnp.pad(mask, ((0, 0), (extra_cols, 0)))
    chunks = ids.reshape(ids.shape[0], -1, PREFILL_CHUNK)
    written = jnp.any(mask.reshape(chunks.shape), axis=(0, 2)).at[-1].set(True)
    order = jnp.argsort(~written, stable=True)
    return jnp.take(chunks, order, axis=1).reshape(ids.shape)


@functools.partial(jax.jit, static_argnames=("env", "decoder", "max_new_tokens", "pad_id"))
def rollout(env: protocol.Environment, decoder: sampler.DecodeModel, params: Any, env_params: Any, byte_table: Any,
            env_state: Any, rng: jax.Array, temperature: jax.Array, top_p: jax.Array, eos_ids: jax.Array,
            trim: ReplyTrim | None = None, *, max_new_tokens: int, pad_id: int) -> Episodes:
    """Roll out B episodes from reset env states (leaves [B, ...]). byte_table: `token_bytes.token_byte_table` of
    the tokenizer. temperature/top_p: float32[] sampling settings (temperature 0 = greedy); eos_ids int32[E]. Image
    tasks need a decoder with `image_extra(params, images uint8[B, H, W, 3], slot ids int32[B, S]) -> extra`.
    trim: re-render each continued conversation's replies as a template that trims contents does (`chat.ReplyTrim`
    of the tokenizer); None: continue the cache with the replies as sampled. Pure and jittable."""
    if env.vision and not hasattr(decoder, "image_extra"):
        raise ValueError(f"the task shows images: its decoder {type(decoder).__name__} has no image_extra")
    shapes = rollout_shapes(env, max_new_tokens, trim is not None)
    batch = jax.tree_util.tree_leaves(env_state)[0].shape[0]
    n = max_new_tokens
    stored_params, params = params, decoder.decode_params(params)
    empty_counts = {name: (jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32)) for name in env.count_names}
    # the forced step's reply: real replies' width; behind a barrier so XLA does not constant-fold the verifier on it
    reply_width = n * byte_table.bytes.shape[1]  # every reply token at the table's longest byte string
    if env.max_reply_bytes is not None:
        reply_width = min(reply_width, env.max_reply_bytes)
    empty_reply = jax.lax.optimization_barrier((jnp.zeros((batch, reply_width), jnp.uint8),
                                                jnp.zeros((batch,), jnp.int32)))
    no_turn = _Turn(jnp.full((batch, n), pad_id, jnp.int32), jnp.zeros((batch, n), jnp.float32),
                    jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.float32),
                    jnp.zeros((batch,), bool))

    def generate(cache, slot_tokens, logits, rng, progress, live, extra):
        """Sample the live rows' replies after a prefill whose last logits are `logits`, and step the env."""
        start = jnp.sum(cache.valid, axis=1, dtype=jnp.int32)
        index = cache.index
        rng, key = jax.random.split(rng)
        tokens, logp, length, cache, pending, pending_valid = sampler.decode(
            decoder, params, cache, extra, logits, key, temperature, top_p, eos_ids, jnp.int32(pad_id), n,
            active=live, write_stop_tokens=False)
        slot_tokens = jax.lax.dynamic_update_slice(slot_tokens, tokens, (0, index))
        text_len = sampler.lengths_without_stop(tokens, length, eos_ids)
        reply_bytes, byte_len = tokens_to_bytes(tokens, text_len, byte_table, reply_width)
        progress, out = _apply_step(env, env_params, progress, live, reply_bytes, byte_len)
        turn = _Turn(tokens, logp, length, start, jnp.where(live, out.reward, 0.0), live)
        follows = live & ~out.done & ~out.fresh  # the conversation goes on with this row
        return cache, slot_tokens, rng, progress, out, follows, turn, (pending, pending_valid, tokens, text_len, index)

    def reply_chunk(cache, reply, live):
        """(cache, ids, mask) of what opens a continuation of the live rows: the pending last reply token, or with
        `trim` the reply's ids as the template renders it (trimmed), its sampled slots given up for them."""
        pending, pending_valid, tokens, text_len, index = reply
        if trim is None:
            return cache, pending[:, None], (pending_valid & live)[:, None]
        slots = jnp.arange(cache.valid.shape[1])
        dropped = live[:, None] & cache.valid & (slots >= index) & (slots < index + n)
        cache = cache._replace(valid=cache.valid & ~dropped,
                               next_pos=cache.next_pos - jnp.sum(dropped, axis=1, dtype=jnp.int32))
        trimmed, trimmed_len = jax.vmap(lambda r, k: trim_reply(trim, r, k))(tokens, text_len)
        ids, mask = left_padded(trimmed, trimmed_len, pad_id)
        return cache, ids, mask & live[:, None]

    def write(cache, slot_tokens, ids, mask, extra):
        slot_tokens = jax.lax.dynamic_update_slice(slot_tokens, ids, (0, cache.index))
        logits, cache = decoder.step(params, ids, mask, cache, extra)
        return logits, cache, slot_tokens

    def prefill(cache, slot_tokens, ids, mask, extra):
        """Write left-padded prompts in chunks of PREFILL_CHUNK columns, skipping chunks that are padding in every
        row (the prompt width is the task's worst case; real prompts are often much shorter)."""
        width = ids.shape[1]
        if width <= PREFILL_CHUNK:
            return write(cache, slot_tokens, ids, mask, extra)
        extra_cols = -width % PREFILL_CHUNK
        ids = jnp.pad(ids, ((0, 0), (extra_cols, 0)), constant_values=pad_id)
        mask = jnp.pad(mask, ((0, 0), (extra_cols, 0)))
        chunks = lambda x: jnp.moveaxis(x[:, :-PREFILL_CHUNK].reshape(batch, -1, PREFILL_CHUNK), 1, 0)

        def chunk(carry, xs):
            c_ids, c_mask = xs
            carry = jax.lax.cond(jnp.any(c_mask), lambda c: write(*c, c_ids, c_mask, extra)[1:], lambda c: c,
                                 carry)
            return carry, None

        (cache, slot_tokens), _ = jax.lax.scan(chunk, (cache, slot_tokens), (chunks(ids), chunks(mask)))
        return write(cache, slot_tokens, ids[:, -PREFILL_CHUNK:], mask[:, -PREFILL_CHUNK:], extra)

    def conversation(progress: _Progress, rng: jax.Array):
        prompt = protocol.prompt_batch(env, progress.state, env_params)
        live = ~progress.done & ~prompt.overflow
        ended = ~progress.done & prompt.overflow
        progress = progress._replace(done=progress.done | ended, overflow=progress.overflow | ended)
        ids, mask = left_padded(prompt.ids, prompt.length, pad_id)
        mask = mask & live[:, None]
        extra = None
        if env.vision:
            images = protocol.image_batch(env, progress.state, env_params, chunk=IMAGE_CHUNK)
            extra = decoder.image_extra(stored_params, images, slot_layout(ids, mask))
        cache = decoder.init_cache(batch, shapes.capacity)
        slot_tokens = jnp.zeros((batch, shapes.capacity + max(n, shapes.chunk_width)), jnp.int32)
        logits, cache, slot_tokens = prefill(cache, slot_tokens, ids, mask, extra)
        cache, slot_tokens, rng, progress, out, follows, first, pending = generate(
            cache, slot_tokens, logits, rng, progress, live, extra)

        def next_turn(carry):
            cache, slot_tokens, rng, progress, out, follows, reply = carry
            overflow = follows & out.feedback_overflow
            progress = progress._replace(done=progress.done | overflow, overflow=progress.overflow | overflow)
            live = follows & ~overflow
            feedback, feedback_mask = left_padded(out.feedback_ids, out.feedback_len, pad_id)
            cache, head, head_mask = reply_chunk(cache, reply, live)
            chunk = jnp.concatenate([head, feedback], axis=1)
            chunk_mask = jnp.concatenate([head_mask, feedback_mask & live[:, None]], axis=1)
            logits, cache, slot_tokens = write(cache, slot_tokens, chunk, chunk_mask, extra)
            cache, slot_tokens, rng, progress, out, follows, turn, pending = generate(
                cache, slot_tokens, logits, rng, progress, live, extra)
            return (cache, slot_tokens, rng, progress, out, follows, pending), turn

        def body(carry, _):
            return jax.lax.cond(jnp.any(carry[5]), next_turn, lambda c: (c, no_turn), carry)

        carry = (cache, slot_tokens, rng, progress, out, follows, pending)
        (cache, slot_tokens, rng, progress, _, follows, _), later = jax.lax.scan(
            body, carry, None, length=shapes.turns - 1)
        progress, _ = _apply_step(env, env_params, progress, follows, *empty_reply)
        turns = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], axis=0), first, later)
        return progress, (slot_tokens[:, :shapes.capacity], cache.valid, turns)

    def skipped(progress: _Progress, rng: jax.Array):
        turns = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (shapes.turns, *x.shape)), no_turn)
        return progress, (jnp.zeros((batch, shapes.capacity), jnp.int32), jnp.zeros((batch, shapes.capacity), bool),
                          turns)

    def round_(progress, key):
        opening = progress.state if env.vision else None
        progress, out = jax.lax.cond(jnp.all(progress.done), skipped, conversation, progress, key)
        return progress, (out, opening)

    progress = _Progress(env_state, jnp.zeros((batch,), bool), jnp.zeros((batch,), bool), jnp.zeros((batch,), bool),
                         empty_counts, jnp.zeros((batch, len(env.outcome_names)), jnp.int32))
    progress, ((slots, valid, turns), opening) = jax.lax.scan(round_, progress,
                                                               jax.random.split(rng, env.conversations))
    rounds_first = lambda x: jnp.moveaxis(x, 0, 1)  # [R, B, ...] -> [B, R, ...]
    turns_inner = lambda x: jnp.moveaxis(x, (0, 1, 2), (1, 2, 0))  # [R, T, B, ...] -> [B, R, T, ...]
    return Episodes(
        slot_tokens=rounds_first(slots), slot_valid=rounds_first(valid), reply_tokens=turns_inner(turns.tokens),
        reply_len=turns_inner(turns.length), reply_start=turns_inner(turns.start),
        sample_logp=turns_inner(turns.logp), reward=turns_inner(turns.reward), turn_valid=turns_inner(turns.played),
        success=progress.success, overflow=progress.overflow, counts=progress.counts, outcomes=progress.outcomes,
        state=progress.state,
        conversation_state=jax.tree_util.tree_map(rounds_first, opening))


def compact(slot_tokens: jax.Array, slot_valid: jax.Array, width: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Right-padded conversations (ids int32[E, width], mask bool[E, width]) from cache slots int32[E, C] / bool[E, C]
    (valid slots kept in order). width must be >= the longest conversation."""
    order = jnp.argsort(~slot_valid, axis=1, stable=True)[:, :width]
    ids = jnp.take_along_axis(slot_tokens, order, axis=1)
    mask = jnp.arange(width)[None, :] < jnp.sum(slot_valid, axis=1, keepdims=True)
    return jnp.where(mask, ids, pad_id), mask
