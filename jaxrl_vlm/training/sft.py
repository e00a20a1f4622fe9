"""The SFT job: expert data -> a trained, checkpointed, exported model (spec training.md §3).

Choices (the reference's effective behaviour is in training.md §3.3): AdamW (b1 0.9, b2 0.98, eps 1e-7, no weight
decay), global-norm clipping at 1.0, linear warm-up over `warmup_ratio` of the steps then cosine decay
(`sft.schedule='cosine'`, the evident intent) or constant (`'constant'`: what the reference's DeepSpeed JSON
silently made it; the study uses it, so where a branch stops does not change its schedule). Loss: mean
cross-entropy over the assistant reply tokens including the end-of-turn token (conversation.py). Checkpoints hold
the train state, the data position and the evaluation history, so a killed run resumes on exactly the batches and
the loss curve of an uninterrupted run.

Evaluations at a compute schedule (`train_sft(..., evaluate=..., eval_gflops=...)`, the study's SFT branch): after
the step whose compute reaches the next scheduled GFLOPs, the params are evaluated, the record {'step', 'gflops',
'results'} joins the history and a checkpoint is saved with it; the run ends after the last scheduled point.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections as mlc
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.data.batching import SFTBatch, SFTBatcher
from jaxrl_vlm.data.expert import expert_conversations
from jaxrl_vlm.models import api as models_api
from jaxrl_vlm.models import llama, mllama
from jaxrl_vlm.models.mllama_port import MllamaModel
from jaxrl_vlm.models.sharding import make_mesh
from jaxrl_vlm.models.tokenizer import load_tokenizer
from jaxrl_vlm.training.checkpoint import Checkpointer
from jaxrl_vlm.training.flops import ComputeMeter, image_tokens, param_count
from jaxrl_vlm.training.metrics import MetricsLogger
from jaxrl_vlm.training.optim import adamw, trainable_mask, warmup_constant_schedule, warmup_cosine_schedule
from jaxrl_vlm.training.sft_step import TrainState, init_train_state, make_sft_step

FROZEN_PATTERNS = {
    "all": (),
    "freeze_vision": (r"^vision/",),
    "freeze_vision_and_projector": (r"^vision/", r"^projector/"),
}


def build_mesh(mesh_config: mlc.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: this job's, `jax.devices()`; a plan passes a target's);
    data=-1 takes all devices that fsdp and tensor leave.

    A mesh smaller than the device count uses the first devices (single-process runs only, e.g. a 1-device run).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    fsdp, tensor = mesh_config.fsdp, mesh_config.tensor
    data = mesh_config.data
    if data == -1:
        if n % (fsdp * tensor):
            raise ValueError(f"mesh fsdp={fsdp} x tensor={tensor} does not divide the {n} devices")
        data = n // (fsdp * tensor)
    total = data * fsdp * tensor
    multi_host = len({d.process_index for d in devices}) > 1
    if total > n or (total < n and multi_host):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {total} devices, but {n} are available"
                         + (" (multi-process runs must use every device)" if total < n else ""))
    return make_mesh(data=data, fsdp=fsdp, tensor=tensor, devices=devices[:total])


def _global_batch(batch: SFTBatch, mesh: Mesh, model: Any) -> dict[str, jax.Array]:
    """This host's rows of a batch -> global arrays sharded over the batch axes ('data', 'fsdp').

    Image conversations add the model's vision inputs (pixel_values, aspect ratios, cross_attention_mask)."""
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    arrays = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "loss_mask": batch.loss_mask}
    if batch.images is not None:
        arrays.update(model.vision_inputs([[image] for image in batch.images], batch.input_ids))
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for name, value in arrays.items()}


