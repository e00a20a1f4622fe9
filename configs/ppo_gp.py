"""PPO on GeneralPoints-L with sequential revision (`make run`). Embedded default: SmolLM2-135M-Instruct, sized to
finish within 15 minutes on a 2-core CPU: a short SFT warm start (RL from the base model fails, as the paper shows),
then PPO, with in-distribution and rule-OOD evaluation before, during and after. Measured on that machine
(2026-12-07) with 6 SFT steps and 3 updates: 21 min 49 s, peak RSS 8.9 GB (startup and data 1.5 min, SFT 4.5 min,
evaluations before 3.3 min of which about 1.7 min compiling, updates 4.3, 3.5 and 3.8 min, evaluations after 1.5
min), hence 4 SFT steps and one update here: 12 min 21 s quiet, peak 8.8 GB.

Override any key: `python -m jaxrl_vlm.main --config=configs/ppo_gp.py --config.ppo.updates=40`.
Start from an SFT run instead of the warm start: --config.ppo.init=runs/sft_gp/checkpoints (or an HF directory).
The paper-scale setting (Llama-3.2-11B-Vision SFT checkpoint, GP-L; training.md §4.6): --config.model.path=CKPT
--config.ppo.init=model.path --config.ppo.updates=20 --config.ppo.episodes=512 --config.ppo.epochs=4
--config.ppo.minibatches=2 --config.ppo.micro_batches=8 --config.ppo.lr=1e-6 --config.ppo.max_new_tokens=512
--config.model.dtype=bfloat16
--config.eval.episodes=234 --config.eval.max_new_tokens=256 (see README for GPU and TPU launch lines). As the
reference: 8 optimizer steps per update (4 epochs x 2 mini-batches, each half the update's transitions; its
grad_accum 128 x 8 GPUs = 1024 of its 2048 transitions), 512 episodes being about its 2048 transitions at about 4
replies per episode (the metrics rows' episode_turns say how many were played).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of a PPO run on GP-L."""
    config = base_config(job="ppo", run_name="ppo_gp")
    config.sft.steps = 4
    config.sft.global_batch_size = 8
    config.sft.lr = 5e-5
    config.sft.warmup_ratio = 0.1
    config.data.num_examples = 1024
    config.data.seq_len = 320
    config.task.verify_iter = 3
    config.ppo.updates = 1
    config.ppo.episodes = 8
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.lr = 2e-6
    config.ppo.lr_max_steps = 6
    config.ppo.max_new_tokens = 64
    config.checkpoint.every = 1
    config.eval.every = 0
    config.eval.episodes = 8
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 64
    return config
