"""The PPO training loop on GeneralPoints: rollouts and updates alternate, with periodic ID/OOD evaluation.

Each update u: reset `ppo.episodes` episodes of the configured task (key fold_in(seed, u)), roll them out on the
device (`rollout.rollout`, sampling at ppo.temperature / ppo.top_p), compact the conversations, and run one jitted
`ppo.make_ppo_update` step (score, GAE, epochs x mini-batches). Every `eval.every` updates (and before the first and
after the last) the policy is evaluated on `eval.splits` with the evaluation protocol (`evaluation.gp`). Metrics
carry the compute so far in GFLOPs (`flops.ComputeMeter`).

Optimizer (training.md §4.2, §4.5): Adam (b1 0.9, b2 0.999, eps 1e-7, no weight decay) over all model params and
the value head; global-norm clipping at ppo.max_grad_norm (1.0: what DeepSpeed applied in the reference's runs;
0.01 was configured but had no effect); cosine annealing from ppo.lr to ppo.end_lr with period 2 x
ppo.lr_max_steps updates, stepped once per update (the evident intent; the reference stepped it 8 times per update).

Checkpoints (every checkpoint.every updates and at the end) hold the train state, the update index, the compute
counters and the evaluation history; every random draw derives from (seed, update), so a resumed run continues
exactly as an uninterrupted one.
"""
from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from jaxrl_vlm.config import eval_splits
from jaxrl_vlm.envs.general_points import env as gp_env
from jaxrl_vlm.envs.general_points import prompt_tokens
from jaxrl_vlm.envs.general_points.cards import card_atlas, render_hands
from jaxrl_vlm.envs.general_points.token_bytes import token_byte_table
from jaxrl_vlm.evaluation.gp import GPEvaluator
from jaxrl_vlm.models.sharding import to_host
from jaxrl_vlm.shapes import round_up
from jaxrl_vlm.training import rollout as rollout_lib
from jaxrl_vlm.training.checkpoint import Checkpointer
from jaxrl_vlm.training.flops import ComputeMeter, param_count
from jaxrl_vlm.training.metrics import MetricsLogger
from jaxrl_vlm.training.optim import adamw
from jaxrl_vlm.training.policy import VISION_KEYS, PolicyModel, policy_model
from jaxrl_vlm.training.ppo import PPOBatch, PPOHyper, init_ppo_params, make_ppo_update, score_replies
from jaxrl_vlm.training.sft import mesh_of, place_on_mesh
from jaxrl_vlm.training.sft_step import TrainState

ACTION_KEY = ' "formula":'
WIDTH_ROUNDING = 128  # conversation widths of the update are rounded up to this: few shapes, few compilations
RENDER_CHUNK = 64


def action_pattern(tokenizer) -> np.ndarray:
    """int32[P] token ids of the GP action key ` "formula":` (the reference's [330, 60599, 794] for Llama 3)."""
    ids = tokenizer(ACTION_KEY, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer encodes the action key {ACTION_KEY!r} to no tokens")
    return np.asarray(ids, np.int32)


def cosine_annealing(lr: float, end_lr: float, period_updates: int, steps_per_update: int) -> optax.Schedule:
    """torch CosineAnnealingLR(T_max=period_updates, eta_min=end_lr) stepped once per PPO update, as a function of
    the optimizer step (steps_per_update optimizer steps per update)."""
    def schedule(step):
        update = step // steps_per_update
        return end_lr + (lr - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * update / period_updates))
    return schedule