def place_on_mesh(tree: Any, mesh: Mesh) -> Any:
    """Leaves already sharded over `mesh` stay; others (e.g. optimizer step counters) are replicated over it."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(x):
        on_mesh = isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        return x if on_mesh else jax.device_put(x, replicated)

    return jax.tree_util.tree_map(place, tree)


def make_apply_fn(model: Any, param_dtype: str, compute_dtype: str, remat: bool) -> Callable[..., jax.Array]:
    """apply(params, input_ids, attention_mask, **vision) -> f32 logits for a loaded Llama or Mllama model whose params
    are stored in param_dtype, computing in compute_dtype (e.g. fp32 master weights with bf16 compute); remat
    recomputes each decoder layer in the backward pass (gradient checkpointing, as the reference trains)."""
    config = model.config.with_dtypes(param_dtype, compute_dtype).with_remat(remat)
    if isinstance(model, models_api.LlamaModel):
        return functools.partial(llama.forward, config=config, mesh_rules=model.mesh_rules)
    if isinstance(model, MllamaModel):
        return functools.partial(mllama.forward, config=config, mesh_rules=model.mesh_rules)
    raise NotImplementedError(f"SFT supports Llama and Mllama models, got {type(model).__name__}")


def build_optimizer(config: mlc.ConfigDict, params: Any):
    """(optax transformation, learning-rate schedule) of config.sft for a params pytree."""
    sft = config.sft
    warmup = int(round(sft.warmup_ratio * sft.steps))
    schedule = (warmup_constant_schedule(sft.lr, warmup) if sft.schedule == "constant"
                else warmup_cosine_schedule(sft.lr, sft.steps, warmup, sft.end_lr))
    tx = adamw(schedule, b1=sft.b1, b2=sft.b2, eps=sft.eps, weight_decay=sft.weight_decay,
               max_grad_norm=sft.max_grad_norm, trainable=trainable_mask(params, FROZEN_PATTERNS[sft.trainable]))
    return tx, schedule


def sft_step_program(config: mlc.ConfigDict, model: Any, tx: Any, state_shardings: Any) -> Callable[..., Any]:
    """The jitted SFT update `step(state: TrainState, batch, rng) -> (state, metrics)` of config.sft for a loaded
    (or `models.abstract`) model: state donated and kept on `state_shardings` (a TrainState of NamedShardings)."""
    apply_fn = make_apply_fn(model, config.model.param_dtype, config.model.dtype, config.sft.remat)
    return jax.jit(make_sft_step(apply_fn, tx, micro_batches=config.sft.micro_batches), donate_argnums=0,
                   out_shardings=(state_shardings, None))


def checkpoint_dir(config: mlc.ConfigDict) -> str:
    """Where a run keeps its orbax checkpoints."""
    return os.path.join(config.out_dir, "checkpoints")


def mesh_of(model: Any) -> Mesh:
    """The mesh a loaded model's params live on (a 1-device mesh for unsharded params)."""
    leaf = jax.tree_util.tree_leaves(model.params)[0]
    if isinstance(leaf.sharding, NamedSharding):
        return leaf.sharding.mesh
    return make_mesh(devices=list(leaf.devices())[:1])


