"""Critic-free group-relative algorithms as `rl_update.Algorithm`s: GRPO (and Dr. GRPO) and RLOO.

Groups: the RL loop resets ppo.episodes / ppo.group_size hands (or routes) and rolls out ppo.group_size episodes
of each, consecutive in the batch (episode e is in group e // group_size).

Return of an episode: the SUM of the rewards of all its replies, over all its conversations and turns (the
budget's forced step, which no reply produced, is not in it). A one-turn episode's return is its outcome; for
multi-turn episodes the sum keeps what the tasks reward along the way, which the final outcome alone would lose: a
GP hand solved at the first try outranks one solved after failed revisions (each failed reply costs -1), and a
V-IRL route walked with fewer wrong moves outranks one with more (every route point is rewarded). It is the
undiscounted return, the quantity PPO's GAE estimates (with discount) in the same loop. Every reply of an episode
gets its episode's advantage against its group (`grpo_math.group_advantages`): GRPO R - mean, RLOO R - the mean of
the other members, divided by the group's std unless ppo.scale_rewards='none' (Dr. GRPO).

Advantages are computed over the whole batch in `prepare`, before mini-batching, so a group need not stay whole in
a mini-batch or on one data-parallel shard.

Loss, per reply token (as TRL's GRPOTrainer): the clipped surrogate of the token's ratio exp(logp - old_logp)
(old log-probs from one scoring pass right after the rollout, as PPO's; no ratio guard), plus kl_coef x the k3
estimate of KL to the initial policy per token (`ppo_math.kl_k3`, logged `kl_ref`), minus entropy_coef x the token's
entropy, normalised over the mini-batch as ppo.loss_norm says (`grpo_math.LOSS_NORMS`). Every token weighs the
same: PPO's thought/action split of the reference (training.md §4.4) is not applied. No value head is built,
stored or checkpointed: params are {'policy'}.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from jax.sharding import Mesh

from jaxrl_vlm.training import grpo_math, ppo_math
from jaxrl_vlm.training.policy import PolicyModel
from jaxrl_vlm.training.rl_update import PPOBatch
from jaxrl_vlm.training.scoring import score_in_chunks, score_tokens


@dataclasses.dataclass(frozen=True)
class GroupHyper:
    """Settings of a group-relative algorithm (static under jit); scale_rewards in grpo_math.SCALES, loss_norm in
    grpo_math.LOSS_NORMS."""

    epochs: int = 1
    minibatches: int = 1
    micro_batches: int = 1
    group_size: int = 4
    clip: float = 0.2
    temperature: float = 1.0
    scale_rewards: str = "group"
    loss_norm: str = "token"
    kl_coef: float = 0.0
    entropy_coef: float = 0.0

    @classmethod
    def from_config(cls, config: mlc.ConfigDict) -> "GroupHyper":
        """The settings of config.ppo."""
        p = config.ppo
        return cls(epochs=p.epochs, minibatches=p.minibatches, micro_batches=p.micro_batches,
                   group_size=p.group_size, clip=p.clip, temperature=p.temperature, scale_rewards=p.scale_rewards,
                   loss_norm=p.loss_norm, kl_coef=p.kl_coef, entropy_coef=p.entropy_coef)


def token_mask(batch: PPOBatch) -> jax.Array:
    """bool[E, T, N]: the tokens of the batch's valid replies."""
    n = batch.reply_tokens.shape[-1]
    return (jnp.arange(n) < batch.reply_len[..., None]) & batch.turn_valid[..., None]


