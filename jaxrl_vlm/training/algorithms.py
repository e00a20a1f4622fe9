"""The RL algorithms by name (config ppo.algorithm): the one place the RL loop's algorithm is chosen.

'ppo': PPO with a value head and GAE (`ppo.PPO`, the default); 'grpo': GRPO / Dr. GRPO (`grpo.GRPO`); 'rloo': RLOO
(`grpo.RLOO`). Each is an `rl_update.Algorithm` class with `from_config(config, policy, pattern)`, `critic` and
`init_params(policy_params, hidden_size, rng, dtype, mesh)`.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections as mlc
from jax.sharding import Mesh

from jaxrl_vlm.training.grpo import GRPO, RLOO
from jaxrl_vlm.training.policy import PolicyModel
from jaxrl_vlm.training.ppo import PPO
from jaxrl_vlm.training.rl_update import Algorithm

ALGORITHMS = {"ppo": PPO, "grpo": GRPO, "rloo": RLOO}


def _class(name: str):
    if name not in ALGORITHMS:
        raise ValueError(f"unknown RL algorithm {name!r}; expected one of {tuple(ALGORITHMS)}")
    return ALGORITHMS[name]


def build(config: mlc.ConfigDict, policy: PolicyModel, pattern: jax.Array) -> Algorithm:
    """The algorithm config.ppo.algorithm with config.ppo's settings; pattern int32[P]: the action key's token ids."""
    return _class(config.ppo.algorithm).from_config(config, policy, pattern)


def init_params(name: str, policy_params: Any, hidden_size: int, rng: jax.Array, dtype: Any,
                mesh: Mesh | None) -> dict[str, Any]:
    """The trained params of algorithm `name`: {'policy': policy_params} and, for a critic, a fresh 'value' head."""
    return _class(name).init_params(policy_params, hidden_size, rng, dtype, mesh)
