"""The RL training loop (config section `ppo`) on any `envs.protocol` task: rollouts and updates alternate, with
periodic evaluation. The algorithm is config ppo.algorithm (`algorithms`: PPO, GRPO, RLOO); the loop names none.

Each update u: reset `ppo.episodes` episodes of the training split (key fold_in(seed, u)) in groups of
`ppo.group_size` (`reset_groups`: episodes / group_size draws, each repeated; 1 for PPO), roll them out on the
device (`jaxrl_vlm.rollout`, sampling at ppo.temperature / ppo.top_p; with mesh.rollout_tensor on decoding's own
weight layout, `models.decode_layout`, the policy resharded for it before each rollout), compact the played
conversations (rows of the update, in episode order, so an episode's steps are in time order), and run the
algorithm's jitted update
(`rl_update.make_update`: the algorithm's scoring and advantages, then epochs x mini-batches of its loss). Every
`eval.every` updates (and before the first and after the last) the job's `evaluate` callback runs. Metrics carry
the compute so far in GFLOPs (`flops.ComputeMeter`; every rolled-out episode counts, each group member included).

Optimizer (training.md §4.2, §4.5): Adam (b1 0.9, b2 0.999, eps 1e-7, no weight decay) over all model params and
PPO's value head; global-norm clipping at ppo.max_grad_norm (1.0: what DeepSpeed applied in the reference's runs;
0.01 was configured but had no effect); cosine annealing from ppo.lr to ppo.end_lr with period 2 x
ppo.lr_max_steps updates, stepped once per update (the evident intent; the reference stepped it 8 times per update).

Checkpoints (every checkpoint.every updates and at the end) hold the train state (a value head only for a critic),
the update index, the compute counters, the evaluation history and the algorithm's name; every random draw derives
from (seed, update), so a resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.models.decode_layout import decode_layout
from jaxrl_vlm.models.token_bytes import token_byte_table
from jaxrl_vlm.models.sharding import to_host
from jaxrl_vlm.shapes import round_up
from jaxrl_vlm.training import algorithms
from jaxrl_vlm.training.checkpoint import Checkpointer
from jaxrl_vlm.training.flops import ComputeMeter, image_tokens, param_count, transition_tokens
from jaxrl_vlm.training.metrics import MetricsLogger
from jaxrl_vlm.training.optim import adamw
from jaxrl_vlm.training.policy import PolicyModel, policy_model
from jaxrl_vlm.training.rl_update import PPOBatch, make_update
from jaxrl_vlm.training.sft import mesh_of, place_on_mesh
from jaxrl_vlm.training.sft_step import TrainState

WIDTH_ROUNDING = 128  # conversation widths of the update are rounded up to this: few shapes, few compilations


def action_pattern(tokenizer, action_key: str | None) -> np.ndarray:
    """int32[P] token ids of a task's action key (GP ` "formula":`: the reference's [330, 60599, 794] for Llama 3);
    None: [-1], which never matches, so every reply's action part is its last tokens (`ppo_math.action_start`)."""
    if action_key is None:
        return np.full((1,), -1, np.int32)
    ids = tokenizer(action_key, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer encodes the action key {action_key!r} to no tokens")
    return np.asarray(ids, np.int32)


def cosine_annealing(lr: float, end_lr: float, period_updates: int, steps_per_update: int) -> optax.Schedule:
    """torch CosineAnnealingLR(T_max=period_updates, eta_min=end_lr) stepped once per PPO update, as a function of
    the optimizer step (steps_per_update optimizer steps per update)."""
    def schedule(step):
        update = step // steps_per_update
        return end_lr + (lr - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * update / period_updates))
    return schedule