def initial_ppo_state(config: mlc.ConfigDict, model: Any) -> tuple[TrainState, tuple[Any, optax.Schedule]]:
    """(TrainState at update 0 on the model's mesh: params {'policy': model.params, 'value': a fresh value head}
    and Adam state; (optax transformation, learning-rate schedule)) of config.ppo."""
    ppo = config.ppo
    schedule = cosine_annealing(ppo.lr, ppo.end_lr, ppo.lr_max_steps, ppo.epochs * ppo.minibatches)
    tx = adamw(schedule, b1=ppo.b1, b2=ppo.b2, eps=ppo.eps, weight_decay=ppo.weight_decay,
               max_grad_norm=ppo.max_grad_norm)
    hidden_size = policy_model(model, config.model.param_dtype, config.model.dtype).hidden_size
    value_key = jax.random.fold_in(jax.random.key(config.seed), 1 << 30)
    mesh = mesh_of(model)
    params = init_ppo_params(model.params, hidden_size, value_key, jnp.dtype(config.model.param_dtype), mesh)
    return place_on_mesh(TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), mesh), (tx, schedule)


def ppo_hyper(config: mlc.ConfigDict) -> PPOHyper:
    """PPOHyper of config.ppo."""
    p = config.ppo
    return PPOHyper(epochs=p.epochs, minibatches=p.minibatches, micro_batches=p.micro_batches, clip=p.clip,
                    value_coef=p.value_coef, gamma=p.gamma, lam=p.lam, temperature=p.temperature,
                    thought_coef=p.thought_coef, kl_coef=p.kl_coef, entropy_coef=p.entropy_coef)


def compact_cross_attention_mask(ids: np.ndarray, image_token_id: int, aspect_ratio_mask: np.ndarray) -> np.ndarray:
    """transformers' cross_attention_mask int32[E, L, 1, tiles] of compact conversations int[E, L] holding one image
    each: the tokens from the <|image|> token on see the image's used tiles (aspect_ratio_mask int[E, 1, tiles])."""
    has = ids == image_token_id
    if not has.any(axis=1).all():
        raise ValueError("a VL conversation holds no <|image|> token")
    first = np.argmax(has, axis=1)
    rows = np.arange(ids.shape[1])[None, :] >= first[:, None]
    return (rows[:, :, None, None] & (np.asarray(aspect_ratio_mask)[:, None, :, :] > 0)).astype(np.int32)


class GPRolloutSource:
    """Fresh GP episodes for rollouts: env params of the configured task, the prompt codec, the rollout shapes, and
    (GP-VL) rendered and preprocessed card images."""

    def __init__(self, config: mlc.ConfigDict, model: Any, tokenizer, policy: PolicyModel):
        task, ppo = config.task, config.ppo
        self.model = model
        self.language_only = task.language_only
        self.env_params = gp_env.make_params(target=task.target, face_cards_as_10=task.face_cards_as_10, ood=task.ood,
                                             suits=task.suits, verify_iter=task.verify_iter,
                                             language_only=task.language_only)
        self.codec = prompt_tokens.build_prompt_codec(tokenizer, language_only=task.language_only,
                                                      face_cards_as_10=task.face_cards_as_10, target=task.target,
                                                      fragment_texts=gp_env.feedback_fragment_texts())
        self.byte_table = token_byte_table(tokenizer, special_tokens="empty")
        self.atlas = None if task.language_only else jnp.asarray(card_atlas(task.card_dir or None))
        self.resolution = task.resolution
        self.num_episodes = ppo.episodes
        longest = max(int(x) for x in jax.device_get(prompt_tokens.prompt_ids(
            self.codec, jnp.repeat(jnp.arange(1, 14, dtype=jnp.int32)[:, None], 4, axis=1), width=4096).lengths))
        self.shapes = rollout_lib.RolloutShapes(
            turns=task.verify_iter, max_new_tokens=ppo.max_new_tokens, prompt_width=round_up(longest, 16),
            suffix_width=rollout_lib.suffix_width(self.codec, ppo.feedback_tokens))
        self.policy = policy
        self._reset = jax.jit(functools.partial(_reset_and_prompt, width=self.shapes.prompt_width,
                                                num_envs=self.num_episodes))

    def episodes(self, key: jax.Array) -> tuple[Any, prompt_tokens.TokenBatch, dict[str, Any] | None]:
        """(env states, left-padded first prompts, vision arrays or None) of num_episodes fresh episodes, on the
        model's batch sharding."""
        state, prompt = self._reset(key, self.env_params, self.codec)
        vision = None
        if not self.language_only:
            images = np.concatenate([  # in chunks: rendering holds a float copy of each 1200 px canvas
                np.asarray(render_hands(state.ranks[i:i + RENDER_CHUNK], state.suits[i:i + RENDER_CHUNK], self.atlas,
                                        resolution=self.resolution))
                for i in range(0, self.num_episodes, RENDER_CHUNK)])
            vision = self.model.vision_inputs([[image] for image in images], np.asarray(prompt.ids))
        place = lambda tree: jax.tree_util.tree_map(lambda x: self.model.put_batch(np.asarray(x)), tree)
        return place(state), place(prompt), None if vision is None else place(vision)


