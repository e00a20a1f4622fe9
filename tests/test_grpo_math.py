"""Group-relative arithmetic against NumPy references (no model): GRPO and RLOO advantages with and without the
group's std, flat groups, episode returns across an episode's conversations, the three loss normalisations; and the
config validation of the group settings."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.training import grpo_math


def numpy_advantages(returns, present, leave_one_out, scale):
    """Advantages by hand, group by group: GRPO (R - mean) or RLOO (R - mean of the others), divided by the
    unbiased std + 1e-4 when scale; 0 for absent members and for groups with < 2 members or equal returns."""
    out = np.zeros_like(returns)
    for g in range(returns.shape[0]):
        members = np.flatnonzero(present[g])
        r = returns[g, members].astype(np.float64)
        if len(r) < 2 or np.all(r == r[0]):
            continue
        for k, i in enumerate(members):
            baseline = np.delete(r, k).mean() if leave_one_out else r.mean()
            adv = r[k] - baseline
            out[g, i] = adv / (r.std(ddof=1) + 1e-4) if scale else adv
    return out


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_numpy(leave_one_out, scale):
    """Random returns of 6 groups of 4, with absent members (a group of 1 and one of 0 among them) and a flat
    group; catches a biased std, a baseline that includes the member itself for RLOO, absent members counted."""
    rng = np.random.default_rng(0)
    returns = rng.choice([-3.0, -1.0, 1.0, 5.0, 2.5], size=(6, 4)).astype(np.float32)
    present = rng.random((6, 4)) < 0.8
    present[0] = [True, False, False, False]
    present[1] = False
    returns[2] = 1.0
    present[2] = True
    present[3] = True  # a whole group with distinct-enough returns
    got = grpo_math.group_advantages(jnp.asarray(returns), jnp.asarray(present), leave_one_out=leave_one_out,
                                     scale_by_std=scale)
    want = numpy_advantages(returns, present, leave_one_out, scale)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[2] == 0.0) and np.all(np.asarray(got)[~present] == 0.0)
    assert np.abs(want[3]).max() > 0.1  # the reference is not trivially zero
    np.testing.assert_array_equal(grpo_math.flat_groups(jnp.asarray(returns), jnp.asarray(present))[:3],
                                  [True, True, True])


def test_rloo_is_grpo_scaled_by_g_over_g_minus_1():
    """The textbook identity of the leave-one-out baseline on a full group: R - mean(others) = G/(G-1) (R - mean)."""
    returns = jnp.asarray([[5.0, -1.0, -1.0, 1.0]])
    present = jnp.ones((1, 4), bool)
    grpo = grpo_math.group_advantages(returns, present, leave_one_out=False, scale_by_std=False)
    rloo = grpo_math.group_advantages(returns, present, leave_one_out=True, scale_by_std=False)
    np.testing.assert_allclose(rloo, 4 / 3 * grpo, rtol=1e-6)


def test_episode_returns_sum_rewards_across_conversations():
    """Rows as the loop makes them (episode ids, rows of an episode consecutive, a padding row with a negative id):
    an episode's return sums the valid rewards of all its rows; an episode without rows is absent."""
    reward = jnp.asarray([[-1.0, 5.0, 7.0], [1.0, 0.0, 0.0], [-1.0, -1.0, 0.0], [9.0, 9.0, 9.0]])
    valid = jnp.asarray([[True, True, False], [True, False, False], [True, True, False], [False, False, False]])
    episode = jnp.asarray([0, 0, 2, -4], jnp.int32)  # episode 1 (and 3) has no row; the last row is padding
    returns, present = grpo_math.episode_returns(reward, valid, episode)
    np.testing.assert_array_equal(returns, [5.0, 0.0, -2.0, 0.0])
    np.testing.assert_array_equal(present, [True, False, True, False])
    returns, present = grpo_math.episode_returns(reward, valid, None)  # one row per episode
    np.testing.assert_array_equal(returns, [4.0, 1.0, -2.0, 0.0])


def numpy_loss(values, mask, norm):
    """The per-token loss normalisations by hand (replies = rows of values [R, N])."""
    lengths = mask.sum(1)
    replies = lengths > 0
    if norm == "token":
        return (values * mask).sum() / mask.sum()
    if norm == "sequence":
        return np.mean([(values[i] * mask[i]).sum() / lengths[i] for i in np.flatnonzero(replies)])
    return np.mean([(values[i] * mask[i]).sum() / values.shape[1] for i in np.flatnonzero(replies)])


@pytest.mark.parametrize("norm", grpo_math.LOSS_NORMS)
def test_loss_normalisations_match_numpy_and_split_exactly(norm):
    """Each normalisation against NumPy, and the micro-batch shares (loss_sum of a part / loss_units of the whole)
    add up to the whole's loss, as gradient accumulation needs; the three differ on replies of unequal lengths."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(6, 5)).astype(np.float32)
    lengths = np.array([5, 1, 3, 0, 2, 4])
    mask = np.arange(5)[None, :] < lengths[:, None]
    values[~mask] = 1e6  # padding must not leak in
    want = numpy_loss(np.where(mask, values, 0.0), mask, norm)
    units = grpo_math.loss_units(jnp.asarray(mask), norm)
    whole = grpo_math.loss_sum(jnp.asarray(values), jnp.asarray(mask), norm) / units
    parts = sum(grpo_math.loss_sum(jnp.asarray(values[i:i + 2]), jnp.asarray(mask[i:i + 2]), norm) / units
                for i in (0, 2, 4))
    np.testing.assert_allclose(whole, want, rtol=1e-5)
    np.testing.assert_allclose(parts, want, rtol=1e-5)
    others = [numpy_loss(np.where(mask, values, 0.0), mask, n) for n in grpo_math.LOSS_NORMS if n != norm]
    assert all(abs(o - want) > 1e-3 for o in others)


def grpo_config(**values):
    config = config_lib.base_config(job="ppo", run_name="test")
    config.ppo.init = config_lib.PPO_INIT_BASE
    config.mesh.data = 1
    config.ppo.algorithm = "grpo"
    config.ppo.group_size = 4
    for key, value in values.items():
        config.ppo[key] = value
    return config


def test_group_settings_are_validated_naming_the_keys():
    """A group size that does not divide the episodes, a group of one for a critic-free algorithm, unknown names:
    each fails at validation naming its key; configs/grpo_gp.py, PPO with group_size 1 and GRPO/RLOO with a dividing
    group pass."""
    config_lib.validate(grpo_config())
    from test_ppo_train import load_config

    shipped = load_config("grpo_gp")
    shipped.mesh.data = 1
    config_lib.validate(shipped)
    assert shipped.ppo.algorithm == "grpo" and shipped.ppo.episodes % shipped.ppo.group_size == 0
    config_lib.validate(grpo_config(algorithm="rloo", group_size=2, loss_norm="sequence", scale_rewards="none"))
    config_lib.validate(grpo_config(algorithm="ppo", group_size=1))
    with pytest.raises(ValueError, match=r"ppo\.group_size=3 .*a divisor of ppo\.episodes=8"):
        config_lib.validate(grpo_config(group_size=3))
    with pytest.raises(ValueError, match=r"ppo\.group_size=1 .*>= 2 for ppo\.algorithm='rloo'"):
        config_lib.validate(grpo_config(algorithm="rloo", group_size=1))
    for key, bad in (("algorithm", "dpo"), ("loss_norm", "tokens"), ("scale_rewards", "batch")):
        with pytest.raises(ValueError, match=rf"ppo\.{key}='{bad}'"):
            config_lib.validate(grpo_config(**{key: bad}))