def ppo_optimizer(config: mlc.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(Adam with clipping, the cosine learning-rate schedule) of config.ppo (module docstring)."""
    ppo = config.ppo
    schedule = cosine_annealing(ppo.lr, ppo.end_lr, ppo.lr_max_steps, ppo.epochs * ppo.minibatches)
    tx = adamw(schedule, b1=ppo.b1, b2=ppo.b2, eps=ppo.eps, weight_decay=ppo.weight_decay,
               max_grad_norm=ppo.max_grad_norm)
    return tx, schedule


def initial_ppo_state(config: mlc.ConfigDict, model: Any,
                      algorithm: str | None = None) -> tuple[TrainState, tuple[Any, optax.Schedule]]:
    """(TrainState at update 0 on the model's mesh: params {'policy': model.params} plus, for a critic (PPO), a
    fresh value head 'value', and Adam state; (optax transformation, learning-rate schedule)) of config.ppo, for
    `algorithm` (default config.ppo.algorithm)."""
    tx, schedule = ppo_optimizer(config)
    hidden_size = policy_model(model, config.model.param_dtype, config.model.dtype).hidden_size
    value_key = jax.random.fold_in(jax.random.key(config.seed), 1 << 30)
    mesh = mesh_of(model)
    params = algorithms.init_params(algorithm or config.ppo.algorithm, model.params, hidden_size, value_key,
                                    jnp.dtype(config.model.param_dtype), mesh)
    return place_on_mesh(TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), mesh), (tx, schedule)


def update_program(config: mlc.ConfigDict, policy: PolicyModel, pattern: jax.Array, tx: optax.GradientTransformation,
                   state_shardings: Any) -> tuple[Any, Callable[..., Any]]:
    """(the algorithm of config.ppo, its jitted `update(state, batch: PPOBatch, rng) -> (state, metrics)`: the
    scoring pass and epochs x mini-batches of optimizer steps, state donated and kept on `state_shardings`);
    pattern int32[P]: the action key's token ids (`action_pattern`)."""
    algorithm = algorithms.build(config, policy, pattern)
    return algorithm, jax.jit(make_update(algorithm, tx), donate_argnums=0, out_shardings=(state_shardings, None))


def conversation_rows(turn_valid: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the update batch from episodes' conversations (turn_valid bool[B, R, T] on the host): (index int[E]
    into the flattened [B * R] conversations, played ones in episode-major time order, then padding copies of the
    first; row_valid bool[E]). E is the smallest multiple x 2^k >= the played conversations (few shapes, few
    compilations of the update)."""
    played = np.flatnonzero(turn_valid.any(axis=-1).reshape(-1))
    rows = multiple
    while rows < len(played):
        rows *= 2
    index = np.concatenate([played, np.full(rows - len(played), played[0] if len(played) else 0)])
    return index.astype(np.int32), np.arange(rows) < len(played)


@functools.partial(jax.jit, static_argnames=("width", "pad_id"))
def _update_rows(episodes: rollout_lib.Episodes, index: jax.Array, row_valid: jax.Array, *, width: int,
                 pad_id: int) -> PPOBatch:
    """The PPOBatch (no images) of the selected conversations (index int32[E] into the flattened [B * R] ones):
    compact ids int32[E, width] with their replies, rewards and episode ids (padding rows: -1 - row)."""
    b, r = episodes.turn_valid.shape[:2]
    pick = lambda x: x.reshape(b * r, *x.shape[2:])[index]
    ids, mask = rollout_lib.compact(pick(episodes.slot_tokens), pick(episodes.slot_valid), width, pad_id)
    episode = jnp.where(row_valid, index // r, -1 - jnp.arange(index.shape[0]))
    return PPOBatch(ids, mask, pick(episodes.reply_tokens), pick(episodes.reply_len), pick(episodes.reply_start),
                    pick(episodes.turn_valid) & row_valid[:, None], pick(episodes.reward),
                    episode=episode.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("env", "policy"))
def _row_vision(env: protocol.Environment, policy: PolicyModel, env_params: Any, episodes: rollout_lib.Episodes,
                index: jax.Array, ids: jax.Array) -> dict[str, jax.Array]:
    """Image tasks: the Mllama inputs of the selected conversations' images (index int32[E]; their compact ids
    int32[E, L]), each rendered again from the conversation's opening state and preprocessed on the device, so the
    update's vision tower sees what the rollout's did."""
    b, r = episodes.turn_valid.shape[:2]
    opening = jax.tree_util.tree_map(lambda x: x.reshape(b * r, *x.shape[2:])[index], episodes.conversation_state)
    images = protocol.image_batch(env, opening, env_params, chunk=rollout_lib.IMAGE_CHUNK)
    return policy.vision_inputs(images, ids)


_reset = jax.jit(protocol.reset_batch, static_argnums=(0, 3))


def reset_groups(env: protocol.Environment, key: jax.Array, env_params: Any, episodes: int, group_size: int):
    """`episodes` reset episode states in groups: episodes / group_size independent resets (hands, routes), each
    repeated group_size times in consecutive rows (episode e is in group e // group_size)."""
    state = _reset(env, key, env_params, episodes // group_size, 0)
    members = jnp.arange(episodes) // group_size
    return jax.tree_util.tree_map(lambda x: x[members], state)


def train_ppo(config: mlc.ConfigDict, model: Any, tokenizer, task: tuple[protocol.Environment, Any],
              evaluate: Callable[[Any], dict[str, dict]], *, init_tokens: int = 0,
              stop_after_update: int | None = None, eval_gflops: Sequence[float] = ()) -> dict[str, Any]:
    """Run (or resume) PPO from the model's params on task = (Environment, env params) of the training split;
    returns {'history': evaluations, 'final': last evaluation, 'params': final policy params, 'compute': counters,
    'updates': done}. "PPO" names the RL job: its algorithm is config.ppo.algorithm (`algorithms`: PPO, GRPO, RLOO).

    evaluate(policy params) -> {split: result}: the job's evaluation, run before the first update, every eval.every
    updates and after the last. The model's param buffers are donated to the training state (the KL reference,
    when on, is a copy). init_tokens: tokens the starting checkpoint was fine-tuned on (D_init of the compute axis).
    stop_after_update: stop after that update as if killed (tests of exact resume). eval_gflops (ascending; the
    study's schedule): evaluate instead after the first update whose compute reaches each point (not before the
    first update nor every eval.every), save a checkpoint with it, and end after the last point.
    """
    ppo = config.ppo
    env, env_params = task
    policy = policy_model(model, config.model.param_dtype, config.model.dtype, remat=ppo.remat)
    if env.vision and not policy.is_vision:
        raise ValueError(f"the task shows images: it needs a vision-language model, got {type(model).__name__}")
    steps_per_update = ppo.epochs * ppo.minibatches
    # a copy: the train state starts from (and donates) the model's own param buffers
    reference = jax.tree_util.tree_map(jnp.copy, model.params) if ppo.kl_coef > 0 else None
    state, (tx, schedule) = initial_ppo_state(config, model)
    algorithm, update_fn = update_program(config, policy, jnp.asarray(action_pattern(tokenizer, env.action_key)), tx,
                                          jax.tree_util.tree_map(lambda x: x.sharding, state))
    score_ref = jax.jit(algorithm.reference_logp)
    layout = decode_layout(policy.config, mesh_of(model), config.mesh.rollout_tensor, config.model.dtype)
    decoder = policy.decoder if layout is None else layout.decoder(policy.decoder)
    put_rollout = model.put_batch if layout is None else layout.put_batch
    byte_table = token_byte_table(tokenizer, special_tokens="empty")
    capacity = rollout_lib.rollout_shapes(env, ppo.max_new_tokens).capacity
    meter = ComputeMeter(param_count(model.params), init_tokens=init_tokens)
    image_tokens_per_reply = image_tokens(policy.config) if env.vision else 0
    history: list[dict[str, Any]] = []
    checkpointer = Checkpointer(os.path.join(config.out_dir, "checkpoints"), max_to_keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save)
    start = 0
    if config.checkpoint.resume and checkpointer.latest_step() is not None:
        saved = checkpointer.metadata(checkpointer.latest_step()).get("algorithm", "ppo")
        if saved != ppo.algorithm:
            raise ValueError(f"config.ppo.algorithm={ppo.algorithm!r}, but the checkpoints in {checkpointer.directory} "
                             f"to resume from are of {saved!r}: set it back, or choose another out_dir")
    restored = checkpointer.restore_latest(state) if config.checkpoint.resume else None
    if restored is not None:
        start, state, metadata = restored
        meter = ComputeMeter.from_state(metadata["compute"])
        history = list(metadata["history"])
    logger = MetricsLogger(config.out_dir, ppo.updates, enabled=jax.process_index() == 0,
                           tensorboard=config.log.tensorboard, wandb_project=config.log.wandb_project or None,
                           config=config.to_dict(), desc=ppo.algorithm, initial_step=start)

    def run_evaluation(update: int) -> None:
        results = evaluate(state.params["policy"])
        history.append({"update": update, "gflops": meter.gflops, "results": results})
        logger.log(update, {"gflops": meter.gflops, **{f"eval/{s}/success": float(r["success"])
                                                        for s, r in results.items()}})

    points = sorted(eval_gflops)
    next_point = sum(p <= meter.gflops for p in points)  # a point reached before a save was evaluated before it
    if start == 0 and not history and not points:
        run_evaluation(0)
    key = jax.random.key(config.seed)
    eos_ids = jnp.asarray(model.eos_token_ids, jnp.int32)
    end = ppo.updates if stop_after_update is None else min(ppo.updates, stop_after_update)
    if points and next_point == len(points):
        end = start  # every scheduled evaluation is done
    for update in range(start, end):
        clock = time.perf_counter()
        reset_key, sample_key, update_key = jax.random.split(jax.random.fold_in(key, update), 3)
        env_state = reset_groups(env, reset_key, env_params, ppo.episodes, ppo.group_size)
        env_state = jax.tree_util.tree_map(lambda x: put_rollout(to_host(x)), env_state)
        rollout_params = state.params["policy"] if layout is None else layout.place(state.params["policy"])
        episodes = rollout_lib.rollout(env, decoder, rollout_params, env_params, byte_table, env_state, sample_key,
                                       jnp.float32(ppo.temperature), jnp.float32(ppo.top_p), eos_ids,
                                       max_new_tokens=ppo.max_new_tokens, pad_id=model.pad_id)
        del rollout_params
        turn_valid = to_host(episodes.turn_valid)
        index, row_valid = conversation_rows(turn_valid, ppo.episodes)
        lengths = to_host(jnp.sum(episodes.slot_valid, axis=-1)).reshape(-1)[index[row_valid]]
        rollout_s = time.perf_counter() - clock
        width = min(round_up(int(lengths.max()), WIDTH_ROUNDING), capacity)
        index, row_valid = model.put_batch(index), model.put_batch(row_valid)
        batch = _update_rows(episodes, index, row_valid, width=width, pad_id=model.pad_id)
        if env.vision:
            batch = batch._replace(vision=_row_vision(env, policy, env_params, episodes, index, batch.ids))
        if reference is not None:
            batch = batch._replace(ref_logp=score_ref(reference, batch))
        state, metrics = update_fn(state, batch, update_key)
        metrics = jax.tree_util.tree_map(to_host, metrics)
        success, overflow, reply_lengths, reply_start = (to_host(x) for x in (
            episodes.success, episodes.overflow, episodes.reply_len, episodes.reply_start))
        transitions = transition_tokens(reply_start, reply_lengths, turn_valid, images=image_tokens_per_reply)
        forward_passes = 2 + (reference is not None)  # rollout, scoring of old log-probs (and values), KL reference
        meter.add(train=transitions * ppo.epochs, buffer=forward_passes * transitions)
        done = update + 1
        row = {k: float(v) for k, v in metrics.items()}
        row.update(rollout_success=float(success.mean()), episode_turns=float(turn_valid.sum((1, 2)).mean()),
                   episode_conversations=float(turn_valid.any(-1).sum(1).mean()),
                   reply_tokens=float(reply_lengths[turn_valid].mean()), feedback_overflow=int(overflow.sum()),
                   lr=float(schedule(update * steps_per_update)), gflops=meter.gflops,
                   conversation_tokens=int(lengths.sum()), rollout_s=rollout_s,
                   update_s=time.perf_counter() - clock - rollout_s)
        logger.log(done, row, advance=1)
        if points:
            evaluated = next_point < len(points) and meter.gflops >= points[next_point]
            next_point = sum(p <= meter.gflops for p in points)
            last = next_point == len(points) or done == end
        else:
            evaluated = (config.eval.every and done % config.eval.every == 0) or done == ppo.updates
            last = done == ppo.updates
        if evaluated:
            run_evaluation(done)
        if done % config.checkpoint.every == 0 or evaluated or last:
            checkpointer.save(done, state, {"compute": meter.state(), "history": history,
                                            "algorithm": ppo.algorithm})
        if last:
            end = done
            break
    checkpointer.close()
    logger.close()
    return {"history": history, "final": history[-1]["results"] if history else {}, "params": state.params["policy"],
            "compute": meter.state(), "updates": end}
