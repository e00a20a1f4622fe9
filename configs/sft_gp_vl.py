"""SFT on GeneralPoints-VL expert data (card images, black suits) with Llama-3.2-Vision (Mllama).

Point it at the real checkpoint: `--config.model.path=/path/to/Llama-3.2-11B-Vision-Instruct` (an HF directory with
config.json, safetensors and the tokenizer), and choose a mesh, e.g. `--config.mesh.fsdp=8`.
The reference used lr 5e-7 for GP-VL with a global batch of 128 (training.md §3.3).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of an SFT run on GP-VL."""
    config = base_config(job="sft", run_name="sft_gp_vl")
    config.model.path = "/path/to/Llama-3.2-11B-Vision-Instruct"
    config.model.dtype = "bfloat16"
    config.task.language_only = False
    config.task.suits = "black"
    config.task.resolution = 1200
    config.sft.steps = 400
    config.sft.global_batch_size = 128
    config.sft.lr = 5e-7
    config.sft.trainable = "all"
    config.data.num_examples = 51200
    config.data.seq_len = 512
    config.eval.splits = "in_dist,rule_ood,visual_ood,recognition"
    return config
