"""The programs a job compiles, built from its config alone, for any mesh: nothing is loaded, placed or run.

`job_programs(config, mesh, tokenizer)` gives the job's jitted programs with abstract arguments
(`jax.ShapeDtypeStruct`s carrying their shardings on `mesh`), built by the same functions the job itself calls
(`sft.sft_step_program`, `ppo_train.update_program`, `rollout.rollout`), so `program.lower().compile()` compiles what
the job would run, for a mesh of devices this host does not have:

- SFT (job 'sft', and the SFT warm start of a 'ppo' job with ppo.init=''): `sft_step` at sft.global_batch_size
  sequences of data.seq_len tokens (with GP-VL's or V-IRL-VL's image inputs), sft.micro_batches accumulated;
- RL (job 'ppo'): `rollout` of ppo.episodes episodes at ppo.max_new_tokens, `update` (the algorithm's scoring pass
  and epochs x mini-batches of optimizer steps) over the worst-case batch: every conversation played, each as wide
  as the KV cache (`rollout_shapes(...).capacity`), and `reference_scoring` when ppo.kl_coef > 0;
- evaluation: `eval_rollout` of eval.batch_size episodes of the first evaluation split at eval.max_new_tokens.

Each program carries its model FLOPs (2 N per token forward, 6 N per token trained; N the param count), the basis
of the plan's MFU.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm import tasks
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.chat import reply_trim_tables
from jaxrl_vlm.models.abstract import abstract_model
from jaxrl_vlm.models.decode_layout import DecodeLayout, decode_layout
from jaxrl_vlm.models.sharding import MeshRules, optimizer_state_shardings, padded_rows
from jaxrl_vlm.models.token_bytes import token_byte_table
from jaxrl_vlm.training import algorithms
from jaxrl_vlm.training.flops import image_tokens, param_count
from jaxrl_vlm.training.policy import policy_model
from jaxrl_vlm.training.ppo_train import action_pattern, ppo_optimizer, update_program
from jaxrl_vlm.training.rl_update import PPOBatch
from jaxrl_vlm.training.sft import build_optimizer, sft_step_program
from jaxrl_vlm.training.sft_step import TrainState, init_train_state


@dataclasses.dataclass(frozen=True)
class Program:
    """One jitted program of a job: `lower()` -> `jax.stages.Lowered` for its abstract arguments. model_flops: the
    model FLOPs of one execution (all chips); weight_bytes_per_chip: one chip's share of the params it reads; decoding
    programs: decode_steps (the tokens of one reply, the sampler's loop) and decode_rounds (replies a row generates
    in one execution at most); 0 for others."""

    name: str
    lower: Callable[[], Any]
    model_flops: float
    weight_bytes_per_chip: int
    decode_steps: int = 0
    decode_rounds: int = 0
    note: str = ""


def _abstract(x: Any, sharding: NamedSharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def replicated(tree: Any, mesh: Mesh) -> Any:
    """Abstract copies of a tree of arrays (or ShapeDtypeStructs), replicated over `mesh`."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: _abstract(x, sharding), tree)


def batch_sharded(tree: Any, mesh: Mesh) -> Any:
    """Abstract copies of a tree whose leaves have a leading batch axis, split over the mesh's batch axes (the
    logical axis 'batch', as `put_batch` places them)."""
    rules = MeshRules(mesh)
    return jax.tree_util.tree_map(
        lambda x: _abstract(x, rules.sharding(np.shape(x), ("batch",) + (None,) * (np.ndim(x) - 1), "batch input")),
        tree)


