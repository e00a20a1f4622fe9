"""The device path of the rollout benchmarks: B episodes of a protocol task rolled out on the device in one jit, set
up as `train_ppo` and the evaluator set it up (greedy), with the host summary the benchmarks compare."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.models.token_bytes import token_byte_table
from jaxrl_vlm.training.policy import policy_model


def decode_reply(tokenizer, tokens: np.ndarray) -> str:
    """Reply text of int[N] token ids (special tokens dropped, no clean-up: the bytes the device verifier reads)."""
    return tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True, clean_up_tokenization_spaces=False)


class DevicePath:
    """The on-device rollout of `batch` episodes of task = (Environment, env params) for a loaded model (policy
    params and compute in `dtype`), replies of up to max_new_tokens tokens."""

    def __init__(self, model: Any, tokenizer, task: tuple[protocol.Environment, Any], *, batch: int,
                 max_new_tokens: int, dtype: str):
        self.env, self.env_params = task
        self.shapes = rollout_lib.rollout_shapes(self.env, max_new_tokens)
        self.batch = batch
        self.max_new_tokens = max_new_tokens
        self.decoder = policy_model(model, dtype, dtype).decoder
        self.byte_table = token_byte_table(tokenizer, special_tokens="empty")
        self.model = model
        self.eos_ids = jnp.asarray(model.eos_token_ids, jnp.int32)
        self._reset = jax.jit(protocol.reset_batch, static_argnums=(0, 3))

    def reset(self, key: jax.Array) -> Any:
        """Env states of `batch` fresh episodes."""
        return self._reset(self.env, key, self.env_params, self.batch)

    def __call__(self, state: Any, key: jax.Array) -> tuple[rollout_lib.Episodes, dict[str, np.ndarray]]:
        """Roll out the episodes of reset env states; returns the device Episodes and its host summary: reward,
        reply_len, played (turn_valid) [B, R, T], success, overflow [B], and each count rate's hits and trials."""
        episodes = rollout_lib.rollout(self.env, self.decoder, self.model.params, self.env_params, self.byte_table,
                                       state, key, jnp.float32(0.0), jnp.float32(1.0), self.eos_ids,
                                       max_new_tokens=self.max_new_tokens, pad_id=self.model.pad_id)
        summary = jax.device_get({"reward": episodes.reward, "reply_len": episodes.reply_len,
                                  "played": episodes.turn_valid, "success": episodes.success,
                                  "overflow": episodes.overflow, "counts": episodes.counts})
        return episodes, summary
