"""GRPO end to end through the RL loop (configs/grpo_gp.py, shrunk) on a tiny random Llama: groups are copies of one
hand, a run killed after its first update and resumed equals the uninterrupted one bitwise, its checkpoints hold no
value head yet restore the trained policy the way eval.checkpoint and ppo.init read them (under a PPO config too),
and its compute counts every group member's rollout and no value pass. Evaluation is left out (the PPO tests
cover it; it does not depend on the algorithm), which keeps these runs to one compilation of the update each."""
import json
import os

import jax
import numpy as np
import pytest
from test_ppo_train import load_config, metrics, small, transition_tokens

from jaxrl_vlm import job, tasks
from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.training.checkpoint import Checkpointer
from jaxrl_vlm.training.ppo_train import train_ppo


def grpo_config(out_dir, checkpoint):
    """grpo_gp.py at test size: 2 updates of 2 hands x 2 episodes, KL reference on (its scoring pass counted). A
    random model's replies all fail alike, so every group is flat (no policy gradient): the entropy bonus makes the
    params move, with the sampled tokens, so a resume that replays other draws shows."""
    config = small(load_config("grpo_gp"), out_dir, checkpoint)
    assert config.ppo.algorithm == "grpo"
    config.ppo.group_size = 2
    config.ppo.kl_coef = 0.05
    config.ppo.entropy_coef = 0.01
    return config


def train(config, **kwargs):
    """The RL loop as job.train_ppo runs it, without evaluations."""
    model, tokenizer = job.load_checkpoint(config, None)
    return train_ppo(config, model, tokenizer, tasks.training_task(config, tokenizer), lambda params: {}, **kwargs)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_checkpoint):
    """(train_ppo's output, out_dir, (reset states, episodes) of every update as host arrays): an uninterrupted run."""
    out_dir = tmp_path_factory.mktemp("grpo_straight")
    recorded, real_rollout = [], rollout_lib.rollout

    def recording_rollout(*args, **kwargs):
        episodes = real_rollout(*args, **kwargs)
        recorded.append(jax.tree_util.tree_map(np.asarray, (args[5], episodes._replace(state=None))))
        return episodes

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rollout_lib, "rollout", recording_rollout)
        out = train(grpo_config(out_dir, tiny_checkpoint))
    assert len(recorded) == 2
    return out, out_dir, recorded


def test_groups_are_copies_of_one_hand(straight):
    """Each update resets 2 hands and rolls out 2 episodes of each: identical initial states within a group,
    different hands across groups; the metrics rows carry the group statistics and no value loss."""
    _, out_dir, recorded = straight
    for env_state, _ in recorded:
        leaves = jax.tree.leaves(env_state)
        assert leaves
        for leaf in leaves:
            np.testing.assert_array_equal(leaf[0::2], leaf[1::2])
        assert any(not np.array_equal(leaf[0], leaf[2]) for leaf in leaves)
    for row in metrics(out_dir):
        assert np.isfinite(row["loss"]) and "value_loss" not in row and 0 <= row["flat_groups"] <= 1
        assert row["kl_ref"] >= 0 and np.isfinite(row["episode_return"])


def test_grpo_kill_and_resume_is_bitwise_equal(tmp_path, tiny_checkpoint, straight):
    """Killed after update 1 and resumed: params, metrics and compute equal the uninterrupted run bitwise; catches
    state, RNG (the group draws included) or counters not restored."""
    out, out_dir, _ = straight
    config = grpo_config(tmp_path / "resumed", tiny_checkpoint)
    base, _ = job.load_checkpoint(config, None)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(base.params)))
    assert train(config, stop_after_update=1)["updates"] == 1
    resumed = train(config)
    for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows_a, rows_b = metrics(out_dir), metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows_a] == [1, 2] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        for key in ("loss", "reward", "grad_norm", "gflops", "episode_return", "kl_ref", "entropy"):
            assert a[key] == b[key], key
    assert out["compute"] == resumed["compute"]


def test_grpo_checkpoint_has_no_value_head_and_restores_the_policy(straight, tiny_checkpoint):
    """The saved state holds {'policy'} only (params and Adam moments: no 'value' anywhere) and records its
    algorithm; job.load_checkpoint (eval.checkpoint, ppo.init) restores the trained policy bitwise under a GRPO and
    under a PPO config; trained_tokens reads its D_init + D_rl."""
    out, out_dir, _ = straight
    directory = os.path.join(out_dir, "checkpoints")
    checkpointer = Checkpointer(directory, async_save=False)
    step = checkpointer.latest_step()
    assert checkpointer.metadata(step)["algorithm"] == "grpo"
    checkpointer.close()
    with open(os.path.join(directory, str(step), "state", "_METADATA")) as f:
        paths = list(json.load(f)["tree_metadata"])  # e.g. "('params', 'policy', ...)", "('opt_state', ...)"
    assert any("'policy'" in p for p in paths) and not any("'value'" in p for p in paths)
    for algorithm, group_size in (("grpo", 2), ("ppo", 1)):
        config = grpo_config(out_dir, tiny_checkpoint)
        config.ppo.algorithm, config.ppo.group_size = algorithm, group_size
        restored, _ = job.load_checkpoint(config, directory)
        for got, want in zip(jax.tree.leaves(restored.params), jax.tree.leaves(out["params"])):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert job.trained_tokens(directory) == out["compute"]["init_tokens"] + out["compute"]["train_tokens"] > 0


def test_grpo_compute_counts_every_group_member(straight, tiny_checkpoint):
    """D_rl = epochs x the tokens of every episode's transitions (both members of each group), D_buffer =
    (rollout + old log-probs + KL reference) x the same: no value-head pass of its own."""
    from test_compute import gflops, hf_num_parameters

    out, out_dir, recorded = straight
    n = hf_num_parameters(tiny_checkpoint)
    epochs, forward_passes = 1, 3
    train_tokens = buffer = 0
    for update, (_, episodes) in enumerate(recorded):
        one_conversation = {k: np.asarray(v)[:, 0] for k, v in episodes._asdict().items()
                            if k in ("turn_valid", "reply_start", "reply_len")}
        played = one_conversation["turn_valid"].any(axis=1)
        assert played.shape == (4,) and played.all()  # both members of both groups
        tokens = transition_tokens(one_conversation)
        train_tokens += epochs * tokens
        buffer += forward_passes * tokens
        assert metrics(out_dir)[update]["gflops"] == pytest.approx(gflops(n, train=train_tokens, buffer=buffer),
                                                                   rel=1e-12)
    assert out["compute"] == {"num_params": n, "init_tokens": 0, "train_tokens": train_tokens,
                              "buffer_tokens": buffer}