def _with_shardings(shapes: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def abstract_train_state(params: Any, tx: Any, mesh: Mesh) -> TrainState:
    """The TrainState `init_train_state(params, tx)` would give, abstract: the step replicated, the params as given
    (ShapeDtypeStructs with shardings), optimizer moments sharded like their params (`place_on_mesh` of a real
    state gives the same)."""
    shapes = jax.eval_shape(lambda p: init_train_state(p, tx), params)
    param_shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
    opt_shardings = optimizer_state_shardings(shapes.opt_state, params, param_shardings, mesh)
    return TrainState(replicated(shapes.step, mesh), params, _with_shardings(shapes.opt_state, opt_shardings))


def _rng(mesh: Mesh) -> jax.ShapeDtypeStruct:
    return replicated(jax.eval_shape(lambda: jax.random.key(0)), mesh)


def _scalar(dtype: Any, mesh: Mesh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((), dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def bytes_per_chip(tree: Any) -> int:
    """Bytes one chip holds of a tree of ShapeDtypeStructs with shardings (its shard of each leaf)."""
    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree_util.tree_leaves(tree)))


def sft_batch(config: mlc.ConfigDict, model: Any, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract global batch of an SFT step (`sft._global_batch`): input_ids int32 / attention_mask bool /
    loss_mask bool [B, T] (B = sft.global_batch_size, T = data.seq_len) and, for an image task, one image per
    sequence: pixel_values float32[B, 1, tiles, 3, S, S], aspect_ratio_ids int32[B, 1], aspect_ratio_mask
    int32[B, 1, tiles], cross_attention_mask int32[B, T, 1, tiles]."""
    b, t = config.sft.global_batch_size, config.data.seq_len
    arrays = {"input_ids": jax.ShapeDtypeStruct((b, t), jnp.int32),
              "attention_mask": jax.ShapeDtypeStruct((b, t), jnp.bool_),
              "loss_mask": jax.ShapeDtypeStruct((b, t), jnp.bool_)}
    if not config.task.language_only:
        tiles, side = model.image_config.max_image_tiles, model.image_config.tile_size
        arrays.update(pixel_values=jax.ShapeDtypeStruct((b, 1, tiles, 3, side, side), jnp.float32),
                      aspect_ratio_ids=jax.ShapeDtypeStruct((b, 1), jnp.int32),
                      aspect_ratio_mask=jax.ShapeDtypeStruct((b, 1, tiles), jnp.int32),
                      cross_attention_mask=jax.ShapeDtypeStruct((b, t, 1, tiles), jnp.int32))
    return batch_sharded(arrays, mesh)


def sft_programs(config: mlc.ConfigDict, model: Any, mesh: Mesh) -> list[Program]:
    """[sft_step] of config.sft for an abstract model on `mesh`."""
    tx, _ = build_optimizer(config, model.params)
    state = abstract_train_state(model.params, tx, mesh)
    step = sft_step_program(config, model, tx, jax.tree_util.tree_map(lambda x: x.sharding, state))
    batch = sft_batch(config, model, mesh)
    images = 0 if config.task.language_only else image_tokens(model.config)
    tokens = config.sft.global_batch_size * (config.data.seq_len + images)
    n = param_count(model.params)
    return [Program("sft_step", lambda: step.lower(state, batch, _rng(mesh)), 6.0 * n * tokens,
                    bytes_per_chip(model.params), note=f"{config.sft.global_batch_size} sequences x {config.data.seq_len} tokens, "
                         f"{config.sft.micro_batches} micro-batches")]


def _rollout_program(name: str, env: protocol.Environment, env_params: Any, decoder: Any, params: Any, tokenizer,
                     rows: int, groups: int, max_new_tokens: int, pad_id: int, eos_ids: tuple[int, ...], trim: Any,
                     mesh: Mesh, n_params: int, note: str, layout: DecodeLayout | None) -> Program:
    """A `rollout.rollout` of `rows` episodes (reset in `groups` draws) as the job calls it, abstract; on the
    decode layout's mesh when there is one."""
    if layout is not None:
        decoder, params, mesh = layout.decoder(decoder), layout.abstract(params), layout.mesh
    shapes = jax.eval_shape(lambda key, p: protocol.reset_batch(env, key, p, groups, 0), jax.random.key(0), env_params)
    state = batch_sharded(jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype),
                                                 shapes), mesh)
    byte_table = replicated(token_byte_table(tokenizer, special_tokens="empty"), mesh)
    env_params = replicated(env_params, mesh)
    trim = None if trim is None else replicated(trim, mesh)
    eos = replicated(jnp.asarray(eos_ids, jnp.int32), mesh)
    capacity = rollout_lib.rollout_shapes(env, max_new_tokens, trim is not None).capacity
    images = image_tokens(decoder.config) if env.vision else 0
    flops = 2.0 * n_params * rows * env.conversations * (capacity + images)

    def lower():
        return rollout_lib.rollout.lower(env, decoder, params, env_params, byte_table, state, _rng(mesh),
                                         _scalar(jnp.float32, mesh), _scalar(jnp.float32, mesh), eos, trim,
                                         max_new_tokens=max_new_tokens, pad_id=pad_id)
    return Program(name, lower, flops, bytes_per_chip(params), decode_steps=max_new_tokens,
                   decode_rounds=env.turns * env.conversations,
                   note=f"{rows} episodes x {env.conversations} conversation(s) x {env.turns} turns, "
                        f"{max_new_tokens} new tokens a turn; model FLOPs: every cache slot filled")


def update_batch(config: mlc.ConfigDict, env: protocol.Environment, env_params: Any, policy: Any) -> PPOBatch:
    """The abstract worst-case `PPOBatch` of an update: every conversation of ppo.episodes episodes played
    (`ppo_train.conversation_rows`' row count for them), each as wide as the KV cache; unsharded (the caller
    places it)."""
    ppo = config.ppo
    rows = ppo.episodes
    while rows < ppo.episodes * env.conversations:
        rows *= 2
    width = rollout_lib.rollout_shapes(env, ppo.max_new_tokens).capacity
    t, n = env.turns, ppo.max_new_tokens
    s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
    batch = PPOBatch(ids=s((rows, width), jnp.int32), mask=s((rows, width), jnp.bool_),
                     reply_tokens=s((rows, t, n), jnp.int32), reply_len=s((rows, t), jnp.int32),
                     reply_start=s((rows, t), jnp.int32), turn_valid=s((rows, t), jnp.bool_),
                     reward=s((rows, t), jnp.float32), episode=s((rows,), jnp.int32))
    if env.vision:
        reset = jax.eval_shape(lambda key, p: protocol.reset_batch(env, key, p, rows, 0), jax.random.key(0),
                               env_params)
        images = jax.eval_shape(lambda st, p: protocol.image_batch(env, st, p, chunk=rollout_lib.IMAGE_CHUNK), reset,
                                env_params)
        batch = batch._replace(vision=jax.eval_shape(policy.vision_inputs, images, batch.ids))
    return batch


