"""GRPO on GeneralPoints-L with sequential revision: configs/ppo_gp.py's job (SFT warm start, then RL, with
in-distribution and rule-OOD evaluation before and after) with the critic-free group-relative algorithm instead of
PPO. Embedded default: SmolLM2-135M-Instruct, sized to finish within 15 minutes on a 2-core CPU; the same SFT warm
start, episodes, epochs, mini-batches and single update as ppo_gp.py, so the two runs differ in the algorithm (and
its sampling temperature) only.

Each update draws 8 / 4 = 2 hands and rolls out 4 episodes of each; an episode's return is the sum of its replies'
rewards and every reply gets (return - group mean) / group std (training/grpo.py). Sampling at temperature 1.0 (TRL's
default): group-relative advantages need different replies within a group, which PPO's 0.2 rarely gives a small
model. No KL penalty (ppo.kl_coef=0, as TRL's default and DAPO / Dr. GRPO), token-level loss normalisation.
Variants: --config.ppo.algorithm=rloo (leave-one-out baseline); Dr. GRPO: --config.ppo.scale_rewards=none
--config.ppo.loss_norm=constant; the GRPO paper's: --config.ppo.loss_norm=sequence --config.ppo.kl_coef=0.04.

One GRPO update after 4 SFT steps, as ppo_gp.py. Measured on the project's 2-core CPU machine with nothing else
running (2026-12-08, load average 1.2 at the start): 12 min 55 s, peak RSS 8.4 GiB: startup and data 0.5 min, SFT
3.0 min, evaluations before 3.4 min, the GRPO update 4.2 min (rollout and update; sampling at 1.0 gives replies of
51 tokens on average against the 64-token budget), evaluations after 1.3 min, export 0.2 min.
A 135M model this briefly trained makes no 24 (success stays at 0%), as with ppo_gp.py; no group was flat.

The paper-scale recipe (Llama-3.2-11B-Vision GP-L SFT checkpoint, as configs/ppo_gp.py's; the same 2048 episodes
per update as the reference's PPO, as 256 hands x 8): --config.model.path=CKPT --config.ppo.init=model.path
--config.ppo.updates=20 --config.ppo.episodes=2048 --config.ppo.group_size=8 --config.ppo.epochs=1
--config.ppo.minibatches=16 --config.ppo.micro_batches=8 --config.ppo.lr=1e-6 --config.ppo.lr_max_steps=100
--config.ppo.clip=0.2 --config.ppo.temperature=1.0 --config.ppo.kl_coef=0.0 --config.ppo.max_new_tokens=512
--config.model.dtype=bfloat16 --config.eval.episodes=234 --config.eval.max_new_tokens=256. Compare with PPO at
matched compute on the GFLOPs axis of results.json (every group member's rollout is counted).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of a GRPO run on GP-L."""
    config = base_config(job="ppo", run_name="grpo_gp")
    config.sft.steps = 4
    config.sft.global_batch_size = 8
    config.sft.lr = 5e-5
    config.sft.warmup_ratio = 0.1
    config.data.num_examples = 1024
    config.data.seq_len = 320
    config.task.verify_iter = 3
    config.ppo.algorithm = "grpo"
    config.ppo.group_size = 4
    config.ppo.updates = 1
    config.ppo.episodes = 8
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.lr = 2e-6
    config.ppo.lr_max_steps = 6
    config.ppo.clip = 0.2
    config.ppo.temperature = 1.0
    config.ppo.max_new_tokens = 64
    config.checkpoint.every = 1
    config.eval.every = 0
    config.eval.episodes = 8
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 64
    return config
