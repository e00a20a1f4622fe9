"""The PPO update over a batch of rolled-out episodes, all inside one jit (spec training.md §4).

`make_ppo_update(...)` builds `update(state, batch, rng) -> (state, metrics)`:
1. score every reply with the current params (teacher forcing over the whole conversation): the reply log-prob
   (temperature-scaled, thought/action split, `ppo_math.reply_logprob`) and the value at the last prompt token;
   these are the old log-probs and values, as the reference scores right after generating;
2. GAE (gamma, lambda) per episode over its transitions in time order (one per reply, across the episode's
   conversations: a V-IRL route has one per route point), with the episode's end terminal; advantages normalised
   over the valid turns of the batch;
3. `epochs` passes over the conversations, each shuffled and cut into `minibatches`; one optimizer step per
   mini-batch, its gradient accumulated exactly over `micro_batches` (a scan) to bound activation memory.

Fidelity decisions (the reference: mini-batches of one transition, 128 accumulated per optimizer step):
- A sample is a conversation, not a transition: the turns of one conversation share one forward pass (each turn's
  reply is scored in the context it was sampled in), so they always fall in the same mini-batch. The loss is the
  mean over the valid turns of a mini-batch, as the reference's mean over its 128 accumulated transitions.
- The episode's last turn is terminal (no bootstrap): batches hold whole episodes, so there is no next episode to
  bootstrap into (the reference's GAE bootstraps across episode boundaries, training.md §4.3).
- Optional KL penalty to a reference policy (kl_coef * the k3 estimate `ppo_math.kl_penalty` over turns, logged
  as `kl_ref`) and entropy bonus (entropy_coef * the mean per-token entropy of the replies, logged as `entropy`),
  both off by default as in the reference.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxrl_vlm.models import llama
from jaxrl_vlm.models.sharding import shard_tree
from jaxrl_vlm.training import ppo_math
from jaxrl_vlm.training.policy import PolicyModel
from jaxrl_vlm.training.sft_step import TrainState


@dataclasses.dataclass(frozen=True)
class PPOHyper:
    """PPO settings (static under jit). Defaults: the reference's (training.md §4.6), ratio guard included."""

    epochs: int = 4
    minibatches: int = 2
    micro_batches: int = 1
    clip: float = 0.1
    value_coef: float = 0.5
    gamma: float = 0.9
    lam: float = 0.95
    temperature: float = 0.2
    thought_coef: float = 0.5
    ratio_guard: float | None = 10.0
    kl_coef: float = 0.0
    entropy_coef: float = 0.0


