"""PPO on V-IRL-L (route following from text observations, absolute actions) with sequential revision. Embedded
default: SmolLM2-135M-Instruct, meant to finish within 15 minutes on a 2-core CPU: a short SFT warm start on V-IRL-L
expert data (RL from the base model fails, as the paper shows), then PPO, with in-distribution, rule-OOD and
visual-OOD evaluation before and after.

The route directories default to '': on first use the job builds synthetic cities under task.city_cache
(data/virl_cities/train: 1000 routes; data/virl_cities/ood: the 18-route visual-OOD city; seconds for V-IRL-L) and
reuses them afterwards. data.seq_len 1024 fits the warm start's longest expert conversation (925 SmolLM2 tokens);
ppo.feedback_tokens 80 fits the longest 'You failed this trial because ...' feedback (78 SmolLM2 tokens);
max_new_tokens 64 fits the expert's replies (at most 59 SmolLM2 tokens on the training city).

Override any key: `python -m jaxrl_vlm.main --config=configs/ppo_virl.py --config.ppo.updates=15`.
Start from an SFT run instead of the warm start: --config.ppo.init=runs/sft_virl/checkpoints (or an HF directory).
The paper-scale setting (Llama-3.2-11B-Vision V-IRL-L SFT checkpoint; training.md §4.6): --config.model.path=CKPT
--config.ppo.init=model.path --config.ppo.updates=15 --config.ppo.lr_max_steps=20 --config.ppo.episodes=512
(routes per update: the reference's 2048 transitions at about 4 replies per route; the metrics rows' episode_turns
say how many) --config.ppo.epochs=4 --config.ppo.minibatches=2 --config.ppo.micro_batches=8
--config.ppo.lr=1e-6 --config.ppo.temperature=0.2 --config.ppo.max_new_tokens=512 --config.ppo.max_grad_norm=1.0
--config.model.dtype=bfloat16 --config.eval.episodes=48 --config.eval.max_new_tokens=256 (visual OOD: the 18-route
benchmark, one episode per route). 4 epochs x 2 mini-batches = the reference's 8 optimizer steps per update, each over
half the update's transitions (its grad_accum 128 x 8 GPUs = 1024 transitions).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of a PPO run on V-IRL-L."""
    config = base_config(job="ppo", run_name="ppo_virl")
    config.task.name = "virl"
    config.task.verify_iter = 2
    config.sft.steps = 3
    config.sft.global_batch_size = 4
    config.sft.lr = 5e-5
    config.sft.warmup_ratio = 0.1
    config.data.num_examples = 1024
    config.data.seq_len = 1024
    config.ppo.updates = 1
    config.ppo.episodes = 8
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.lr = 2e-6
    config.ppo.lr_max_steps = 20
    config.ppo.max_new_tokens = 64
    config.ppo.feedback_tokens = 80
    config.checkpoint.every = 1
    config.eval.every = 0
    config.eval.splits = "in_distribution,rule_ood,visual_ood"
    config.eval.episodes = 4
    config.eval.batch_size = 4
    config.eval.max_new_tokens = 64
    return config
