"""SFT on GeneralPoints-L expert data. Embedded default: SmolLM2-135M-Instruct on the laptop-sized setting.

Override any key: `python -m jaxrl_vlm.main --config=configs/sft_gp.py --config.sft.steps=200`.
For Llama-3.2-11B-Vision use configs/sft_gp_vl.py with --config.model.path=/path/to/hf_checkpoint.
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of an SFT run on GP-L."""
    config = base_config(job="sft", run_name="sft_gp")
    config.sft.steps = 120
    config.sft.global_batch_size = 16
    config.sft.lr = 1e-4
    config.data.num_examples = 4096
    config.data.seq_len = 320
    return config
