"""The PPO job end to end on tiny random models: exact resume, the `main` entry point (SFT warm start, PPO, table,
plot, checkpoint) and a GP-VL smoke run with a tiny Mllama (configs/ppo_gp_vl.py)."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.evaluation import job
from jaxrl_vlm.training.ppo_train import train_ppo
from tiny_models import save_tiny_gp_mllama


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join("configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def small(config, out_dir, checkpoint):
    config.out_dir = str(out_dir)
    config.model.path = checkpoint
    config.model.dtype = "float32"
    config.ppo.init = config_lib.PPO_INIT_BASE
    config.ppo.updates = 2
    config.ppo.episodes = 4
    config.ppo.epochs = 1
    config.ppo.minibatches = 2
    config.ppo.micro_batches = 1
    config.ppo.max_new_tokens = 8
    config.ppo.lr = 1e-3
    config.task.verify_iter = 2
    config.eval.every = 0
    config.eval.episodes = 2
    config.eval.batch_size = 2
    config.eval.max_new_tokens = 8
    config.checkpoint.every = 1
    config.checkpoint.async_save = False
    config.checkpoint.export_hf = False
    config.log.tensorboard = False
    config.mesh.data = 1
    return config


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [row for row in map(json.loads, f) if "loss" in row]


def with_penalties(config):
    """The optional KL penalty to the initial policy and entropy bonus, on."""
    config.ppo.kl_coef = 0.05
    config.ppo.entropy_coef = 0.01
    return config


def test_kill_and_resume_is_bitwise_equal(tmp_path, tiny_checkpoint):
    config = with_penalties(small(load_config("ppo_gp"), tmp_path / "straight", tiny_checkpoint))
    model, tokenizer = job.load_checkpoint(config, None)
    straight = train_ppo(config, model, tokenizer)
    resumed_config = with_penalties(small(load_config("ppo_gp"), tmp_path / "resumed", tiny_checkpoint))
    model, tokenizer = job.load_checkpoint(resumed_config, None)
    first = train_ppo(resumed_config, model, tokenizer, stop_after_update=1)
    assert first["updates"] == 1
    model, tokenizer = job.load_checkpoint(resumed_config, None)
    resumed = train_ppo(resumed_config, model, tokenizer)
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows_a, rows_b = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows_a] == [1, 2] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        for key in ("loss", "reward", "grad_norm", "gflops"):
            assert a[key] == b[key], key
    assert rows_a[1]["gflops"] > rows_a[0]["gflops"] > 0
    assert straight["compute"] == resumed["compute"]
    assert [h["update"] for h in resumed["history"]] == [0, 2]


def test_main_runs_warm_start_then_ppo(tmp_path, tiny_checkpoint):
    overrides = [f"--config.out_dir={tmp_path}", f"--config.model.path={tiny_checkpoint}",
                 f"--config.data.data_dir={tmp_path / 'data'}", "--config.data.num_examples=16",
                 "--config.sft.steps=1", "--config.sft.global_batch_size=4", "--config.ppo.updates=1",
                 "--config.ppo.episodes=4", "--config.ppo.epochs=1", "--config.ppo.max_new_tokens=8",
                 "--config.eval.every=0", "--config.eval.episodes=2", "--config.eval.batch_size=2",
                 "--config.eval.max_new_tokens=8", "--config.task.verify_iter=2", "--config.mesh.data=1",
                 "--config.log.tensorboard=False", "--config.checkpoint.every=1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    run = subprocess.run([sys.executable, "-m", "jaxrl_vlm.main", "--config=configs/ppo_gp.py", *overrides],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "after PPO" in run.stdout and "rule_ood" in run.stdout and "GFLOPs" in run.stdout
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert set(results["after_ppo"]["results"]) == {"in_dist", "rule_ood"}
    assert results["compute"]["init_tokens"] > 0  # the SFT warm start counts towards compute
    assert results["after_ppo"]["gflops"] > results["before_ppo"]["gflops"] > 0
    with open(tmp_path / "success_vs_gflops.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isdir(tmp_path / "sft_warm_start" / "checkpoints")
    assert os.path.isfile(tmp_path / "hf_export" / "config.json")
    evaluation = subprocess.run(
        [sys.executable, "-m", "jaxrl_vlm.eval", "--config=configs/ppo_gp.py", *overrides,
         f"--config.eval.checkpoint={tmp_path / 'checkpoints'}"], capture_output=True, text=True, env=env, timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "in_dist" in evaluation.stdout


def test_bad_ppo_config_is_a_clear_error(tmp_path, tiny_checkpoint):
    config = small(load_config("ppo_gp"), tmp_path, tiny_checkpoint)
    config.ppo.episodes = 3
    with pytest.raises(ValueError, match="ppo.episodes"):
        config_lib.validate(config)
    config = small(load_config("ppo_gp"), tmp_path, tiny_checkpoint)
    config.ppo.init = str(tmp_path / "no_such_sft_run")
    with pytest.raises(FileNotFoundError, match="no_such_sft_run"):
        config_lib.validate(config)


def test_gp_vl_ppo_on_tiny_mllama(tmp_path):
    checkpoint = str(tmp_path / "tiny_mllama")
    save_tiny_gp_mllama(checkpoint)
    config = small(load_config("ppo_gp_vl"), tmp_path / "run", checkpoint)
    config.task.resolution = 64
    config.ppo.updates = 1
    config.eval.splits = "in_dist,visual_ood"
    model, tokenizer = job.load_checkpoint(config, None)
    vision_before = np.asarray(jax.tree.leaves(model.params["vision"])[0]).copy()
    out = train_ppo(config, model, tokenizer)
    assert out["updates"] == 1
    assert set(out["final"]) == {"in_dist", "visual_ood"}
    row = metrics(tmp_path / "run")[0]
    assert np.isfinite(row["loss"]) and row["episode_turns"] >= 1
    # RL trains every parameter, the vision tower included (training.md §4.2)
    assert not np.array_equal(np.asarray(jax.tree.leaves(out["params"]["vision"])[0]), vision_before)
