"""The jitted PPO update on real rollouts of a tiny random Llama: unit ratio before any step, a (2,2,2) mesh equal
to one device, and a policy that moves towards the advantaged replies; GAE across the conversations of an
episode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrl_vlm import config as config_lib
from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm import tasks
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.models import api
from jaxrl_vlm.models.sharding import make_mesh
from jaxrl_vlm.models.token_bytes import token_byte_table
from jaxrl_vlm.models.tokenizer import load_tokenizer
from jaxrl_vlm.training.policy import policy_model
from jaxrl_vlm.training.ppo import PPO, PPOHyper, advantages_and_returns
from jaxrl_vlm.training.ppo_math import kl_penalty, normalize_advantages
from jaxrl_vlm.training.ppo_train import _update_rows, action_pattern, conversation_rows, initial_ppo_state
from jaxrl_vlm.training.rl_update import make_update
from jaxrl_vlm.training.scoring import score_replies


def ppo_config(checkpoint, **overrides):
    config = config_lib.base_config(job="ppo", run_name="test")
    config.model.path = checkpoint
    config.task.verify_iter = 2
    config.ppo.episodes = 8
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.max_new_tokens = 16
    config.ppo.temperature = 1.0
    config.ppo.lr = 1e-3
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


@pytest.fixture(scope="module")
def action_key(tiny_checkpoint):
    """The training task's action key (GP: ` "formula":`), for the thought/action split of the reply log-prob."""
    env, _ = tasks.training_task(ppo_config(tiny_checkpoint), load_tokenizer(tiny_checkpoint))
    return env.action_key


@pytest.fixture(scope="module")
def host_batch(tiny_checkpoint):
    """One rollout of 8 episodes of the training task on one device, made into the update's rows as `train_ppo`
    does (`conversation_rows`, `_update_rows`), as host arrays (PPOBatch)."""
    config = ppo_config(tiny_checkpoint)
    model, tokenizer = api.load(tiny_checkpoint), load_tokenizer(tiny_checkpoint)
    policy = policy_model(model, "float32", "float32")
    env, env_params = tasks.training_task(config, tokenizer)
    state = protocol.reset_batch(env, jax.random.key(0), env_params, config.ppo.episodes)
    ep = rollout_lib.rollout(env, policy.decoder, model.params, env_params, token_byte_table(tokenizer, "empty"),
                             state, jax.random.key(1), jnp.float32(1.0), jnp.float32(1.0),
                             jnp.asarray(model.eos_token_ids, jnp.int32), max_new_tokens=config.ppo.max_new_tokens,
                             pad_id=model.pad_id)
    index, row_valid = conversation_rows(np.asarray(ep.turn_valid), config.ppo.episodes)
    assert row_valid.all() and len(index) == config.ppo.episodes  # GP: one conversation per episode
    width = int(np.asarray(ep.slot_valid.sum(-1)).max())
    batch = _update_rows(ep, jnp.asarray(index), jnp.asarray(row_valid), width=width, pad_id=model.pad_id)
    np.testing.assert_array_equal(batch.episode, np.arange(config.ppo.episodes))
    return jax.device_get(batch)


def run_update(checkpoint, host_batch, action_key, mesh=None, **overrides):
    config = ppo_config(checkpoint, **overrides)
    model = api.load(checkpoint, mesh=mesh)
    tokenizer = load_tokenizer(checkpoint)
    state, (tx, _) = initial_ppo_state(config, model)
    policy = policy_model(model, "float32", "float32")
    pattern = jnp.asarray(action_pattern(tokenizer, action_key))
    update = jax.jit(make_update(PPO(policy, PPOHyper.from_config(config), pattern), tx))
    batch = jax.tree_util.tree_map(lambda x: model.put_batch(x), host_batch)
    before = state.params
    new_state, metrics = update(state, batch, jax.random.key(7))
    return before, new_state, jax.device_get(metrics), policy, batch, pattern, config


