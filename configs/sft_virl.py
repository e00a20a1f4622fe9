"""SFT on V-IRL-L expert data (absolute actions). Embedded default: SmolLM2-135M-Instruct, sized for a 2-core CPU.

The route directories default to '': on first use the job builds synthetic cities under task.city_cache
(data/virl_cities/train: 1000 routes; data/virl_cities/ood: the 18-route visual-OOD city; seconds for V-IRL-L) and
reuses them afterwards. Point task.route_dir / task.ood_route_dir at real route directories to use those instead.
Evaluation before and after: in_distribution, rule_ood (relative actions) and visual_ood, seed 12 and verify_iter 2
as in the reference's V-IRL evaluation (spec virl.md §1.10). data.seq_len 1024: the longest expert conversation of
the training city measured 925 SmolLM2 tokens (a longer one is an error naming data.seq_len).

Override any key: `python -m jaxrl_vlm.main --config=configs/sft_virl.py --config.sft.steps=200`.
The paper-scale setting (Llama-3.2-11B, V-IRL-L; training.md §3.3): --config.model.path=/path/to/hf_checkpoint
--config.sft.global_batch_size=128 --config.sft.lr=1e-6 --config.model.dtype=bfloat16 --config.eval.episodes=48
--config.eval.max_new_tokens=256 (visual_ood runs the 18 routes of its city once each).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of an SFT run on V-IRL-L."""
    config = base_config(job="sft", run_name="sft_virl")
    config.seed = 12
    config.task.name = "virl"
    config.task.verify_iter = 2
    config.sft.steps = 16
    config.sft.global_batch_size = 8
    config.sft.lr = 5e-5
    config.sft.warmup_ratio = 0.1
    config.checkpoint.every = 8
    config.data.num_examples = 1024
    config.data.seq_len = 1024
    config.eval.splits = "in_distribution,rule_ood,visual_ood"
    config.eval.episodes = 8
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 96
    return config