def rl_programs(config: mlc.ConfigDict, model: Any, tokenizer, mesh: Mesh) -> list[Program]:
    """[rollout, update (and reference_scoring with ppo.kl_coef > 0)] of config.ppo for an abstract model."""
    ppo = config.ppo
    env, env_params = tasks.training_task(config, tokenizer)
    policy = policy_model(model, config.model.param_dtype, config.model.dtype, remat=ppo.remat)
    n = param_count(model.params)
    tx, _ = ppo_optimizer(config)
    params = algorithms.abstract_params(ppo.algorithm, model.params, policy.hidden_size,
                                        jnp.dtype(config.model.param_dtype), mesh)
    state = abstract_train_state(params, tx, mesh)
    pattern = jnp.asarray(action_pattern(tokenizer, env.action_key))
    algorithm, update = update_program(config, policy, pattern, tx, jax.tree_util.tree_map(lambda x: x.sharding,
                                                                                           state))
    batch = update_batch(config, env, env_params, policy)
    if ppo.kl_coef > 0:
        batch = batch._replace(ref_logp=jax.eval_shape(algorithm.reference_logp, model.params, batch))
    batch = batch_sharded(batch, mesh)
    rows, width = batch.ids.shape
    images = image_tokens(policy.config) if env.vision else 0
    tokens = rows * (width + images)
    layout = decode_layout(policy.config, mesh, config.mesh.rollout_tensor, config.model.dtype)
    programs = []
    if layout is not None:
        place = layout.placer(model.params)
        programs.append(Program("reshard", lambda: place.lower(model.params), 0.0, bytes_per_chip(model.params),
                                note=f"policy onto the decode layout {dict(layout.mesh.shape)}, once per update"))
    programs += [
        _rollout_program("rollout", env, env_params, policy.decoder, model.params, tokenizer, ppo.episodes,
                         ppo.episodes // ppo.group_size, ppo.max_new_tokens, model.pad_id, model.eos_token_ids, None,
                         mesh, n, "RL rollout", layout),
        Program("update", lambda: update.lower(state, batch, _rng(mesh)), (2 + 6 * ppo.epochs) * n * tokens,
                bytes_per_chip(params),
                note=f"{rows} conversations x {width} tokens (worst case), scoring pass + {ppo.epochs} epochs x "
                     f"{ppo.minibatches} mini-batches x {ppo.micro_batches} micro-batches")]
    if ppo.kl_coef > 0:
        score = jax.jit(algorithm.reference_logp)
        programs.append(Program("reference_scoring", lambda: score.lower(model.params, batch), 2.0 * n * tokens,
                                bytes_per_chip(model.params), note="KL reference log-probs"))
    return programs


def eval_programs(config: mlc.ConfigDict, model: Any, tokenizer, mesh: Mesh) -> list[Program]:
    """[eval_rollout]: the evaluator's rollout of eval.batch_size episodes of the first evaluation split (the
    other splits compile the same shapes, up to their prompt widths)."""
    split, (env, env_params) = next(iter(tasks.evaluation_tasks(config, tokenizer).items()))
    trim = reply_trim_tables(tokenizer) if config.eval.trim_replies and env.trims_replies else None
    layout = decode_layout(model.config, mesh, config.mesh.rollout_tensor, config.model.dtype)
    rows = padded_rows(config.eval.batch_size, model.mesh_rules if layout is None else layout.mesh_rules)
    return [_rollout_program("eval_rollout", env, env_params, model.decoder, model.params, tokenizer, rows, rows,
                             config.eval.max_new_tokens, model.pad_id, model.eos_token_ids, trim, mesh,
                             param_count(model.params), f"evaluation, split {split}", layout)]


def job_programs(config: mlc.ConfigDict, mesh: Mesh, tokenizer) -> list[Program]:
    """Every program config.job compiles (module docstring), for an abstract model of config.model.path (weights
    not read) on `mesh`; tokenizer: the one the task's prompts are built with."""
    model = abstract_model(config_lib.resolve_model_path(config.model.path), dtype=config.model.param_dtype,
                           mesh=mesh)
    programs = []
    if config.job == "sft" or (config.job == "ppo" and config.ppo.init == ""):
        programs += sft_programs(config, model, mesh)
    if config.job == "ppo":
        programs += rl_programs(config, model, tokenizer, mesh)
    return programs + eval_programs(config, model, tokenizer, mesh)