class GroupRelative:
    """A critic-free group-relative algorithm; subclasses set `leave_one_out` (GRPO: False, RLOO: True)."""

    critic = False
    leave_one_out: bool

    def __init__(self, policy: PolicyModel, hyper: GroupHyper):
        self.policy, self.hyper = policy, hyper

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, policy: PolicyModel, pattern: jax.Array) -> "GroupRelative":
        """The algorithm with config.ppo's settings (pattern, the action key's ids, is not used: every reply token
        weighs the same)."""
        return cls(policy, GroupHyper.from_config(config))

    @staticmethod
    def init_params(policy_params: Any, hidden_size: int, rng: jax.Array, dtype: Any = jnp.float32,
                    mesh: Mesh | None = None) -> dict[str, Any]:
        """{'policy': the model's params}: no value head (the other arguments are a critic's)."""
        return {"policy": policy_params}

    @staticmethod
    def head_logical_axes() -> dict[str, Any]:
        """Logical axes of the params beside 'policy': none."""
        return {}

    def reference_logp(self, reference: Any, batch: PPOBatch) -> jax.Array:
        """float32[E, T, N]: the reference policy params' per-token log-probs."""
        return score_tokens(self.policy, {"policy": reference}, batch, self.hyper.temperature).logp

    def advantages(self, batch: PPOBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(float32[E, T]: each valid reply's advantage, its episode's against its group; 0 elsewhere, batch-level
        metrics: mean episode return, fraction of flat groups)."""
        e = batch.reward.shape[0]
        g = self.hyper.group_size
        returns, present = grpo_math.episode_returns(batch.reward, batch.turn_valid, batch.episode)
        pad = -e % g  # episode slots beyond E hold no episode
        grouped = lambda x: jnp.pad(x, (0, pad)).reshape(-1, g)
        returns_g, present_g = grouped(returns), grouped(present)
        per_episode = grpo_math.group_advantages(returns_g, present_g, leave_one_out=self.leave_one_out,
                                                 scale_by_std=self.hyper.scale_rewards == "group").reshape(-1)
        episode = jnp.arange(e) if batch.episode is None else jnp.maximum(batch.episode, 0)
        advantages = jnp.where(batch.turn_valid, per_episode[episode][:, None], 0.0)
        live = jnp.any(present_g, axis=1)
        flat = grpo_math.flat_groups(returns_g, present_g) & live
        metrics = {"episode_return": jnp.sum(jnp.where(present, returns, 0.0)) / jnp.maximum(jnp.sum(present), 1),
                   "flat_groups": jnp.sum(flat) / jnp.maximum(jnp.sum(live), 1)}
        return advantages, metrics

    def prepare(self, params: dict[str, Any], batch: PPOBatch):
        """Old per-token log-probs (scored in minibatches x micro_batches chunks) and group advantages."""
        hyper = self.hyper
        score = lambda p, part: score_tokens(self.policy, p, part, hyper.temperature).logp
        old_logp = score_in_chunks(score, params, batch, hyper.minibatches * hyper.micro_batches)
        advantages, metrics = self.advantages(batch)
        valid = batch.turn_valid.astype(jnp.float32)
        metrics.update(reward=jnp.sum(batch.reward * valid) / jnp.maximum(jnp.sum(valid), 1.0),
                       turns=jnp.sum(valid))
        return {"batch": batch, "old_logp": old_logp, "advantages": advantages}, metrics

    def loss_denominator(self, minibatch: dict[str, Any]) -> jax.Array:
        """The mini-batch's tokens or replies (`grpo_math.loss_units` of ppo.loss_norm)."""
        return grpo_math.loss_units(token_mask(minibatch["batch"]), self.hyper.loss_norm)

    def loss(self, params: dict[str, Any], micro: dict[str, Any], denominator: jax.Array):
        """(the micro-batch's share of the mini-batch's normalised loss, its shares of the metrics)."""
        hyper = self.hyper
        batch = micro["batch"]
        mask = token_mask(batch)
        scores = score_tokens(self.policy, params, batch, hyper.temperature, hyper.entropy_coef > 0)
        # positions past a reply hold padding's log-probs: ratio 1 there, so no overflow can reach the gradient
        logp = jnp.where(mask, scores.logp, micro["old_logp"])
        objective, ratio = ppo_math.clipped_surrogate(logp, micro["old_logp"], micro["advantages"][..., None],
                                                      clip=hyper.clip)
        per_token = {"policy_loss": -objective,
                     "clip_fraction": (jnp.abs(ratio - 1.0) > hyper.clip).astype(jnp.float32),
                     "approx_kl": micro["old_logp"] - logp}
        if hyper.kl_coef > 0:
            per_token["kl_ref"] = ppo_math.kl_k3(logp, batch.ref_logp)
        if hyper.entropy_coef > 0:
            per_token["entropy"] = scores.entropy
        parts = {k: grpo_math.loss_sum(v, mask, hyper.loss_norm) / denominator for k, v in per_token.items()}
        loss = (parts["policy_loss"] + hyper.kl_coef * parts.get("kl_ref", 0.0)
                - hyper.entropy_coef * parts.get("entropy", 0.0))
        return loss, parts


class GRPO(GroupRelative):
    """GRPO: advantage R - the group's mean (Dr. GRPO with ppo.scale_rewards='none', ppo.loss_norm='constant')."""

    leave_one_out = False


class RLOO(GroupRelative):
    """RLOO: advantage R - the mean of the group's other members."""

    leave_one_out = True