def train_sft(config: mlc.ConfigDict, *, model: Any = None, tokenizer: Any = None,
              stop_after_step: int | None = None, evaluate: Callable[[Any], dict[str, dict]] | None = None,
              eval_gflops: Sequence[float] = ()) -> tuple[dict[str, Any], TrainState]:
    """Run (or resume) the SFT job of `config`; returns (summary: final loss, steps, tokens trained on (non-padding,
    this host's count x process count), their compute 6 N D_sft in GFLOPs (`flops.ComputeMeter`; logged with every
    metrics row), the evaluation history, paths; the final TrainState).

    model/tokenizer: already loaded ones (default: load config.model.path onto the configured mesh). The model's
    param buffers are donated to the training state. stop_after_step: pause after that global step (a checkpoint is
    saved there; a later call resumes), e.g. the study's Init or tests of exact resume. evaluate(params) ->
    {split: result} with eval_gflops (ascending): evaluate at that compute schedule and end after its last point
    (module docstring).
    """
    config_lib.validate(config)
    sft = config.sft
    model_path = config_lib.resolve_model_path(config.model.path)
    if model is None:
        model = models_api.load(model_path, dtype=config.model.param_dtype, mesh=build_mesh(config.mesh))
    mesh = mesh_of(model)
    tokenizer = tokenizer or load_tokenizer(model_path)
    get_example, num_examples = expert_conversations(config, tokenizer)
    batcher = SFTBatcher(get_example, num_examples, global_batch_size=sft.global_batch_size,
                         seq_len=config.data.seq_len, pad_id=model.pad_id, seed=config.data.seed,
                         host_index=jax.process_index(), num_hosts=jax.process_count())
    tx, schedule = build_optimizer(config, model.params)
    state = place_on_mesh(init_train_state(model.params, tx), mesh)
    step_fn = sft_step_program(config, model, tx, jax.tree_util.tree_map(lambda x: x.sharding, state))

    checkpointer = Checkpointer(checkpoint_dir(config), max_to_keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save)
    start = 0
    meter = ComputeMeter(param_count(model.params))
    history: list[dict[str, Any]] = []
    restored = checkpointer.restore_latest(state) if config.checkpoint.resume else None
    if restored is not None:
        start, state, metadata = restored
        batcher.restore(metadata["batcher"])
        meter.add(train=int(metadata.get("tokens", 0)))
        history = list(metadata.get("history", []))
    points = sorted(eval_gflops) if evaluate is not None else []
    next_point = sum(p <= meter.gflops for p in points)  # a point reached before a save was evaluated before it
    logger = MetricsLogger(config.out_dir, sft.steps, enabled=jax.process_index() == 0,
                           tensorboard=config.log.tensorboard, wandb_project=config.log.wandb_project or None,
                           config=config.to_dict(), desc="sft", initial_step=start)
    rng = jax.random.key(config.seed)
    last_loss = float("nan")
    tokens_seen, clock, logged = 0, time.perf_counter(), start
    end = sft.steps if stop_after_step is None else min(sft.steps, stop_after_step)
    if points and next_point == len(points):
        end = start  # every scheduled evaluation is done
    for step in range(start, end):
        batch = next(batcher)
        images = 0 if batch.images is None else len(batch.images)
        batch_tokens = (int(batch.attention_mask.sum()) + images * image_tokens(model.config)) * jax.process_count()
        tokens_seen += batch_tokens
        meter.add(train=batch_tokens)
        state, metrics = step_fn(state, _global_batch(batch, mesh, model), jax.random.fold_in(rng, step))
        done = step + 1
        if done % config.log.every == 0 or done == end:
            last_loss = float(metrics["loss"])
            elapsed = time.perf_counter() - clock
            logger.log(done, {"loss": last_loss, "grad_norm": float(metrics["grad_norm"]),
                              "lr": float(schedule(step)), "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                              "tokens": meter.train_tokens, "gflops": meter.gflops},
                       advance=done - logged)
            tokens_seen, clock, logged = 0, time.perf_counter(), done
        evaluated = next_point < len(points) and meter.gflops >= points[next_point]
        if evaluated:
            results = evaluate(state.params)
            history.append({"step": done, "gflops": meter.gflops, "results": results})
            logger.log(done, {"gflops": meter.gflops, **{f"eval/{split}/success": float(r["success"])
                                                          for split, r in results.items()}})
            next_point = sum(p <= meter.gflops for p in points)
        last = done == end or (points and next_point == len(points))
        if done % config.checkpoint.every == 0 or done == sft.steps or evaluated or last:
            checkpointer.save(done, state, {"batcher": list(batcher.state), "tokens": meter.train_tokens,
                                            "history": history})
        if last:
            end = done
            break
    checkpointer.close()
    logger.close()
    summary: dict[str, Any] = {"steps": end, "loss": last_loss, "tokens": meter.train_tokens, "gflops": meter.gflops,
                               "checkpoints": checkpointer.directory, "history": history}
    if end == sft.steps and config.checkpoint.export_hf and hasattr(model, "export"):
        export_dir = os.path.join(config.out_dir, "hf_export")
        models_api.with_params(model, state.params).export(export_dir)
        summary["hf_export"] = export_dir
    return summary, state
