"""The plan (jaxrl_vlm.plan): a job's programs compiled for a TPU topology on this CPU host, from the model's
architecture alone.

- the shipped Llama-3.2-11B-Vision-Instruct architecture has transformers' parameter count, abstractly (no weights);
- a tiny Mllama's GP-VL PPO job (SFT warm start step, rollout, update, evaluation rollout) compiles for a v5e 2x2
  slice with the project's shardings: its params are really split over the chips and memory is reported; with a
  chip too small for it the plan says it does not fit (exit status 1);
- bad input (an unknown target, a mesh that cannot shard a dimension) fails in seconds, exit status 2.
"""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import pytest

from jaxrl_vlm.config import base_config
from jaxrl_vlm.models.abstract import abstract_model
from jaxrl_vlm.models.sharding import make_mesh
from jaxrl_vlm.training.flops import param_count

ARCHITECTURE_11B = os.path.join(os.path.dirname(__file__), "..", "configs", "models", "llama-3.2-11b-vision-instruct")
TARGET = "v5e-4"
PROGRAMS = ("sft_step", "rollout", "update")  # the evaluation rollout compiles as the rollout does


def test_the_11b_architecture_has_transformers_parameter_count():
    import torch
    import transformers

    with open(os.path.join(ARCHITECTURE_11B, "config.json")) as f:
        hf_config = transformers.MllamaConfig(**json.load(f))
    with torch.device("meta"):  # shapes only: no memory for 10.7e9 parameters
        reference = transformers.MllamaForConditionalGeneration(hf_config)
    expected = sum(p.numel() for p in reference.parameters())
    model = abstract_model(ARCHITECTURE_11B, dtype="bfloat16", mesh=make_mesh(data=2, fsdp=2, tensor=2))
    assert param_count(model.params) == expected
    assert 10.6e9 < expected < 10.8e9
    q = model.params["layers"]["attn"]["q"]  # [layers, embed, heads, head_dim] over fsdp and tensor
    assert q.sharding.shard_shape(q.shape) == (q.shape[0], q.shape[1] // 2, q.shape[2] // 2, q.shape[3])


def tiny_vl_ppo_config(checkpoint, out_dir):
    config = base_config(job="ppo", run_name="plan_test")
    config.unlock()
    config.out_dir = str(out_dir)
    config.model.path = checkpoint
    config.task.language_only = False
    config.task.verify_iter = 2
    config.mesh.update(data=1, fsdp=4, tensor=1)  # its 493-token vocabulary splits over no tensor axis
    config.sft.update(global_batch_size=4, steps=2)
    config.data.seq_len = 256
    config.ppo.update(episodes=4, minibatches=1, epochs=1, max_new_tokens=8, feedback_tokens=24)
    config.eval.update(batch_size=4, max_new_tokens=8, splits="in_dist")
    return config


@pytest.fixture(scope="module")
def vl_plan(tiny_mllama_checkpoint, tmp_path_factory):
    from jaxrl_vlm.planning.run import run_plan

    config = tiny_vl_ppo_config(tiny_mllama_checkpoint, tmp_path_factory.mktemp("plan"))
    compiled = {}
    reports = run_plan(config, TARGET, only=PROGRAMS, compiled_programs=compiled)
    return config, reports, compiled


def test_a_tiny_mllama_ppo_job_compiles_for_a_tpu_slice(vl_plan):
    _, reports, compiled = vl_plan
    assert [r.program for r in reports] == list(PROGRAMS)
    for report in reports:
        assert report.target == TARGET and report.chips == 4 and report.fits
        assert report.total >= report.arguments > 0 and report.flops > 0
    # the compiled step takes its params and both Adam moments split over the 4 chips (fsdp), as the job places them
    (state, _, _), _ = compiled["sft_step"].input_shardings
    split = lambda tree: sum("fsdp" in str(s.spec) for s in jax.tree_util.tree_leaves(tree))
    assert state.params["layers"]["attn"]["q"].spec[1] == "fsdp"  # [layers, embed, heads, head_dim]
    assert split(state.params) > 10 and split(state.opt_state) == 2 * split(state.params)


def test_a_chip_too_small_does_not_fit(vl_plan):
    from jaxrl_vlm.planning.run import EXIT_DOES_NOT_FIT, exit_status
    from jaxrl_vlm.planning import analysis, targets

    _, reports, compiled = vl_plan
    need = reports[0].total
    small = dataclasses.replace(targets.parse_target(TARGET), hbm_bytes=need - 1)
    report = analysis.analyze(compiled["sft_step"], "sft_step", small)
    assert report.total == need and not report.fits
    assert exit_status(reports) == 0 and exit_status(reports + [report]) == EXIT_DOES_NOT_FIT
    assert analysis.fit_advice(report)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxrl_vlm.plan", "--config=configs/ppo_gp.py", *args],
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.join(os.path.dirname(__file__), ".."))


def test_an_unknown_target_is_named():
    done = run_cli("--target=v9x-12")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "v9x-12" in done.stderr


def test_a_mesh_that_cannot_shard_a_dimension_is_named():
    # SmolLM2-135M has 3 KV heads: a tensor axis of 2 cannot split them
    done = run_cli("--target=v5e-4", "--config.mesh.tensor=2", "--config.mesh.data=1", "--config.mesh.fsdp=2")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "kv_heads" in done.stderr and "tensor" in done.stderr
