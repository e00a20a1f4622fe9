"""The paper's comparison on V-IRL-L (`python -m jaxrl_vlm.study --config=configs/study_virl_l.py`): Init by SFT on
V-IRL-L expert data, then an SFT branch and a PPO branch from it, evaluated in distribution, on rule OOD (relative
turns) and on visual OOD (the 18-route city) at matched training compute (`jaxrl_vlm/study.py`). Route directories
default to synthetic cities built on first use under task.city_cache, as configs/ppo_virl.py's. Embedded default:
SmolLM2-135M-Instruct with configs/ppo_virl.py's sizes; each branch gets 60,000 GFLOPs beyond Init at 2 points (not
yet run: V-IRL prompts are about 4x GP's, so expect several times the GP-L study's time on a CPU). The paper's scale
(Llama-3.2-11B-Vision; training.md §3.3, §4.6): --config.model.path=CKPT --config.model.dtype=bfloat16
--config.sft.lr=1e-6 --config.sft.global_batch_size=128 --config.study.init_steps=400 --config.ppo.episodes=512
--config.ppo.epochs=4 --config.ppo.minibatches=2 --config.ppo.lr=1e-6 --config.ppo.lr_max_steps=20
--config.ppo.temperature=0.2 --config.ppo.max_new_tokens=512 --config.eval.episodes=48
--config.eval.max_new_tokens=256 with a budget and mesh for the hardware (README).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of the V-IRL-L study on the embedded default model."""
    config = base_config(job="study", run_name="study_virl_l")
    config.task.name = "virl"
    config.task.verify_iter = 2
    config.data.num_examples = 1024
    config.data.seq_len = 1024
    config.sft.steps = 400  # the SFT run's cap; it ends at the schedule's last point
    config.sft.schedule = "constant"
    config.sft.global_batch_size = 4
    config.sft.lr = 5e-5
    config.sft.warmup_ratio = 0.0075  # 3 warm-up steps: the Init's
    config.ppo.episodes = 8
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.updates = 100  # the RL branch's cap
    config.ppo.lr = 2e-6
    config.ppo.lr_max_steps = 20
    config.ppo.max_new_tokens = 64
    config.ppo.feedback_tokens = 80
    config.checkpoint.every = 5
    config.checkpoint.keep = 2
    config.eval.splits = "in_distribution,rule_ood,visual_ood"
    config.eval.episodes = 8
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 64
    config.study.init_steps = 3
    config.study.budget_gflops = 6e4
    config.study.points = 2
    return config
