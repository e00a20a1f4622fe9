"""PPO with a value head (spec training.md §4), as an `rl_update.Algorithm`: GAE advantages, clipped surrogate
and clipped value loss per reply.

`PPO.prepare` scores every reply with the current params (teacher forcing over the whole conversation,
`scoring.score_replies`): the reply log-prob (temperature-scaled, thought/action split, `ppo_math.reply_logprob`)
and the value at the last prompt token; these are the old log-probs and values, as the reference scores right after
generating. Then GAE (gamma, lambda) per episode over its transitions in time order (one per reply, across the
episode's conversations: a V-IRL route has one per route point), with the episode's end terminal; advantages
normalised over the valid turns of the batch. `rl_update.make_update` runs the epochs x mini-batches x
micro-batches.

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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from jax.sharding import Mesh

from jaxrl_vlm.models import llama
from jaxrl_vlm.models.sharding import shard_tree
from jaxrl_vlm.training import ppo_math
from jaxrl_vlm.training.policy import PolicyModel
from jaxrl_vlm.training.rl_update import PPOBatch
from jaxrl_vlm.training.scoring import score_in_chunks, score_replies


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

    @classmethod
    def from_config(cls, config: mlc.ConfigDict) -> "PPOHyper":
        """The PPO settings of config.ppo."""
        p = config.ppo
        return cls(epochs=p.epochs, minibatches=p.minibatches, micro_batches=p.micro_batches, clip=p.clip,
                   value_coef=p.value_coef, gamma=p.gamma, lam=p.lam, temperature=p.temperature,
                   thought_coef=p.thought_coef, kl_coef=p.kl_coef, entropy_coef=p.entropy_coef)


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


class PPO:
    """PPO with a value head (`rl_update.Algorithm`): per-reply samples, GAE advantages, clipped surrogate + clipped
    value loss, optional KL penalty and entropy bonus. pattern int32[P]: the action key's token ids."""

    critic = True

    def __init__(self, policy: PolicyModel, hyper: PPOHyper, pattern: jax.Array):
        self.policy, self.hyper, self.pattern = policy, hyper, pattern

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, policy: PolicyModel, pattern: jax.Array) -> "PPO":
        """PPO with config.ppo's settings."""
        return cls(policy, PPOHyper.from_config(config), pattern)

    @staticmethod
    def init_params(policy_params: Any, hidden_size: int, rng: jax.Array, dtype: Any = jnp.float32,
                    mesh: Mesh | None = None) -> dict[str, Any]:
        """{'policy': the model's params, 'value': a fresh value head (hidden -> 1024 -> 512 -> 1) in dtype}; on
        `mesh` the value head is sharded by its logical axes (`llama.value_head_logical_axes`)."""
        value = llama.init_value_head(rng, hidden_size, dtype)
        if mesh is not None:
            value = shard_tree(value, PPO.head_logical_axes()["value"], mesh)
        return {"policy": policy_params, "value": value}

    @staticmethod
    def head_logical_axes() -> dict[str, Any]:
        """Logical axes of the params beside 'policy': the value head's."""
        return {"value": llama.value_head_logical_axes()}

    def reference_logp(self, reference: Any, batch: PPOBatch) -> jax.Array:
        """float32[E, T]: the reference policy params' reply log-probs."""
        return score_replies(self.policy, {"policy": reference}, batch, self.pattern, self.hyper).logp

    def prepare(self, params: dict[str, Any], batch: PPOBatch):
        """Old log-probs and values (scored in minibatches x micro_batches chunks), GAE advantages and returns."""
        hyper = self.hyper
        score = lambda p, part: score_replies(self.policy, p, part, self.pattern, hyper)
        old = score_in_chunks(score, params, batch, hyper.minibatches * hyper.micro_batches)
        advantages, returns = advantages_and_returns(batch.reward, old.value, batch.turn_valid, batch.episode,
                                                     hyper.gamma, hyper.lam)
        data = {"batch": batch, "old_logp": old.logp, "old_value": old.value, "advantages": advantages,
                "returns": returns}
        valid = batch.turn_valid.astype(jnp.float32)
        metrics = dict(reward=jnp.sum(batch.reward * valid) / jnp.maximum(jnp.sum(valid), 1.0),
                       value=jnp.sum(old.value * valid) / jnp.maximum(jnp.sum(valid), 1.0),
                       returns=jnp.sum(returns) / jnp.maximum(jnp.sum(valid), 1.0),
                       turns=jnp.sum(valid))
        return data, metrics

    def loss_denominator(self, minibatch: dict[str, Any]) -> jax.Array:
        """The mini-batch's valid turns: the loss is a mean over replies."""
        return jnp.sum(minibatch["batch"].turn_valid.astype(jnp.float32))

    def loss(self, params: dict[str, Any], micro: dict[str, Any], total_turns: jax.Array):
        """(the micro-batch's share of the mini-batch's mean loss, its shares of the metrics)."""
        hyper = self.hyper
        with_entropy = hyper.entropy_coef > 0
        scores = score_replies(self.policy, params, micro["batch"], self.pattern, hyper, with_entropy)
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
        parts = {"policy_loss": losses.policy, "value_loss": losses.value, "clip_fraction": losses.clip_fraction,
                 "approx_kl": losses.approx_kl}
        if hyper.kl_coef > 0:
            parts["kl_ref"] = kl
        if with_entropy:
            parts["entropy"] = entropy
        return total * weight, {k: v * weight for k, v in parts.items()}