def _reset_and_prompt(key, env_params, codec, *, width: int, num_envs: int):
    _, state = gp_env.reset_batch(key, env_params, num_envs)
    return state, prompt_tokens.prompt_ids(codec, state.ranks, width=width, pad_id=0, padding_side="left")


@functools.partial(jax.jit, static_argnames=("width", "pad_id"))
def _compact(slot_tokens, slot_valid, *, width: int, pad_id: int):
    return rollout_lib.compact(slot_tokens, slot_valid, width, pad_id)


def _encode_images_fn(policy: PolicyModel):
    return jax.jit(lambda params, vision: policy.encode_images(
        params, {k: vision[k] for k in VISION_KEYS}, vision["cross_attention_mask"]))


def train_ppo(config: mlc.ConfigDict, model: Any, tokenizer, *, init_tokens: int = 0,
              stop_after_update: int | None = None) -> dict[str, Any]:
    """Run (or resume) PPO from the model's params; returns {'history': evaluations, 'final': last evaluation,
    'params': final policy params, 'compute': counters, 'updates': done}.

    The model's param buffers are donated to the training state (the KL reference, when on, is a copy).
    init_tokens: tokens the starting checkpoint was fine-tuned on (D_init of the compute axis).
    stop_after_update: stop after that update as if killed (tests of exact resume).
    """
    ppo = config.ppo
    policy = policy_model(model, config.model.param_dtype, config.model.dtype, remat=ppo.remat)
    source = GPRolloutSource(config, model, tokenizer, policy)
    hyper = ppo_hyper(config)
    steps_per_update = ppo.epochs * ppo.minibatches
    # a copy: the train state starts from (and donates) the model's own param buffers
    reference = jax.tree_util.tree_map(jnp.copy, model.params) if ppo.kl_coef > 0 else None
    state, (tx, schedule) = initial_ppo_state(config, model)
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    pattern = jnp.asarray(action_pattern(tokenizer))
    update_fn = jax.jit(make_ppo_update(policy, tx, hyper, pattern),
                        donate_argnums=0, out_shardings=(shardings, None))
    score_ref = jax.jit(lambda p, b: score_replies(policy, {"policy": p}, b, pattern, hyper).logp)
    encode_images = _encode_images_fn(policy)
    evaluator = GPEvaluator(model, tokenizer, language_only=config.task.language_only, target=config.task.target,
                            resolution=config.task.resolution, card_dir=config.task.card_dir or None)
    splits = eval_splits(config)
    meter = ComputeMeter(param_count(model.params), init_tokens=init_tokens)
    history: list[dict[str, Any]] = []
    checkpointer = Checkpointer(os.path.join(config.out_dir, "checkpoints"), max_to_keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save)
    start = 0
    restored = checkpointer.restore_latest(state) if config.checkpoint.resume else None
    if restored is not None:
        start, state, metadata = restored
        meter = ComputeMeter.from_state(metadata["compute"])
        history = list(metadata["history"])
    logger = MetricsLogger(config.out_dir, ppo.updates, enabled=jax.process_index() == 0,
                           tensorboard=config.log.tensorboard, wandb_project=config.log.wandb_project or None,
                           config=config.to_dict(), desc="ppo", initial_step=start)

    def evaluate(update: int) -> None:
        results = {split: evaluator.evaluate(split, episodes=config.eval.episodes, batch_size=config.eval.batch_size,
                                             max_new_tokens=config.eval.max_new_tokens,
                                             temperature=config.eval.temperature, verify_iter=config.task.verify_iter,
                                             seed=config.seed, params=state.params["policy"])
                   for split in splits}
        history.append({"update": update, "gflops": meter.gflops, "results": results})
        logger.log(update, {"gflops": meter.gflops, **{f"eval/{s}/success": _headline(r) for s, r in results.items()}})

    if start == 0 and not history:
        evaluate(0)
    key = jax.random.key(config.seed)
    eos_ids = jnp.asarray(model.eos_token_ids, jnp.int32)
    end = ppo.updates if stop_after_update is None else min(ppo.updates, stop_after_update)
    for update in range(start, end):
        clock = time.perf_counter()
        reset_key, sample_key, update_key = jax.random.split(jax.random.fold_in(key, update), 3)
        env_state, prompt, vision = source.episodes(reset_key)
        extra = None if vision is None else encode_images(state.params["policy"], vision)
        episodes = rollout_lib.rollout(policy.decoder, state.params["policy"], source.codec, source.env_params,
                                       source.byte_table, env_state, prompt, extra, sample_key,
                                       jnp.float32(ppo.temperature), jnp.float32(ppo.top_p), eos_ids,
                                       shapes=source.shapes, pad_id=model.pad_id)
        lengths = to_host(jnp.sum(episodes.slot_valid, axis=1))
        rollout_s = time.perf_counter() - clock
        width = min(round_up(int(lengths.max()), WIDTH_ROUNDING), source.shapes.capacity)
        ids, mask = _compact(episodes.slot_tokens, episodes.slot_valid, width=width, pad_id=model.pad_id)
        batch_vision = None
        if vision is not None:
            cross = compact_cross_attention_mask(to_host(ids), model.config.image_token_index,
                                                 to_host(vision["aspect_ratio_mask"]))
            batch_vision = {**{k: vision[k] for k in VISION_KEYS}, "cross_attention_mask": model.put_batch(cross)}
        batch = PPOBatch(ids, mask, episodes.reply_tokens, episodes.reply_len, episodes.reply_start,
                         episodes.turn_valid, episodes.reward, batch_vision)
        if reference is not None:
            batch = batch._replace(ref_logp=score_ref(reference, batch))
        state, metrics = update_fn(state, batch, update_key)
        metrics = jax.tree_util.tree_map(to_host, metrics)
        conversation_tokens = int(lengths.sum())
        forward_passes = 2 + (reference is not None)  # rollout, scoring of old log-probs/values, KL reference
        meter.add(train=conversation_tokens * ppo.epochs, buffer=forward_passes * conversation_tokens)
        host = [to_host(x) for x in (episodes.success, episodes.turn_valid, episodes.reply_len, episodes.overflow)]
        done = update + 1
        row = {k: float(v) for k, v in metrics.items()}
        row.update(rollout_success=float(host[0].mean()), episode_turns=float(host[1].sum(1).mean()),
                   reply_tokens=float(host[2][host[1]].mean()), feedback_overflow=int(host[3].sum()),
                   lr=float(schedule(update * steps_per_update)), gflops=meter.gflops, rollout_s=rollout_s,
                   update_s=time.perf_counter() - clock - rollout_s)
        logger.log(done, row, advance=1)
        if (config.eval.every and done % config.eval.every == 0) or done == ppo.updates:
            evaluate(done)
        if done % config.checkpoint.every == 0 or done == ppo.updates:
            checkpointer.save(done, state, {"compute": meter.state(), "history": history})
    checkpointer.close()
    logger.close()
    return {"history": history, "final": history[-1]["results"] if history else {}, "params": state.params["policy"],
            "compute": meter.state(), "updates": end}


def _headline(result: dict[str, Any]) -> float:
    return float(result.get("success", result.get("recognition_accuracy", math.nan)))
