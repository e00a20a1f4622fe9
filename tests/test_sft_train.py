"""The SFT job end to end on a tiny random Llama with the real SmolLM2 tokenizer (GP-L expert data)."""
import json
import os

import jax
import numpy as np
import pytest

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.training.sft import train_sft


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gp_data"))


def sft_config(out_dir, checkpoint, data_dir, **overrides):
    config = config_lib.base_config(job="sft", run_name="test")
    config.out_dir = str(out_dir)
    config.model.path = checkpoint
    config.data.data_dir = data_dir
    config.data.num_examples = 32
    config.data.seq_len = 320
    config.sft.steps = 4
    config.sft.global_batch_size = 8
    config.sft.lr = 1e-2
    config.sft.warmup_ratio = 0.25
    config.checkpoint.every = 2
    config.checkpoint.export_hf = False
    config.log.tensorboard = False
    config.mesh.data = 1
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def logged_losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f)}


def test_kill_and_resume_is_bitwise_equal(tmp_path, tiny_checkpoint, data_dir):
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    _, straight = train_sft(sft_config(straight_dir, tiny_checkpoint, data_dir))
    train_sft(sft_config(resumed_dir, tiny_checkpoint, data_dir), stop_after_step=2)
    summary, resumed = train_sft(sft_config(resumed_dir, tiny_checkpoint, data_dir))
    assert summary["steps"] == 4
    assert logged_losses(straight_dir) == logged_losses(resumed_dir)
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loss_falls_and_exports(tmp_path, tiny_checkpoint, data_dir):
    """12 steps of 8 over 32 examples (3 epochs): the loss falls, the logged compute is 6 N D_sft with D_sft the
    non-padding tokens of the examples trained on (re-tokenised by transformers), and the checkpoint restored through
    eval.checkpoint is the trained model bitwise, not the base. Catches padding or a micro-batch miscounted, and a
    restore that returns the base weights."""
    from jaxrl_vlm import job
    from test_compute import expert_example_tokens, gflops, hf_num_parameters

    config = sft_config(tmp_path, tiny_checkpoint, data_dir, sft__steps=12, checkpoint__every=12,
                        checkpoint__export_hf=True, sft__micro_batches=2)
    summary, state = train_sft(config)
    losses = logged_losses(tmp_path)
    assert losses[12] < 0.75 * losses[1]
    assert os.path.isfile(os.path.join(summary["hf_export"], "config.json"))

    n = hf_num_parameters(tiny_checkpoint)
    epoch_tokens = sum(expert_example_tokens(data_dir, "l_face10_mixed", 32, 0, tiny_checkpoint))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = {row["step"]: row for row in map(json.loads, f)}
    for step, epochs in ((4, 1), (8, 2), (12, 3)):  # epoch boundaries: the count does not depend on the order
        assert rows[step]["tokens"] == epochs * epoch_tokens
        assert rows[step]["gflops"] == pytest.approx(gflops(n, train=epochs * epoch_tokens), rel=1e-12)
    assert summary["tokens"] == 3 * epoch_tokens
    # a PPO run started from these checkpoints (ppo.init) counts them as its D_init
    assert job.trained_tokens(summary["checkpoints"]) == 3 * epoch_tokens
    assert job.trained_tokens(tiny_checkpoint) == 0

    config.eval.checkpoint = summary["checkpoints"]
    restored, _ = job.load_for_eval(config)
    base, _ = job.load_checkpoint(config, None)
    for got, want, init in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params),
                               jax.tree.leaves(base.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert not np.array_equal(np.asarray(got), np.asarray(init))


def test_sharded_run_equals_single_device(tmp_path, tiny_checkpoint, data_dir):
    single = sft_config(tmp_path / "one", tiny_checkpoint, data_dir, sft__steps=2)
    sharded = sft_config(tmp_path / "mesh", tiny_checkpoint, data_dir, sft__steps=2, mesh__data=2, mesh__fsdp=2,
                         mesh__tensor=2)
    _, one = train_sft(single)
    _, many = train_sft(sharded)
    l1, l8 = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "mesh")
    np.testing.assert_allclose([l8[s] for s in (1, 2)], [l1[s] for s in (1, 2)], rtol=2e-5)
    # Adam divides by sqrt(v): where a gradient is ~0, summation-order noise moves an update by up to ~lr*1e-2.
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-4)


def test_bad_config_fails_before_compiling(tmp_path, tiny_checkpoint, data_dir):
    config = sft_config(tmp_path, tiny_checkpoint, data_dir)
    with pytest.raises(AttributeError, match="nope"):
        config.sft.nope = 1
    config.model.path = str(tmp_path / "missing_checkpoint")
    with pytest.raises(FileNotFoundError, match="missing_checkpoint"):
        train_sft(config)
    config = sft_config(tmp_path, tiny_checkpoint, data_dir, sft__micro_batches=3)
    with pytest.raises(ValueError, match="sft.micro_batches"):
        train_sft(config)


def test_main_runs_sft_with_evaluation_and_eval_reads_checkpoints(tmp_path, tiny_checkpoint, data_dir):
    """The job entry point end to end: evaluation before/after SFT, results JSON, then `eval` on the orbax dir."""
    import subprocess
    import sys

    overrides = [f"--config.out_dir={tmp_path}", f"--config.model.path={tiny_checkpoint}",
                 f"--config.data.data_dir={data_dir}", "--config.data.num_examples=32", "--config.sft.steps=2",
                 "--config.sft.global_batch_size=8", "--config.eval.episodes=4", "--config.eval.batch_size=4",
                 "--config.eval.max_new_tokens=8", "--config.task.verify_iter=2", "--config.mesh.data=1",
                 "--config.log.tensorboard=False"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    run = subprocess.run([sys.executable, "-m", "jaxrl_vlm.main", "--config=configs/sft_gp.py", *overrides],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "after SFT" in run.stdout and "rule_ood" in run.stdout
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert set(results["after_sft"]) == {"in_dist", "rule_ood"}
    assert results["after_sft"]["in_dist"]["episodes"] == 4
    evaluation = subprocess.run(
        [sys.executable, "-m", "jaxrl_vlm.eval", "--config=configs/sft_gp.py", *overrides,
         f"--config.eval.checkpoint={tmp_path / 'checkpoints'}"], capture_output=True, text=True, env=env, timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "in_dist" in evaluation.stdout
    bad = subprocess.run([sys.executable, "-m", "jaxrl_vlm.main", "--config=configs/sft_gp.py", "--config.sft.nope=1"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_remat_gives_the_same_gradients(tiny_checkpoint):
    """Gradient checkpointing changes memory, not results."""
    from jaxrl_vlm.models import api
    from jaxrl_vlm.training.sft import make_apply_fn
    from jaxrl_vlm.training.sft_step import token_losses

    model = api.load(tiny_checkpoint)
    ids = np.random.default_rng(0).integers(3, 480, size=(2, 24)).astype(np.int32)
    mask = np.ones((2, 24), bool)
    grads = []
    for remat in (False, True):
        apply = make_apply_fn(model, "float32", "float32", remat)
        loss = lambda p: token_losses(apply(p, ids, mask), ids, mask)[0]
        grads.append(jax.jit(jax.grad(loss))(model.params))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