def test_first_step_has_unit_ratio_and_zero_lr_changes_nothing(tiny_checkpoint, host_batch, action_key):
    before, state, metrics, *_ = run_update(tiny_checkpoint, host_batch, action_key, ppo__lr=0.0, ppo__epochs=1,
                                            ppo__minibatches=1)
    # old and new log-probs are float32 sums of ~100 nats per reply, computed in different batch shapes (chunked
    # scoring vs the loss's pass): they agree to float32 rounding, measured |approx_kl| up to 1.2e-6
    assert abs(metrics["approx_kl"]) < 1e-5 and metrics["clip_fraction"] == 0.0
    assert metrics["turns"] == host_batch.turn_valid.sum() > 8
    assert np.isfinite(metrics["value_loss"]) and metrics["grad_norm"] > 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_value_head_is_sharded_by_its_logical_axes(tiny_checkpoint):
    """The PPO state's value head and its Adam moments follow `llama.value_head_logical_axes` on the mesh (issue 12
    (e): they were replicated on every device)."""
    model = api.load(tiny_checkpoint, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    state, _ = initial_ppo_state(ppo_config(tiny_checkpoint), model)
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)
               if "'value'" in jax.tree_util.keystr(path) and "'dense_0'" in jax.tree_util.keystr(path)
               and leaf.ndim == 2]
    assert len(kernels) == 3 and all(k.sharding.spec == P("fsdp", None) for k in kernels)  # param, Adam mu and nu


