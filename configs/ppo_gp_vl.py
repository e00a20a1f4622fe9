"""PPO on GeneralPoints-VL (card images, black suits) with Llama-3.2-Vision (Mllama), from a GP-VL SFT checkpoint.

Point it at the real model and its SFT checkpoint, e.g. `--config.model.path=/path/to/Llama-3.2-11B-Vision-Instruct
--config.ppo.init=runs/sft_gp_vl/checkpoints` (or an exported HF directory), and choose a mesh, e.g.
`--config.mesh.fsdp=8`. The reference's GP-VL settings (training.md §4.6): lr 1e-6, cosine T_max 100, 20 updates of
about 2048 transitions (512 episodes at about 4 replies each), 4 epochs x 2 mini-batches = 8 optimizer steps per
update, each over half the update's transitions (grad_accum 128 x 8 GPUs = 1024), verify_iter 5, temperature 0.2,
512 new tokens. Evaluation covers in-distribution,
rule OOD, visual OOD (red suits) and card recognition. On an 8-GPU node add `--config.mesh.rollout_tensor=8`: rollouts
then decode tensor-parallel over the node instead of all-gathering the FSDP-sharded weights at every token (PLANS.md).
Plan it first: `python -m jaxrl_vlm.plan --config=configs/ppo_gp_vl.py ... --target=h100x8`.
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of a PPO run on GP-VL."""
    config = base_config(job="ppo", run_name="ppo_gp_vl")
    config.model.path = "/path/to/Llama-3.2-11B-Vision-Instruct"
    config.model.dtype = "bfloat16"
    config.task.language_only = False
    config.task.suits = "black"
    config.task.resolution = 1200
    config.ppo.init = "model.path"
    config.ppo.updates = 20
    config.ppo.episodes = 512
    config.ppo.epochs = 4
    config.ppo.minibatches = 2
    config.ppo.micro_batches = 8
    config.ppo.max_new_tokens = 512
    config.eval.every = 5
    config.eval.splits = "in_dist,rule_ood,visual_ood,recognition"
    return config
