"""The paper's comparison on GP-VL (`python -m jaxrl_vlm.study --config=configs/study_gp_vl.py
--config.model.path=/path/to/Llama-3.2-11B-Vision-Instruct`): Init by SFT on GP-VL expert data, then an SFT branch
and a PPO branch from it, evaluated in distribution, on rule OOD, on visual OOD (red suits) and on card recognition
at matched training compute, with the paper's Fig. 8 (recognition against success) beside Fig. 5-7
(`jaxrl_vlm/study.py`). model.path must name a Llama-3.2-Vision (Mllama) checkpoint: the embedded default is
text-only and fails validation. The reference's GP-VL settings (training.md §3.3, §4.6: SFT lr 5e-7, global batch
128; RL lr 1e-6, 8 optimizer steps per update of about 2048 transitions) with a budget and a mesh for the hardware,
e.g. --config.mesh.fsdp=8 (not yet run: it needs an accelerator).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of the GP-VL study (Llama-3.2-Vision)."""
    config = base_config(job="study", run_name="study_gp_vl")
    config.model.path = "/path/to/Llama-3.2-11B-Vision-Instruct"
    config.model.dtype = "bfloat16"
    config.task.language_only = False
    config.task.suits = "black"
    config.task.resolution = 1200
    config.sft.steps = 4000  # the SFT run's cap; it ends at the schedule's last point
    config.sft.schedule = "constant"
    config.sft.global_batch_size = 128
    config.sft.lr = 5e-7
    config.ppo.updates = 100  # the RL branch's cap
    config.ppo.episodes = 512
    config.ppo.epochs = 4
    config.ppo.minibatches = 2
    config.ppo.micro_batches = 8
    config.ppo.lr = 1e-6
    config.ppo.lr_max_steps = 100
    config.ppo.max_new_tokens = 512
    config.eval.splits = "in_dist,rule_ood,visual_ood,recognition"
    config.eval.max_new_tokens = 256
    config.study.init_steps = 400
    config.study.budget_gflops = 1e8
    config.study.points = 8
    return config
