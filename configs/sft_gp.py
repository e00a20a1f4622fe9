"""SFT on GeneralPoints-L expert data. Embedded default: SmolLM2-135M-Instruct, sized for a 2-core CPU (`make run`).

Override any key: `python -m jaxrl_vlm.main --config=configs/sft_gp.py --config.sft.steps=400`.
The paper-scale setting (Llama-3.2-11B, GP-L): --config.model.path=/path/to/hf_checkpoint --config.sft.steps=400
--config.sft.global_batch_size=128 --config.sft.lr=1e-6 --config.eval.episodes=234 --config.eval.max_new_tokens=256
(lr 1e-6 and batch 128 are the reference's, training.md §3.3).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of an SFT run on GP-L."""
    config = base_config(job="sft", run_name="sft_gp")
    config.sft.steps = 16
    config.sft.global_batch_size = 8
    config.sft.lr = 5e-5
    config.sft.warmup_ratio = 0.1
    config.checkpoint.every = 8
    config.data.num_examples = 1024
    config.data.seq_len = 320
    config.eval.episodes = 8
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 64
    return config