class PPOBatch(NamedTuple):
    """E conversations of up to T turns (replies of up to N tokens), right-padded to L tokens.

    ids int32[E, L], mask bool[E, L]; reply_tokens int32[E, T, N]; reply_len, reply_start int32[E, T];
    turn_valid bool[E, T]; reward float32[E, T]; vision: None or Mllama arrays with leading E (pixel_values,
    aspect_ratio_ids, aspect_ratio_mask, cross_attention_mask int32[E, L, M, tiles]); ref_logp: float32[E, T]
    reply log-probs under the reference policy (only when kl_coef > 0), else None; episode: int32[E] the episode of
    each conversation (rows of an episode consecutive, in time order: GAE runs over them) or None (one conversation
    per episode).
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


class ReplyScores(NamedTuple):
    """float32[E, T] each: reply log-prob (0.5 thought + action), value at the last prompt token, mean token entropy."""

    logp: jax.Array
    value: jax.Array
    entropy: jax.Array


def init_ppo_params(policy_params: Any, hidden_size: int, rng: jax.Array, dtype: Any = jnp.float32,
                    mesh: Mesh | None = None) -> dict[str, Any]:
    """{'policy': the model's params, 'value': a fresh value head (hidden -> 1024 -> 512 -> 1) in dtype}; on `mesh`
    the value head is sharded by its logical axes (`llama.value_head_logical_axes`)."""
    value = llama.init_value_head(rng, hidden_size, dtype)
    if mesh is not None:
        value = shard_tree(value, llama.value_head_logical_axes(), mesh)
    return {"policy": policy_params, "value": value}


def score_replies(policy: PolicyModel, params: dict[str, Any], batch: PPOBatch, pattern: jax.Array,
                  hyper: PPOHyper, with_entropy: bool = False) -> ReplyScores:
    """Teacher-forced scores of every turn of every episode (see ReplyScores). params: {'policy': ..., 'value': ...}
    (without 'value' the values are 0); pattern int32[P]: the action key's token ids (e.g. ` "formula":`)."""
    e, t, n = batch.reply_tokens.shape
    length = batch.ids.shape[1]
    vision = batch.vision or {}
    cross = policy.encode_images(params["policy"], {k: v for k, v in vision.items() if k != "cross_attention_mask"},
                                 vision.get("cross_attention_mask"))
    hidden = policy.hidden(params["policy"], batch.ids, batch.mask, cross)
    positions = jnp.clip(batch.reply_start[..., None] + jnp.arange(n) - 1, 0, length - 1).reshape(e, t * n)
    reply_hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
    logits = policy.logits(params["policy"], reply_hidden).reshape(e * t, n, -1)
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


def advantages_and_returns(reward: jax.Array, value: jax.Array, turn_valid: jax.Array, episode: jax.Array | None,
                           gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """GAE over each episode's transitions (float32[E, T] in, float32[E, T] advantages and returns out).

    Rows are conversations in episode order (episode int32[E]: the episode of each row, rows of one episode
    consecutive and in time order; None: every row is its own episode); an episode's transitions are its rows'
    valid turns, in row-major order, and its last one is terminal. Advantages are normalised over the valid turns;
    invalid turns get 0.
    """
    e, t = reward.shape
    episode = jnp.arange(e, dtype=jnp.int32) if episode is None else episode
    valid = turn_valid.reshape(-1)
    order = jnp.argsort(~valid, stable=True)  # valid transitions first, in time order
    owner = jnp.repeat(episode, t)[order]
    live = valid[order]
    following_owner = jnp.concatenate([owner[1:], jnp.full((1,), -1, owner.dtype)])
    following_live = jnp.concatenate([live[1:], jnp.zeros((1,), bool)])
    dones = ~live | ~following_live | (following_owner != owner)
    flat = lambda x: (x.reshape(-1) * valid)[order][:, None]
    adv, ret = ppo_math.gae(flat(reward), flat(value), dones[:, None], jnp.zeros((1,), jnp.float32), gamma=gamma,
                            lam=lam)
    unsort = lambda x: jnp.zeros((e * t,), jnp.float32).at[order].set(x[:, 0]).reshape(e, t)
    adv, ret = unsort(adv), unsort(ret)
    return ppo_math.normalize_advantages(adv, turn_valid), ret * turn_valid


def _split(tree: Any, parts: int) -> Any:
    def split(x):
        if x.shape[0] % parts:
            raise ValueError(f"{x.shape[0]} episodes are not divisible into {parts} parts")
        return x.reshape(parts, x.shape[0] // parts, *x.shape[1:])
    return jax.tree_util.tree_map(split, tree)


def _score_in_chunks(policy, params, batch, pattern, hyper, chunks: int) -> ReplyScores:
    """score_replies over `chunks` sequential slices of the episodes (bounded memory), without gradients."""
    scored = jax.lax.map(lambda part: score_replies(policy, params, part, pattern, hyper), _split(batch, chunks))
    return jax.tree_util.tree_map(lambda x: jax.lax.stop_gradient(x.reshape(-1, *x.shape[2:])), scored)


def make_ppo_update(policy: PolicyModel, tx: optax.GradientTransformation, hyper: PPOHyper, pattern: jax.Array):
    """Build the pure `update(state: TrainState, batch: PPOBatch, rng) -> (TrainState, metrics)`; jit it with the
    state donated. state.params is `init_ppo_params`'s {'policy', 'value'} pytree."""
    if hyper.epochs < 1 or hyper.minibatches < 1 or hyper.micro_batches < 1:
        raise ValueError(f"epochs, minibatches and micro_batches must be >= 1, got {hyper}")
    with_entropy = hyper.entropy_coef > 0

    def loss_fn(params, micro: dict[str, Any], total_turns: jax.Array):
        scores = score_replies(policy, params, micro["batch"], pattern, hyper, with_entropy)
        valid = micro["batch"].turn_valid.reshape(-1)
        losses = ppo_math.ppo_losses(scores.logp.reshape(-1), micro["old_logp"].reshape(-1),
                                     micro["advantages"].reshape(-1), scores.value.reshape(-1),
                                     micro["old_value"].reshape(-1), micro["returns"].reshape(-1), valid,
                                     clip=hyper.clip, value_coef=hyper.value_coef, ratio_guard=hyper.ratio_guard)
        count = jnp.sum(valid.astype(jnp.float32))
        kl = entropy = jnp.float32(0.0)
        if hyper.kl_coef > 0:
            kl = ppo_math.kl_penalty(scores.logp.reshape(-1), micro["batch"].ref_logp.reshape(-1), valid)
        if with_entropy:
            entropy = jnp.sum(scores.entropy.reshape(-1) * valid) / jnp.maximum(count, 1.0)
        total = losses.total + hyper.kl_coef * kl - hyper.entropy_coef * entropy
        weight = count / jnp.maximum(total_turns, 1.0)
        parts = jnp.stack([losses.policy, losses.value, losses.clip_fraction, losses.approx_kl, kl, entropy]) * weight
        return total * weight, parts

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def minibatch_step(state: TrainState, minibatch: dict[str, Any]):
        total_turns = jnp.sum(minibatch["batch"].turn_valid.astype(jnp.float32))
        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)

        def accumulate(carry, micro):
            grads, loss, parts = carry
            (m_loss, m_parts), m_grads = grad_fn(state.params, micro, total_turns)
            grads = jax.tree_util.tree_map(lambda g, h: g + h.astype(jnp.float32), grads, m_grads)
            return (grads, loss + m_loss, parts + m_parts), None

        (grads, loss, parts), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), jnp.zeros(6, jnp.float32)),
                                               _split(minibatch, hyper.micro_batches))
        grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "policy_loss": parts[0], "value_loss": parts[1], "clip_fraction": parts[2],
                   "approx_kl": parts[3], "grad_norm": optax.tree.norm(grads)}
        if hyper.kl_coef > 0:
            metrics["kl_ref"] = parts[4]
        if with_entropy:
            metrics["entropy"] = parts[5]
        return TrainState(state.step + 1, params, opt_state), metrics

    def update(state: TrainState, batch: PPOBatch, rng: jax.Array):
        num_episodes = batch.ids.shape[0]
        chunks = hyper.minibatches * hyper.micro_batches
        old = _score_in_chunks(policy, state.params, batch, pattern, hyper, chunks)
        advantages, returns = advantages_and_returns(batch.reward, old.value, batch.turn_valid, batch.episode,
                                                     hyper.gamma, hyper.lam)
        data = {"batch": batch, "old_logp": old.logp, "old_value": old.value, "advantages": advantages,
                "returns": returns}

        def epoch(state, key):
            order = jax.random.permutation(key, num_episodes)
            shuffled = jax.tree_util.tree_map(lambda x: jnp.take(x, order, axis=0), data)
            return jax.lax.scan(minibatch_step, state, _split(shuffled, hyper.minibatches))

        state, metrics = jax.lax.scan(epoch, state, jax.random.split(rng, hyper.epochs))
        valid = batch.turn_valid.astype(jnp.float32)
        summary = {k: jnp.mean(v) for k, v in metrics.items()}
        summary.update(
            reward=jnp.sum(batch.reward * valid) / jnp.maximum(jnp.sum(valid), 1.0),
            value=jnp.sum(old.value * valid) / jnp.maximum(jnp.sum(valid), 1.0),
            returns=jnp.sum(returns) / jnp.maximum(jnp.sum(valid), 1.0),
            turns=jnp.sum(valid))
        return state, summary

    return update
