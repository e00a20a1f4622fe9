"""PPO arithmetic against NumPy references and hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.training.ppo_math import (action_start, gae, kl_penalty, mean_token_entropy, normalize_advantages,
                                         ppo_losses, reply_logprob, token_logprobs)


def numpy_gae(rewards, values, dones, next_value, gamma, lam):
    """The reference recursion (value_preds[T] = next_value, masks[t+1] = 1 - dones[t])."""
    t_len = rewards.shape[0]
    value_preds = np.concatenate([values, next_value[None]], 0)
    masks = np.concatenate([np.ones_like(next_value)[None], 1.0 - dones], 0)
    returns = np.zeros_like(rewards)
    running = np.zeros_like(next_value)
    for step in reversed(range(t_len)):
        delta = rewards[step] + gamma * value_preds[step + 1] * masks[step + 1] - value_preds[step]
        running = delta + gamma * lam * masks[step + 1] * running
        returns[step] = running + value_preds[step]
    return returns - values, returns


def test_gae_matches_reference_recursion():
    rng = np.random.default_rng(0)
    rewards = rng.choice([5.0, 1.0, -1.0, -3.0], size=(7, 5)).astype(np.float32)
    values = rng.normal(size=(7, 5)).astype(np.float32)
    dones = rng.random((7, 5)) < 0.3
    next_value = rng.normal(size=5).astype(np.float32)
    adv, ret = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(dones), jnp.asarray(next_value))
    ref_adv, ref_ret = numpy_gae(rewards, values, dones.astype(np.float32), next_value, 0.9, 0.95)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-6)


def test_gae_single_step_by_hand():
    adv, ret = gae(jnp.array([[5.0], [-1.0]]), jnp.array([[1.0], [2.0]]), jnp.array([[False], [True]]),
                   jnp.array([7.0]))
    # step 1 ends the episode: delta1 = -1 - 2 = -3; step 0: delta0 = 5 + 0.9*2 - 1 = 5.8, adv0 = 5.8 + 0.855*(-3)
    np.testing.assert_allclose(adv[:, 0], [5.8 - 0.855 * 3, -3.0], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [5.8 - 0.855 * 3 + 1.0, -1.0], rtol=1e-6)


def test_normalize_uses_unbiased_std():
    a = np.array([1.0, 2.0, 4.0, 9.0], np.float32)
    out = normalize_advantages(jnp.asarray(a))
    np.testing.assert_allclose(out, (a - a.mean()) / (a.std(ddof=1) + 1e-5), rtol=1e-5)
    masked = normalize_advantages(jnp.asarray(np.append(a, 100.0)), jnp.array([1, 1, 1, 1, 0], bool))
    np.testing.assert_allclose(masked[:4], out, rtol=1e-5)
    assert masked[4] == 0


def test_ppo_losses_by_hand():
    new = jnp.log(jnp.array([1.5, 0.5, 20.0]))
    old = jnp.zeros(3)
    adv = jnp.array([2.0, 1.0, -1.0])
    values = jnp.array([1.0, 0.0, 3.0])
    old_values = jnp.array([0.0, 0.0, 2.5])
    returns = jnp.array([2.0, 1.0, 2.0])
    out = ppo_losses(new, old, adv, values, old_values, returns, clip=0.1, value_coef=0.5, ratio_guard=10.0)
    # sample 0: min(3.0, 1.1*2=2.2) = 2.2; sample 1: min(0.5, 0.9) = 0.5; sample 2: ratio 20 > 10 -> clipped 1.1*-1
    policy = -(2.2 + 0.5 - 1.1) / 3
    # values: s0 max((1-2)^2, (0.1-2)^2=3.61); s1 max(1, 1); s2 max((3-2)^2=1, (2.6-2)^2=0.36)
    value = 0.5 * (3.61 + 1.0 + 1.0) / 3
    np.testing.assert_allclose(out.policy, policy, rtol=1e-6)
    np.testing.assert_allclose(out.value, value, rtol=1e-6)
    np.testing.assert_allclose(out.total, policy + 0.5 * value, rtol=1e-6)
    np.testing.assert_allclose(out.clip_fraction, 1.0)
    unguarded = ppo_losses(new, old, adv, values, old_values, returns, ratio_guard=None)
    np.testing.assert_allclose(unguarded.policy, -(2.2 + 0.5 - 20.0) / 3, rtol=1e-6)


def test_reply_logprob_split_at_last_pattern():
    pattern = jnp.array([7, 8])
    tokens = jnp.array([[1, 7, 8, 2, 7, 8, 3, 0], [1, 2, 3, 4, 5, 6, 0, 0], [7, 8, 0, 0, 0, 0, 0, 0]])
    lengths = jnp.array([7, 6, 1])  # row 2's pattern runs past its length
    # row 1 has no pattern: the reference's fallback, its last 5 tokens (training.md §4.4)
    np.testing.assert_array_equal(action_start(tokens, lengths, pattern), [4, 1, 0])
    token_logp = -jnp.arange(1, 9, dtype=jnp.float32)[None].repeat(3, 0)
    logp, thought, action = reply_logprob(token_logp, tokens, lengths, pattern, thought_coef=0.5)
    np.testing.assert_allclose(thought, [-(1 + 2 + 3 + 4), -1, 0.0])
    np.testing.assert_allclose(action, [-(5 + 6 + 7), -(2 + 3 + 4 + 5 + 6), -1.0])
    np.testing.assert_allclose(logp, 0.5 * np.asarray(thought) + np.asarray(action))


def test_token_logprobs_temperature():
    logits = jnp.array([[[0.0, 1.0, 2.0]]])
    got = token_logprobs(logits, jnp.array([[2]]), temperature=0.5)
    scaled = np.array([0.0, 2.0, 4.0])
    np.testing.assert_allclose(got[0, 0], scaled[2] - np.log(np.exp(scaled).sum()), rtol=1e-6)


def test_kl_penalty_by_hand():
    """k3 = exp(-x) + x - 1 with x = logp - ref_logp, masked mean; catches a flipped log-ratio (exp(x) - x - 1
    differs for x != 0), the plain mean(x) estimator (negative here), and a mean over masked-out samples."""
    logp = jnp.array([-3.0, -5.0, -2.0, -4.0])
    ref = jnp.array([-4.0, -3.0, -2.0, -100.0])
    mask = jnp.array([1, 1, 1, 0], bool)
    # x = 1, -2, 0: (e^-1 + 1 - 1) + (e^2 - 2 - 1) + 0, over 3 samples
    expected = (np.exp(-1.0) + (np.exp(2.0) - 3.0)) / 3
    np.testing.assert_allclose(kl_penalty(logp, ref, mask), expected, rtol=1e-6)
    assert kl_penalty(ref, ref) == 0.0
    # the log-ratio is clipped at 20 nats: a far-off reply stays finite
    np.testing.assert_allclose(kl_penalty(jnp.array([-200.0]), jnp.array([0.0])), np.exp(20.0) - 21.0, rtol=1e-6)


def test_kl_penalty_gradient_pulls_towards_the_reference():
    """d k3 / d logp = 1 - exp(ref - logp): positive (push down) above the reference, negative below it; catches an
    estimator whose gradient ignores the reference (mean(logp - ref) has gradient 1/N everywhere)."""
    logp, ref = jnp.array([-3.0, -5.0]), jnp.array([-4.0, -3.0])
    grad = np.asarray(jax.grad(lambda x: kl_penalty(x, ref))(logp))
    np.testing.assert_allclose(grad, (1.0 - np.exp(np.asarray(ref - logp))) / 2, rtol=1e-6)
    assert grad[0] > 0 > grad[1]


def test_mean_token_entropy_by_hand():
    """Entropy of softmax(logits / T) averaged over each reply's first `lengths` tokens; catches a missing
    temperature, a mean over padding tokens, and a sign error."""
    logits = jnp.array([[[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0], [9.0, 0.0, 0.0, 0.0]],
                        [[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    lengths = jnp.array([2, 0])

    def entropy(row, temperature):
        p = np.exp(np.asarray(row) / temperature)
        p /= p.sum()
        return -np.sum(p * np.log(p))

    for temperature in (1.0, 0.5):
        got = mean_token_entropy(logits, lengths, temperature)
        want = (np.log(4.0) + entropy(logits[0, 1], temperature)) / 2  # token 2 lies past the reply's length
        np.testing.assert_allclose(got, [want, 0.0], rtol=1e-6)
