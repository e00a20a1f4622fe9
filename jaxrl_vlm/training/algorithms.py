"""The RL algorithms by name (config ppo.algorithm): the one place the RL loop's algorithm is chosen.

'ppo': PPO with a value head and GAE (`ppo.PPO`, the default); 'grpo': GRPO / Dr. GRPO (`grpo.GRPO`); 'rloo': RLOO
(`grpo.RLOO`). Each is an `rl_update.Algorithm` class with `from_config(config, policy, pattern)`, `critic` and
`init_params(policy_params, hidden_size, rng, dtype, mesh)` and `head_logical_axes()` (the params beside the
policy's).
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections as mlc
from jax.sharding import Mesh

from jaxrl_vlm.training.grpo import GRPO, RLOO
from jaxrl_vlm.training.policy import PolicyModel
from jaxrl_vlm.training.ppo import PPO
from jaxrl_vlm.models.sharding import tree_shardings
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


def abstract_params(name: str, policy_params: Any, hidden_size: int, dtype: Any, mesh: Mesh) -> dict[str, Any]:
    """`init_params`' tree as `jax.ShapeDtypeStruct`s with their shardings on `mesh`, creating no array (plans):
    policy_params are abstract (ShapeDtypeStructs with shardings); heads follow `head_logical_axes`."""
    cls = _class(name)
    shapes = jax.eval_shape(lambda p: cls.init_params(p, hidden_size, jax.random.key(0), dtype, None), policy_params)
    heads = {k: v for k, v in shapes.items() if k != "policy"}
    shardings = tree_shardings(heads, cls.head_logical_axes(), mesh)
    heads = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), heads, shardings)
    return {"policy": policy_params, **heads}
