"""Evaluation of any task split through the on-device rollout (`jaxrl_vlm.rollout`), the same loop PPO samples
with, at the evaluation's sampling settings (temperature 0 = greedy).

One result schema for every split of every task:
    {"split", "episodes", "success", "success_stderr", "mean_reward", "replies", "overflow", "outcomes"}
plus, per count rate of the task (`Environment.count_names`), the rate, its standard error and its trial count,
e.g. V-IRL `step_accuracy`, `step_accuracy_stderr`, `steps`, GP-VL `recognition_accuracy`, ... Standard errors are
binomial: over episodes for success, over trials for a rate. mean_reward is over the replies played; outcomes:
{verdict: replies} over the task's `outcome_names` (they sum to `replies`; `outcome_shares` divides them).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.chat import reply_trim_tables
from jaxrl_vlm.models.decode_layout import DecodeLayout
from jaxrl_vlm.models.sharding import padded_rows, to_host
from jaxrl_vlm.models.token_bytes import token_byte_table
from jaxrl_vlm.stats import binomial_stderr


class Evaluator:
    """Evaluates a loaded model (or other params of it) on named task splits {split: (Environment, env params)}.

    decoder: the sampler's `DecodeModel` (default: the model's own); image tasks need one that encodes images
    (`image_extra`, e.g. Mllama's). trim_replies: where a split's chat template trims assistant contents
    (`Environment.trims_replies`, Llama 3), revision turns show the earlier replies trimmed, as the reference's
    re-rendered conversations do (`rollout`'s trim); False: as sampled, as PPO's rollouts show them.
    layout: decoding's own weight layout (`decode_layout.DecodeLayout`; None: the model's): the params are placed on
    it before each evaluated split, and the decoder and batches run on its mesh.
    """

    def __init__(self, model: Any, tokenizer, splits: Mapping[str, tuple[protocol.Environment, Any]],
                 decoder: Any = None, trim_replies: bool = True, layout: DecodeLayout | None = None):
        self.model = model
        self.layout = layout
        self.trim = reply_trim_tables(tokenizer) if trim_replies and any(
            env.trims_replies for env, _ in splits.values()) else None
        self.splits = dict(splits)
        self.decoder = decoder if decoder is not None else model.decoder
        if layout is not None:
            self.decoder = layout.decoder(self.decoder)
        for name, (env, _) in self.splits.items():
            if env.vision and not hasattr(self.decoder, "image_extra"):
                raise ValueError(f"split {name!r} shows images: it needs a vision-language model, "
                                 f"got {type(model).__name__}")
        self.byte_table = token_byte_table(tokenizer, special_tokens="empty")
        self._reset = jax.jit(protocol.reset_batch, static_argnums=(0, 3))

    def evaluate(self, split: str, *, episodes: int, batch_size: int, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, params: Any = None) -> dict[str, Any]:
        """Results of `episodes` episodes of a split (an ordered split runs at most its own episode count) in
        batches of batch_size rows; params: model params (default: the loaded model's)."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.splits)}")
        env, env_params = self.splits[split]
        if env.ordered_episodes is not None:
            episodes = min(episodes, env.ordered_episodes)
        params = self.model.params if params is None else params
        mesh_rules, put_batch = self.model.mesh_rules, self.model.put_batch
        if self.layout is not None:
            params, mesh_rules, put_batch = self.layout.place(params), self.layout.mesh_rules, self.layout.put_batch
        rows = padded_rows(batch_size, mesh_rules)
        eos_ids = jnp.asarray(self.model.eos_token_ids, jnp.int32)
        key = jax.random.key(seed)
        totals = {"success": 0, "replies": 0, "reward": 0.0, "overflow": 0}
        counts = {name: [0, 0] for name in env.count_names}
        outcomes = np.zeros(len(env.outcome_names), np.int64)
        progress = tqdm(total=episodes, desc=f"eval {split}", unit="episode", dynamic_ncols=True,
                        disable=jax.process_index() != 0)
        for start in range(0, episodes, batch_size):
            n = min(batch_size, episodes - start)
            key, reset_key, sample_key = jax.random.split(key, 3)
            state = self._reset(env, reset_key, env_params, rows, start)
            state = jax.tree_util.tree_map(lambda x: put_batch(to_host(x)), state)
            out = rollout_lib.rollout(env, self.decoder, params, env_params, self.byte_table, state, sample_key,
                                      jnp.float32(temperature), jnp.float32(top_p), eos_ids,
                                      self.trim if env.trims_replies else None, max_new_tokens=max_new_tokens,
                                      pad_id=self.model.pad_id)
            played = to_host(out.turn_valid)[:n]
            totals["success"] += int(to_host(out.success)[:n].sum())
            totals["replies"] += int(played.sum())
            totals["reward"] += float(to_host(out.reward)[:n][played].sum())
            totals["overflow"] += int(to_host(out.overflow)[:n].sum())
            outcomes += to_host(out.outcomes)[:n].sum(axis=0)
            for name, (hits, trials) in out.counts.items():
                counts[name][0] += int(to_host(hits)[:n].sum())
                counts[name][1] += int(to_host(trials)[:n].sum())
            progress.update(n)
        progress.close()
        p = totals["success"] / episodes
        result: dict[str, Any] = {
            "split": split, "episodes": episodes, "success": p, "success_stderr": binomial_stderr(p, episodes),
            "mean_reward": totals["reward"] / totals["replies"] if totals["replies"] else float("nan"),
            "replies": totals["replies"], "overflow": totals["overflow"],
            "outcomes": {name: int(k) for name, k in zip(env.outcome_names, outcomes)}}
        for name, (hits, trials) in counts.items():
            rate = hits / trials if trials else float("nan")
            result.update({name: rate, f"{name}_stderr": binomial_stderr(rate, trials) if trials else float("nan"),
                           env.count_names[name]: trials})
        return result


def outcome_shares(result: Mapping[str, Any]) -> dict[str, float]:
    """{verdict: share of the replies} of a result (NaN without replies)."""
    replies = result["replies"]
    return {name: k / replies if replies else float("nan") for name, k in result["outcomes"].items()}


def headline(result: Mapping[str, Any]) -> float:
    """The split's headline number: episode success."""
    return float(result["success"])
