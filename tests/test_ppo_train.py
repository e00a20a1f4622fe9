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
from jaxrl_vlm import job


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


def straight_config(out_dir, checkpoint):
    """The run the kill-and-resume, compute, evaluation-history and restore tests share: KL reference on (a third
    forward pass in D_buffer), 2 epochs (D_rl counts each), evaluation after every update."""
    config = with_penalties(small(load_config("ppo_gp"), out_dir, checkpoint))
    config.ppo.epochs = 2
    config.eval.every = 1
    return config


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_checkpoint):
    """(train_ppo's output, out_dir, episodes of every update as host arrays): one uninterrupted run, with the
    PPO rollouts recorded on the way so the tests can count its tokens by hand."""
    from jaxrl_vlm import rollout as rollout_lib

    out_dir = tmp_path_factory.mktemp("ppo_straight")
    config = straight_config(out_dir, tiny_checkpoint)
    model, tokenizer = job.load_checkpoint(config, None)
    recorded = []
    real_rollout = rollout_lib.rollout

    def recording_rollout(*args, **kwargs):
        episodes = real_rollout(*args, **kwargs)
        if jax.tree.leaves(args[5])[0].shape[0] != config.ppo.episodes:  # an evaluation's batch, not PPO's
            return episodes
        recorded.append({k: np.asarray(v)[:, 0] for k, v in episodes._asdict().items()  # GP: one conversation
                         if k not in ("slot_tokens", "counts", "state", "success", "overflow", "outcomes",
                                    "conversation_state")})
        recorded[-1].update(success=np.asarray(episodes.success), overflow=np.asarray(episodes.overflow))
        return episodes

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rollout_lib, "rollout", recording_rollout)
        out = job.train_ppo(config, model, tokenizer)
    assert len(recorded) == config.ppo.updates
    return out, out_dir, recorded


def test_kill_and_resume_is_bitwise_equal(tmp_path, tiny_checkpoint, straight_run):
    """A run killed after update 1 and resumed equals the uninterrupted one bitwise (params, metrics, counters, the
    evaluation history); catches state, RNG or history not restored."""
    straight, straight_dir, _ = straight_run
    resumed_config = straight_config(tmp_path / "resumed", tiny_checkpoint)
    model, tokenizer = job.load_checkpoint(resumed_config, None)
    first = job.train_ppo(resumed_config, model, tokenizer, stop_after_update=1)
    assert first["updates"] == 1
    model, tokenizer = job.load_checkpoint(resumed_config, None)
    resumed = job.train_ppo(resumed_config, model, tokenizer)
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows_a, rows_b = metrics(straight_dir), metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows_a] == [1, 2] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        for key in ("loss", "reward", "grad_norm", "gflops"):
            assert a[key] == b[key], key
    assert straight["compute"] == resumed["compute"]
    assert [h["update"] for h in resumed["history"]] == [0, 1, 2]
    assert [h["gflops"] for h in resumed["history"]] == [h["gflops"] for h in straight["history"]]


def test_evaluations_at_a_compute_schedule(tmp_path, tiny_checkpoint, straight_run):
    """With eval_gflops (the study's RL branch) the run evaluates after the first update whose compute reaches each
    point, not before the first update, and ends after the last point however many updates are allowed; the
    evaluations equal the straight run's at those updates. Catches the update-0 evaluation, a point evaluated
    early or late, and a run that goes on past the schedule."""
    straight, _, _ = straight_run
    g1, g2 = (h["gflops"] for h in straight["history"][1:3])
    config = straight_config(tmp_path / "scheduled", tiny_checkpoint)
    config.ppo.updates = 4
    model, tokenizer = job.load_checkpoint(config, None)
    out = job.train_ppo(config, model, tokenizer, eval_gflops=[g1 / 2, (g1 + g2) / 2])
    assert out["updates"] == 2
    assert [(h["update"], h["gflops"]) for h in out["history"]] == [(1, g1), (2, g2)]
    assert [h["results"] for h in out["history"]] == [h["results"] for h in straight["history"][1:3]]
    assert [r["step"] for r in metrics(tmp_path / "scheduled")] == [1, 2]


def conversation_tokens(episodes):
    """Tokens of each rolled-out conversation, from its last played turn: the tokens before that reply
    (reply_start) plus the reply's tokens but its last one, which is only ever a target (a stop token is replaced
    by the template's end of turn, and an ended episode feeds no pending token)."""
    played = episodes["turn_valid"]
    last = played.shape[1] - 1 - np.argmax(played[:, ::-1], axis=1)
    rows = np.arange(played.shape[0])
    return episodes["reply_start"][rows, last] + episodes["reply_len"][rows, last] - 1


def transition_tokens(episodes):
    """Tokens of the played transitions as the paper's reference counts them (training/flops.py): per reply, the
    whole prompt before it (reply_start) plus the reply with its stop token."""
    return int((episodes["reply_start"] + episodes["reply_len"])[episodes["turn_valid"]].sum())


def test_ppo_compute_matches_a_hand_count(straight_run, tiny_checkpoint):
    """Logged gflops = 6 N (D_init + D_rl) + 2 N D_buffer counted by hand: N from transformers (value head
    excluded), D_rl = epochs x the transitions' tokens (each reply with its whole prompt, as the reference counts),
    D_buffer = (rollout + old log-probs + KL reference) x the same tokens, per update; the tokens the update
    processes (each conversation once) are logged beside it. Catches padding counted, an epoch or the KL reference
    dropped, N with the value head, and conversations counted once instead of per transition."""
    from test_compute import gflops, hf_num_parameters

    out, out_dir, recorded = straight_run
    n = hf_num_parameters(tiny_checkpoint)
    epochs, forward_passes = 2, 3
    train = buffer = 0
    rows = metrics(out_dir)
    for update, episodes in enumerate(recorded):
        tokens = transition_tokens(episodes)
        conversations = int(conversation_tokens(episodes).sum())
        assert rows[update]["conversation_tokens"] == conversations < tokens  # revision turns re-count their prefix
        train += epochs * tokens
        buffer += forward_passes * tokens
        assert rows[update]["gflops"] == pytest.approx(gflops(n, train=train, buffer=buffer), rel=1e-12)
        assert rows[update]["feedback_overflow"] == int(episodes["overflow"].sum())
    assert out["compute"] == {"num_params": n, "init_tokens": 0, "train_tokens": train, "buffer_tokens": buffer}
    assert recorded[0]["turn_valid"][:, 1].any()  # some episode had a revision turn


