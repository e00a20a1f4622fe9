"""PPO on V-IRL end to end on small route directories: V-IRL-L on a tiny random Llama (configs/ppo_virl.py) trains
through the environment protocol, evaluates the three V-IRL splits with per-step accuracy, and a run killed after
its first update and resumed equals the uninterrupted one bitwise; V-IRL-VL (configs/ppo_virl_vl.py) runs the main
job on a tiny random Mllama, its rollouts and update seeing each point's view grid."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from virl_routes import write_small_city

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import job, main

SPLITS = ("in_distribution", "rule_ood", "visual_ood")


def virl_config(out_dir, checkpoint, city, name="ppo_virl"):
    spec = importlib.util.spec_from_file_location(name, os.path.join("configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.out_dir = str(out_dir)
    config.model.path = checkpoint
    config.task.route_dir = config.task.ood_route_dir = city
    config.ppo.init = config_lib.PPO_INIT_BASE
    config.ppo.updates = 2
    config.ppo.episodes = 4
    config.ppo.epochs = 1
    config.ppo.minibatches = 2
    config.ppo.micro_batches = 1
    config.ppo.max_new_tokens = 8
    config.ppo.lr = 1e-3
    config.eval.every = 0
    config.eval.splits = ",".join(SPLITS)
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


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return str(write_small_city(tmp_path_factory.mktemp("virl_ppo_city")))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_checkpoint, city):
    out_dir = tmp_path_factory.mktemp("ppo_virl_straight")
    config = virl_config(out_dir, tiny_checkpoint, city)
    config_lib.validate(config)
    model, tokenizer = job.load_checkpoint(config, None)
    return job.train_ppo(config, model, tokenizer), out_dir


def test_virl_ppo_reports_route_success_and_step_accuracy(straight):
    """Every evaluation has the three V-IRL splits in the one result schema, with per-step accuracy over at least
    3 steps per episode (verify_iter 2: two replies and the forced failure, or a correct move); the metrics rows
    count replies and conversations per episode."""
    out, out_dir = straight
    assert [h["update"] for h in out["history"]] == [0, 2]
    for h in out["history"]:
        assert set(h["results"]) == set(SPLITS)
        for r in h["results"].values():
            assert {"success", "success_stderr", "step_accuracy", "step_accuracy_stderr", "steps",
                    "mean_reward", "episodes"} <= set(r)
            assert r["episodes"] == 2 and r["steps"] >= 2 * 2
            assert 0.0 <= r["step_accuracy"] <= 1.0
    rows = metrics(out_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert np.isfinite(row["loss"]) and row["episode_turns"] >= 1 and row["episode_conversations"] >= 1


def test_virl_kill_and_resume_is_bitwise_equal(tmp_path, tiny_checkpoint, city, straight):
    """A V-IRL run killed after update 1 and resumed equals the uninterrupted one bitwise (params, metrics,
    compute, evaluation history); catches state, RNG or history not restored."""
    out, out_dir = straight
    config = virl_config(tmp_path / "resumed", tiny_checkpoint, city)
    model, tokenizer = job.load_checkpoint(config, None)
    assert job.train_ppo(config, model, tokenizer, stop_after_update=1)["updates"] == 1
    model, tokenizer = job.load_checkpoint(config, None)
    resumed = job.train_ppo(config, model, tokenizer)
    for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(metrics(out_dir), metrics(tmp_path / "resumed")):
        for key in ("loss", "reward", "grad_norm", "gflops", "episode_turns"):
            assert a[key] == b[key], key
    assert out["compute"] == resumed["compute"]
    assert resumed["history"] == out["history"]


def test_virl_vl_main_job_on_tiny_mllama(tmp_path, tiny_mllama_checkpoint):
    """configs/ppo_virl_vl.py through `main.run_ppo_job` on a tiny Mllama (8 px views, 8 px grid cells: a 21 px
    grid in 2x2 tiles of 28 px): route success and per-step accuracy before and after one update, results.json, and
    a vision tower changed by the update (the re-rendered grids reach the loss). One split and float32, so training
    and evaluation share one rollout compilation (the splits' handling is task-independent, tested on V-IRL-L)."""
    from virl_routes import write_small_city

    city = str(write_small_city(tmp_path / "city"))
    config = virl_config(tmp_path / "run", tiny_mllama_checkpoint, city, name="ppo_virl_vl")
    config.model.dtype = "float32"
    config.task.view_size = config.task.resolution = 8
    config.ppo.updates = 1
    config.ppo.episodes = config.eval.batch_size = 2
    config.ppo.minibatches = 1
    config.ppo.max_new_tokens = config.eval.max_new_tokens
    config.eval.splits = "in_distribution"
    config_lib.validate(config)
    model, _ = job.load_checkpoint(config, None)
    vision_before = [np.asarray(x) for x in jax.tree.leaves(model.params["vision"])]
    results = main.run_ppo_job(config)
    for evaluation in (results["before_ppo"], results["after_ppo"]):
        assert set(evaluation["results"]) == {"in_distribution"}
        for r in evaluation["results"].values():
            assert r["episodes"] == 2 and r["steps"] >= 4 and 0.0 <= r["step_accuracy"] <= 1.0
    assert os.path.isfile(tmp_path / "run" / "results.json")
    trained = job.restore_params(config, model, str(tmp_path / "run" / "checkpoints"))
    after = [np.asarray(x) for x in jax.tree.leaves(trained["vision"])]
    assert any(not np.array_equal(a, b) for a, b in zip(after, vision_before))
