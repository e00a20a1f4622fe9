"""The paper's comparison on GP-L (`python -m jaxrl_vlm.study --config=configs/study_gp_l.py`): Init by SFT, then an
SFT branch and a PPO branch from it, evaluated in distribution and on rule OOD at matched training compute
(`jaxrl_vlm/study.py`). Embedded default: SmolLM2-135M-Instruct sized for a 2-core CPU in about 2 hours of background
time (RESULTS.md has the run): Init = 6 SFT steps of 8 expert examples; each branch gets 30,000 GFLOPs beyond Init
(about 17 SFT steps or 2 PPO updates of 8 episodes: an update counts every reply with its whole prompt), evaluated at
2 points on the same 16 episodes per split. A 135M model trained this little does not learn to make 24; the
table's outcome shares show what each branch changed in its replies. A larger budget: --config.study.budget_gflops
and --config.study.points in a fresh out_dir (finished stages are not extended).

One GPU (H100/H200, SmolLM2; sized for about 10 minutes, not yet run: no GPU has been lent to this work):
--config.study.budget_gflops=2e6 --config.study.points=6 --config.ppo.episodes=64 --config.sft.global_batch_size=32
--config.eval.episodes=234 --config.eval.batch_size=234
--config.model.dtype=bfloat16 (install jax[cuda12] into the venv first).
The paper's scale (Llama-3.2-11B-Vision, GP-L; training.md §3.3, §4.6): --config.model.path=CKPT
--config.model.dtype=bfloat16 --config.sft.lr=1e-6 --config.sft.global_batch_size=128 --config.study.init_steps=400
--config.ppo.episodes=512 --config.ppo.epochs=4 --config.ppo.minibatches=2 --config.ppo.lr=1e-6
--config.ppo.lr_max_steps=100 --config.ppo.max_new_tokens=512 --config.task.verify_iter=5 --config.eval.episodes=234
--config.eval.max_new_tokens=256 with a budget and mesh for the hardware (README).
"""
from jaxrl_vlm.config import base_config


def get_config():
    """Config of the GP-L study on the embedded default model."""
    config = base_config(job="study", run_name="study_gp_l")
    config.task.verify_iter = 3
    config.data.num_examples = 2048
    config.data.seq_len = 320
    config.sft.steps = 400  # the SFT run's cap; it ends at the schedule's last point
    config.sft.schedule = "constant"
    config.sft.global_batch_size = 8
    config.sft.lr = 5e-5
    config.sft.warmup_ratio = 0.015  # 6 warm-up steps: the Init's
    config.ppo.episodes = 8
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.updates = 100  # the RL branch's cap
    config.ppo.lr = 2e-6
    config.ppo.lr_max_steps = 20
    config.ppo.max_new_tokens = 64
    config.checkpoint.every = 5
    config.checkpoint.keep = 2
    config.eval.episodes = 16
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 64
    config.study.init_steps = 6
    config.study.budget_gflops = 3e4
    config.study.points = 2
    return config
