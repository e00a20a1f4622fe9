"""PPO on V-IRL-VL (route following from a 2x2 grid of street views) with Llama-3.2-Vision (Mllama), from a V-IRL-VL
SFT checkpoint.

model.path must be given: the default (the embedded text-only SmolLM2) fails validation naming task.language_only
and model.path. E.g. `--config.model.path=/path/to/Llama-3.2-11B-Vision-Instruct
--config.ppo.init=runs/sft_virl_vl/checkpoints` (or an exported HF directory), and choose a mesh, e.g.
`--config.mesh.fsdp=8`. Empty route directories are synthetic cities built on first use under task.city_cache with
2048 px panoramas (minutes on few cores; a V-IRL-L city of thumbnails there is rebuilt). Views of task.view_size=640
px are resized to task.resolution=1200 (spec virl.md §1.10), rendered, preprocessed and encoded on the device at
every route point of the rollout; the route set's panoramas live on the device (2.9 GB for the synthetic city).
The reference's V-IRL-VL settings (training.md §4.6), set here: lr 1e-7, cosine T_max 20 updates, 15 updates,
verify_iter 2, temperature 0.2, 512 new tokens, max_grad_norm 1.0; about 2048 transitions per update (512 routes at
about 4 replies each), 4 epochs x 2 mini-batches = 8 optimizer steps per update, each over half the update's
transitions (the reference's grad_accum 128 x 8 GPUs = 1024); evaluation of 48 episodes (visual OOD: the 18-route
benchmark).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of a PPO run on V-IRL-VL."""
    config = base_config(job="ppo", run_name="ppo_virl_vl")
    config.model.dtype = "bfloat16"
    config.task.name = "virl"
    config.task.language_only = False
    config.task.verify_iter = 2
    config.task.resolution = 1200
    config.ppo.init = "model.path"
    config.ppo.updates = 15
    config.ppo.episodes = 512
    config.ppo.epochs = 4
    config.ppo.minibatches = 2
    config.ppo.micro_batches = 8
    config.ppo.lr = 1e-7
    config.ppo.lr_max_steps = 20
    config.ppo.max_new_tokens = 512
    config.ppo.feedback_tokens = 96  # margin over the 78 SmolLM2 tokens of the longest feedback (Llama-3 unmeasured)
    config.eval.every = 5
    config.eval.splits = "in_distribution,rule_ood,visual_ood"
    config.eval.episodes = 48
    config.eval.max_new_tokens = 256
    return config