def test_main_runs_warm_start_then_ppo(tmp_path, tiny_checkpoint):
    """The PPO entry point end to end: SFT warm start, PPO, table, plot, checkpoints, HF export, then `eval` on the
    checkpoints. Its compute starts at the warm start's tokens (D_init; one SFT step over all 4 examples, counted
    from the re-tokenised dataset), its checkpoints restore to the exported final policy, not the base model, and
    with ppo.feedback_tokens shorter than the verifier's feedback the episodes end at the overflow and are counted
    (catches overflow not counted or the episode continuing with a cut-off turn)."""
    from jaxrl_vlm.models import api
    from test_compute import expert_example_tokens, gflops, hf_num_parameters

    overrides = [f"--config.out_dir={tmp_path}", f"--config.model.path={tiny_checkpoint}",
                 f"--config.data.data_dir={tmp_path / 'data'}", "--config.data.num_examples=4",
                 "--config.sft.steps=1", "--config.sft.global_batch_size=4", "--config.ppo.updates=1",
                 "--config.ppo.episodes=4", "--config.ppo.epochs=1", "--config.ppo.max_new_tokens=8",
                 "--config.eval.every=0", "--config.eval.episodes=2", "--config.eval.batch_size=2",
                 "--config.eval.max_new_tokens=8", "--config.task.verify_iter=2", "--config.mesh.data=1",
                 "--config.log.tensorboard=False", "--config.checkpoint.every=1"]
    # a feedback budget shorter than any verifier feedback: every failed first reply overflows
    ppo_only = ["--config.ppo.feedback_tokens=1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    run = subprocess.run([sys.executable, "-m", "jaxrl_vlm.main", "--config=configs/ppo_gp.py", *overrides, *ppo_only],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "after PPO" in run.stdout and "rule_ood" in run.stdout and "GFLOPs" in run.stdout
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert set(results["after_ppo"]["results"]) == {"in_dist", "rule_ood"}
    n = hf_num_parameters(tiny_checkpoint)
    sft_tokens = sum(expert_example_tokens(str(tmp_path / "data"), "l_face10_mixed", 4, 0, tiny_checkpoint))
    compute = results["compute"]
    assert compute["num_params"] == n and compute["init_tokens"] == sft_tokens
    assert results["before_ppo"]["gflops"] == pytest.approx(gflops(n, init=sft_tokens), rel=1e-12)
    after = gflops(n, init=sft_tokens, train=compute["train_tokens"], buffer=compute["buffer_tokens"])
    assert results["after_ppo"]["gflops"] == pytest.approx(after, rel=1e-12)
    row = metrics(tmp_path)[-1]
    assert row["gflops"] == results["after_ppo"]["gflops"]
    # the overflowing episodes are counted and end after their first reply (verify_iter=2 would allow a second)
    failed = round(4 * (1 - row["rollout_success"]))
    assert failed > 0 and row["feedback_overflow"] == failed
    assert row["episode_turns"] == 1.0
    # epochs=1, no KL reference: the rollout and the old log-probs are the two inference passes over D_rl's tokens
    assert compute["buffer_tokens"] == 2 * compute["train_tokens"] > 0
    assert metrics(tmp_path / "sft_warm_start")[-1]["gflops"] == pytest.approx(gflops(n, train=sft_tokens),
                                                                               rel=1e-12)
    with open(tmp_path / "success_vs_gflops.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isdir(tmp_path / "sft_warm_start" / "checkpoints")
    assert os.path.isfile(tmp_path / "hf_export" / "config.json")
    config = small(load_config("ppo_gp"), tmp_path, tiny_checkpoint)
    restored, _ = job.load_checkpoint(config, str(tmp_path / "checkpoints"))
    exported, base = api.load(str(tmp_path / "hf_export")), api.load(tiny_checkpoint)
    for got, want, init in zip(jax.tree.leaves(restored.params), jax.tree.leaves(exported.params),
                               jax.tree.leaves(base.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert not np.array_equal(np.asarray(got), np.asarray(init))
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


def test_gp_vl_ppo_on_tiny_mllama(tmp_path, tiny_mllama_checkpoint):
    config = small(load_config("ppo_gp_vl"), tmp_path / "run", tiny_mllama_checkpoint)
    config.task.resolution = 64
    config.ppo.updates = 1
    config.eval.splits = "in_dist,visual_ood"
    model, tokenizer = job.load_checkpoint(config, None)
    vision_before = np.asarray(jax.tree.leaves(model.params["vision"])[0]).copy()
    out = job.train_ppo(config, model, tokenizer)
    assert out["updates"] == 1
    assert set(out["final"]) == {"in_dist", "visual_ood"}
    row = metrics(tmp_path / "run")[0]
    assert np.isfinite(row["loss"]) and row["episode_turns"] >= 1
    # RL trains every parameter, the vision tower included (training.md §4.2)
    assert not np.array_equal(np.asarray(jax.tree.leaves(out["params"]["vision"])[0]), vision_before)
