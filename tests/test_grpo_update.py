"""The jitted GRPO update on real grouped GP-L rollouts of a tiny random Llama: groups are copies of one hand with
independently sampled replies, a batch whose groups are flat changes nothing at lr > 0, a (2,2,2) mesh equals one
device, and log-prob changes follow the advantages. The runs share one compilation per mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm import tasks
from jaxrl_vlm.models import api
from jaxrl_vlm.models.sharding import make_mesh
from jaxrl_vlm.models.token_bytes import token_byte_table
from jaxrl_vlm.models.tokenizer import load_tokenizer
from jaxrl_vlm.training import algorithms
from jaxrl_vlm.training.policy import policy_model
from jaxrl_vlm.training.ppo_train import (_update_rows, action_pattern, conversation_rows, initial_ppo_state,
                                          reset_groups)
from jaxrl_vlm.training.rl_update import make_update
from jaxrl_vlm.training.scoring import score_tokens

EPISODES, GROUP = 8, 2


def grpo_config(checkpoint):
    config = config_lib.base_config(job="ppo", run_name="test")
    config.model.path = checkpoint
    config.task.verify_iter = 2
    config.ppo.algorithm = "grpo"
    config.ppo.group_size = GROUP
    config.ppo.episodes = EPISODES
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.max_new_tokens = 16
    config.ppo.temperature = 1.0
    config.ppo.clip = 0.2
    config.ppo.lr = 1e-3
    return config


@pytest.fixture(scope="module")
def grouped(tiny_checkpoint):
    """(host PPOBatch of one grouped rollout made into rows as train_ppo does, with rewards drawn at random, env
    states): 4 hands x 2 episodes."""
    config = grpo_config(tiny_checkpoint)
    model, tokenizer = api.load(tiny_checkpoint), load_tokenizer(tiny_checkpoint)
    policy = policy_model(model, "float32", "float32")
    env, env_params = tasks.training_task(config, tokenizer)
    state = reset_groups(env, jax.random.key(0), env_params, EPISODES, GROUP)
    ep = rollout_lib.rollout(env, policy.decoder, model.params, env_params, token_byte_table(tokenizer, "empty"),
                             state, jax.random.key(1), jnp.float32(1.0), jnp.float32(1.0),
                             jnp.asarray(model.eos_token_ids, jnp.int32), max_new_tokens=config.ppo.max_new_tokens,
                             pad_id=model.pad_id)
    index, row_valid = conversation_rows(np.asarray(ep.turn_valid), EPISODES)
    width = int(np.asarray(ep.slot_valid.sum(-1)).max())
    batch = jax.device_get(_update_rows(ep, jnp.asarray(index), jnp.asarray(row_valid), width=width,
                                        pad_id=model.pad_id))
    # a random model's replies all fail alike (flat groups): the tests give them rewards of the task's values drawn
    # at random (the tokens stay the rollout's)
    scores = np.random.default_rng(0).choice([-1.0, 1.0, 5.0], size=batch.reward.shape)
    return batch._replace(reward=np.where(batch.turn_valid, scores, 0.0).astype(np.float32)), jax.device_get(state)


class Runner:
    """One jitted update per mesh (built on first use), run on fresh states: (params before, state after,
    metrics)."""

    def __init__(self, checkpoint, pattern_key):
        self.checkpoint, self.pattern_key, self.compiled = checkpoint, pattern_key, {}

    def run(self, batch, mesh=None):
        config = grpo_config(self.checkpoint)
        model = api.load(self.checkpoint, mesh=mesh)
        state, (tx, _) = initial_ppo_state(config, model)
        if mesh not in self.compiled:
            policy = policy_model(model, "float32", "float32")
            pattern = jnp.asarray(action_pattern(load_tokenizer(self.checkpoint), self.pattern_key))
            algorithm = algorithms.build(config, policy, pattern)
            self.compiled[mesh] = (jax.jit(make_update(algorithm, tx)), policy)
        update, policy = self.compiled[mesh]
        before = jax.tree_util.tree_map(np.asarray, state.params)
        new_state, metrics = update(state, jax.tree_util.tree_map(model.put_batch, batch), jax.random.key(7))
        return before, new_state, jax.device_get(metrics), policy


@pytest.fixture(scope="module")
def runner(tiny_checkpoint):
    env, _ = tasks.training_task(grpo_config(tiny_checkpoint), load_tokenizer(tiny_checkpoint))
    return Runner(tiny_checkpoint, env.action_key)


@pytest.fixture(scope="module")
def one_device(runner, grouped):
    return runner.run(grouped[0])


def test_groups_are_one_hand_with_independent_replies(grouped):
    """reset_groups repeats each of the 4 reset hands twice; the sampler draws each member's replies on its own."""
    batch, state = grouped
    for leaf in jax.tree.leaves(state):
        np.testing.assert_array_equal(leaf[0::2], leaf[1::2])
    first = [np.asarray(leaf)[0::2] for leaf in jax.tree.leaves(state)]
    assert any(len({x.tobytes() for x in leaf}) > 1 for leaf in first)  # the hands differ across groups
    replies = batch.reply_tokens[:, 0]
    assert any(not np.array_equal(replies[2 * g], replies[2 * g + 1]) for g in range(EPISODES // GROUP))


def test_no_value_head_and_a_moving_policy(one_device):
    before, state, metrics, _ = one_device
    assert set(state.params) == {"policy"}
    assert "value_loss" not in metrics and np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert 0.0 <= metrics["flat_groups"] < 1.0
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before),
                                                                     jax.tree.leaves(state.params)))