def test_update_on_a_2x2x2_mesh_equals_one_device(tiny_checkpoint, host_batch, action_key):
    _, one, m1, *_ = run_update(tiny_checkpoint, host_batch, action_key)
    _, many, m8, *_ = run_update(tiny_checkpoint, host_batch, action_key, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    for key in ("loss", "policy_loss", "value_loss", "grad_norm", "approx_kl"):
        np.testing.assert_allclose(m8[key], m1[key], rtol=2e-4, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-4)


def test_update_moves_the_policy_towards_advantaged_replies(tiny_checkpoint, host_batch, action_key):
    before, state, _, policy, batch, pattern, config = run_update(tiny_checkpoint, host_batch, action_key,
                                                                  ppo__epochs=4, ppo__lr=3e-4)
    hyper = PPOHyper.from_config(config)
    old = score_replies(policy, before, batch, pattern, hyper)
    new = score_replies(policy, state.params, batch, pattern, hyper)
    advantages, _ = advantages_and_returns(batch.reward, old.value, batch.turn_valid, batch.episode, hyper.gamma,
                                           hyper.lam)
    valid = np.asarray(batch.turn_valid)
    change = np.asarray(new.logp - old.logp)[valid]
    adv = np.asarray(advantages)[valid]
    assert np.corrcoef(change, adv)[0, 1] > 0.3


def valid_mean(x, valid):
    return float(np.asarray(x)[np.asarray(valid)].mean())


def test_kl_penalty_pulls_reply_logprobs_towards_the_reference(tiny_checkpoint, host_batch, action_key):
    """With a strong KL penalty, each reply's log-prob moves towards its reference log-prob, here set 1 nat above
    or below the policy's own (alternating): a flipped sign pushes them away, and an estimator whose gradient
    ignores the reference (mean(logp - ref)) moves them all down."""
    model = api.load(tiny_checkpoint)
    policy = policy_model(model, "float32", "float32")
    pattern = jnp.asarray(action_pattern(load_tokenizer(tiny_checkpoint), action_key))
    hyper = PPOHyper.from_config(ppo_config(tiny_checkpoint))
    start = score_replies(policy, {"policy": model.params}, host_batch, pattern, hyper).logp
    offset = np.where(np.arange(host_batch.turn_valid.size).reshape(host_batch.turn_valid.shape) % 2, 1.0, -1.0)
    batch = host_batch._replace(ref_logp=np.asarray(start + offset, np.float32))
    _, state, metrics, policy, batch, pattern, _ = run_update(tiny_checkpoint, batch, action_key, ppo__kl_coef=5.0)
    new = score_replies(policy, state.params, batch, pattern, hyper).logp
    valid = host_batch.turn_valid
    change = np.asarray(new - start)[valid]
    assert np.corrcoef(change, offset[valid])[0, 1] > 0.8
    assert kl_penalty(new, batch.ref_logp, batch.turn_valid) < 0.5 * kl_penalty(start, batch.ref_logp,
                                                                                  batch.turn_valid)
    assert metrics["kl_ref"] > 0


def test_entropy_bonus_raises_the_replies_entropy(tiny_checkpoint, host_batch, action_key):
    """With a strong entropy bonus, the mean token entropy of the batch's replies rises; a flipped sign lowers it."""
    before, state, metrics, policy, batch, pattern, config = run_update(
        tiny_checkpoint, host_batch, action_key, ppo__entropy_coef=5.0, ppo__temperature=0.3)
    hyper = PPOHyper.from_config(config)
    old = score_replies(policy, before, batch, pattern, hyper, with_entropy=True).entropy
    new = score_replies(policy, state.params, batch, pattern, hyper, with_entropy=True).entropy
    old, new = valid_mean(old, host_batch.turn_valid), valid_mean(new, host_batch.turn_valid)
    assert new > old + 0.1  # measured: 5.97 -> 6.19 nats (the maximum is log 512 = 6.24)
    # the logged entropy is the mean over the optimizer steps of the entropy before each step
    assert old - 1e-4 < metrics["entropy"] < new


def numpy_gae(rewards, values, gamma, lam):
    """GAE by hand over one episode's transitions in time order, the last one terminal: (advantages, returns)."""
    advantages, running = np.zeros(len(rewards)), 0.0
    for i in reversed(range(len(rewards))):
        last = i + 1 == len(rewards)
        next_value = 0.0 if last else values[i + 1]
        delta = rewards[i] + gamma * next_value - values[i]
        running = delta + (0.0 if last else gamma * lam * running)
        advantages[i] = running
    return advantages, advantages + np.asarray(values)


def test_gae_runs_across_the_conversations_of_an_episode():
    """Rows of the update from rolled-out episodes of several conversations (`conversation_rows`, `_update_rows`, as
    train_ppo makes them): GAE runs over each episode's valid turns in time order across its conversations (a
    conversation's last turn bootstraps into the next conversation's first, skipping unplayed turns), an episode's
    last turn is terminal (no bootstrap into the next episode's row, nor into the padding row), and advantages are
    normalised over the valid turns. Catches `episode` ignored (each conversation its own episode), GAE
    bootstrapping across episode boundaries, rows linked out of time order, and padding rows joined to an
    episode."""
    gamma, lam = 0.9, 0.95
    b, r, t, n = 3, 2, 3, 2
    # episode 0: conversation 0 plays 2 turns, conversation 1 plays 3; episode 1: one conversation of 1 turn;
    # episode 2: conversation 0 unplayed, conversation 1 plays 2 turns (its row follows episode 1's)
    turn_valid = np.zeros((b, r, t), bool)
    turn_valid[0, 0, :2] = turn_valid[0, 1, :] = turn_valid[1, 0, :1] = turn_valid[2, 1, :2] = True
    rng = np.random.default_rng(0)
    reward = np.where(turn_valid, rng.choice([-1.0, -2.0, -3.0, 5.0], size=(b, r, t)), 0.0).astype(np.float32)
    episodes = rollout_lib.Episodes(
        slot_tokens=jnp.zeros((b, r, 8), jnp.int32), slot_valid=jnp.ones((b, r, 8), bool),
        reply_tokens=jnp.zeros((b, r, t, n), jnp.int32), reply_len=jnp.ones((b, r, t), jnp.int32),
        reply_start=jnp.ones((b, r, t), jnp.int32), sample_logp=jnp.zeros((b, r, t, n), jnp.float32),
        reward=jnp.asarray(reward), turn_valid=jnp.asarray(turn_valid), success=jnp.zeros((b,), bool),
        overflow=jnp.zeros((b,), bool), counts={}, outcomes=jnp.zeros((b, 0), jnp.int32), state=None)
    index, row_valid = conversation_rows(turn_valid, 5)
    np.testing.assert_array_equal(index[row_valid], [0, 1, 2, 5])  # played conversations, episode-major
    assert len(index) == 5 and row_valid.sum() == 4
    rows = _update_rows(episodes, jnp.asarray(index), jnp.asarray(row_valid), width=8, pad_id=0)
    episode, valid, rows_reward = np.asarray(rows.episode), np.asarray(rows.turn_valid), np.asarray(rows.reward)
    np.testing.assert_array_equal(episode[:4], [0, 0, 1, 2])
    assert episode[4] not in episode[:4] and not valid[4].any()  # the padding row is nobody's
    # values everywhere, large at the first turn of each row: a wrong bootstrap into it shows
    value = rng.normal(size=(5, t)).astype(np.float32) + 3.0 * (np.arange(t) == 0)
    transitions = {e: [(i, j) for i in range(5) for j in range(t) if valid[i, j] and episode[i] == e]
                   for e in (0, 1, 2)}
    assert [len(transitions[e]) for e in (0, 1, 2)] == [5, 1, 2]
    expected_adv, expected_ret = np.zeros((5, t)), np.zeros((5, t))
    for steps in transitions.values():
        adv, ret = numpy_gae([rows_reward[s] for s in steps], [value[s] for s in steps], gamma, lam)
        for s, a, g in zip(steps, adv, ret):
            expected_adv[s], expected_ret[s] = a, g
    expected_adv = np.asarray(normalize_advantages(jnp.asarray(expected_adv, jnp.float32), jnp.asarray(valid)))

    adv, ret = advantages_and_returns(jnp.asarray(rows_reward), jnp.asarray(value), jnp.asarray(valid),
                                      jnp.asarray(episode), gamma, lam)
    np.testing.assert_allclose(ret, expected_ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, expected_adv, rtol=1e-4, atol=1e-5)
    # each episode's last turn is terminal: its return is its reward
    for steps in transitions.values():
        assert ret[steps[-1]] == pytest.approx(rows_reward[steps[-1]], abs=1e-6)
    # the data tell these apart: each conversation its own episode gives other numbers
    _, ret_alone = advantages_and_returns(jnp.asarray(rows_reward), jnp.asarray(value), jnp.asarray(valid), None,
                                          gamma, lam)
    assert np.abs(np.asarray(ret_alone) - expected_ret).max() > 0.5


@pytest.fixture(scope="module")
def virl_host_batch(tiny_checkpoint, tmp_path_factory):
    """Update rows of 4 V-IRL routes rolled out by the scripted model (`virl_scripted`: oracle, retry and failing
    policies; the small city's short routes) in the tiny tokenizer: several conversations per episode, linked by
    `episode` for GAE."""
    import virl_scripted as vs
    from virl_routes import write_small_city

    from jaxrl_vlm.envs.virl.task import make_task
    from jaxrl_vlm.shapes import round_up

    tokenizer = load_tokenizer(tiny_checkpoint)
    env, env_params = make_task(tokenizer, "in_distribution", write_small_city(tmp_path_factory.mktemp("city")))
    model = vs.ScriptedVirlModel(tokenizer).reset(vs.per_row([vs.oracle, vs.retry, vs.fail_at(1), vs.wrong]))
    keys = jax.random.split(jax.random.key(2), 4)
    state = jax.vmap(env.env.reset, in_axes=(0, None, 0))(keys, env_params.env, jnp.asarray([2, 2, 1, 2]))
    ep = rollout_lib.rollout(env, model.decoder, model.params, env_params, token_byte_table(tokenizer, "empty"),
                             state, jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0),
                             jnp.asarray(model.eos_token_ids, jnp.int32), max_new_tokens=160, pad_id=0)
    index, row_valid = conversation_rows(np.asarray(ep.turn_valid), 4)
    width = round_up(int(np.asarray(ep.slot_valid.sum(-1)).max()), 128)
    batch = jax.device_get(_update_rows(ep, jnp.asarray(index), jnp.asarray(row_valid), width=width, pad_id=0))
    assert model.not_understood == [] and row_valid.sum() > 6 and batch.turn_valid.sum() > row_valid.sum()
    return batch


def test_virl_update_on_a_2x2x2_mesh_equals_one_device(tiny_checkpoint, virl_host_batch):
    """The V-IRL update (rows of an episode's conversations, GAE across them, no action key) on a (data, fsdp,
    tensor) = (2, 2, 2) mesh equals the one-device update."""
    settings = dict(ppo__episodes=4, ppo__epochs=1, ppo__minibatches=1)
    _, one, m1, *_ = run_update(tiny_checkpoint, virl_host_batch, None, **settings)
    _, many, m8, *_ = run_update(tiny_checkpoint, virl_host_batch, None, mesh=make_mesh(data=2, fsdp=2, tensor=2),
                                 **settings)
    assert m1["turns"] == virl_host_batch.turn_valid.sum()
    # atol 1e-5: at the first step the policy loss is -mean(normalised advantages), zero up to summation order
    for key in ("loss", "policy_loss", "value_loss", "grad_norm", "approx_kl"):
        np.testing.assert_allclose(m8[key], m1[key], rtol=2e-4, atol=1e-5, err_msg=key)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-4)
