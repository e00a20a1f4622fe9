"""The paper's comparison on V-IRL-VL (`python -m jaxrl_vlm.study --config=configs/study_virl_vl.py
--config.model.path=/path/to/Llama-3.2-11B-Vision-Instruct`): Init by SFT on V-IRL-VL expert data, then an SFT
branch and a PPO branch from it, evaluated in distribution, on rule OOD and on the 18-route visual-OOD benchmark at
matched training compute (`jaxrl_vlm/study.py`). model.path must name a Llama-3.2-Vision (Mllama) checkpoint. Views
of task.view_size px resized to task.resolution, rendered and encoded on the device (configs/ppo_virl_vl.py). The
reference's V-IRL-VL settings (training.md §3.3, §4.6: SFT lr 5e-7, global batch 128; RL lr 1e-7, cosine T_max 20, 8
optimizer steps per update) with a budget and a mesh for the hardware, e.g. --config.mesh.fsdp=8 (not yet run: it
needs an accelerator).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of the V-IRL-VL study (Llama-3.2-Vision)."""
    config = base_config(job="study", run_name="study_virl_vl")
    config.model.path = "/path/to/Llama-3.2-11B-Vision-Instruct"
    config.model.dtype = "bfloat16"
    config.task.name = "virl"
    config.task.language_only = False
    config.task.verify_iter = 2
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
    config.ppo.lr = 1e-7
    config.ppo.lr_max_steps = 20
    config.ppo.max_new_tokens = 512
    config.ppo.feedback_tokens = 96
    config.eval.splits = "in_distribution,rule_ood,visual_ood"
    config.eval.episodes = 48
    config.eval.max_new_tokens = 256
    config.study.init_steps = 400
    config.study.budget_gflops = 1e8
    config.study.points = 8
    return config