def test_flat_groups_give_zero_advantage_and_no_change(runner, grouped):
    """Rewards that make every group's returns equal (each group a different constant, so centring matters): zero
    advantages, zero gradient and params bitwise unchanged at lr 1e-3 with KL off."""
    batch, _ = grouped
    first_turn = np.arange(batch.turn_valid.shape[1]) == 0
    group_value = np.asarray([5.0, -1.0, 1.0, -1.5])[batch.episode // GROUP]
    reward = np.where(batch.turn_valid & first_turn, group_value[:, None], 0.0).astype(np.float32)
    flat = batch._replace(reward=reward)
    before, state, metrics, _ = runner.run(flat)
    assert metrics["flat_groups"] == 1.0 and metrics["grad_norm"] == 0.0 and metrics["policy_loss"] == 0.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_update_on_a_2x2x2_mesh_equals_one_device(runner, grouped, one_device):
    _, one, m1, _ = one_device
    _, many, m8, _ = runner.run(grouped[0], mesh=make_mesh(data=2, fsdp=2, tensor=2))
    for key in ("loss", "policy_loss", "grad_norm", "approx_kl", "clip_fraction", "flat_groups", "episode_return"):
        np.testing.assert_allclose(m8[key], m1[key], rtol=2e-4, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-4)


def test_logprob_changes_follow_the_advantages(runner, grouped, one_device):
    """Each reply's mean token log-prob rises where its episode's advantage is positive and falls where negative."""
    batch, _ = grouped
    before, state, _, policy = one_device
    advantages, _ = algorithms.build(grpo_config(runner.checkpoint), policy, None).advantages(batch)
    mask = np.arange(batch.reply_tokens.shape[-1]) < batch.reply_len[..., None]
    score = jax.jit(lambda params: score_tokens(policy, params, batch, 1.0).logp)
    mean_logp = lambda params: (np.asarray(score(params)) * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
    change = (mean_logp(state.params) - mean_logp(before))[batch.turn_valid]
    adv = np.asarray(advantages)[batch.turn_valid]
    assert np.abs(adv).max() > 0
    assert np.corrcoef(change, adv)[0, 1] > 0.3
