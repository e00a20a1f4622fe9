"""SFT step: loss masking, exact gradient accumulation, and the loss falling on a toy model."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_vlm.training.optim import adamw, trainable_mask, warmup_cosine_schedule
from jaxrl_vlm.training.sft_step import init_train_state, make_sft_step, token_losses

VOCAB, DIM = 11, 8


def toy_apply(params, input_ids, attention_mask):
    """A bigram model: logits[b, t] = W[input_ids[b, t]] (enough to fit a deterministic sequence)."""
    del attention_mask
    return params["emb"][input_ids] @ params["out"]


def toy_params(key):
    k1, k2 = jax.random.split(key)
    return {"emb": jax.random.normal(k1, (VOCAB, DIM)), "out": jax.random.normal(k2, (DIM, VOCAB)) * 0.1}


def toy_batch(key, batch=8, length=6):
    ids = jax.random.randint(key, (batch, length), 0, VOCAB)
    loss_mask = jnp.arange(length)[None, :] >= 3
    attention = jnp.ones((batch, length), bool).at[0, -1].set(False)
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": jnp.broadcast_to(loss_mask, ids.shape)}


def test_token_losses_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, VOCAB)).astype(np.float32)
    ids = rng.integers(0, VOCAB, size=(2, 5))
    mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], bool)
    total, count = token_losses(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    expected = 0.0
    for b in range(2):
        for t in range(4):
            if mask[b, t + 1]:
                row = logits[b, t].astype(np.float64)
                expected += np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[b, t + 1]]
    assert count == mask[:, 1:].sum()
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_padding_is_never_supervised():
    params = toy_params(jax.random.key(0))
    tx = optax.sgd(0.0)
    batch = toy_batch(jax.random.key(1))  # row 0's last token is padding but has loss_mask True
    _, metrics = make_sft_step(toy_apply, tx)(init_train_state(params, tx), batch, jax.random.key(0))
    assert metrics["tokens"] == 8 * 3 - 1
    logits = toy_apply(params, batch["input_ids"], batch["attention_mask"])
    total, count = token_losses(logits, batch["input_ids"], batch["loss_mask"] & batch["attention_mask"])
    np.testing.assert_allclose(metrics["loss"], total / count, rtol=1e-6)


def test_gradient_accumulation_equals_large_batch():
    params = toy_params(jax.random.key(0))
    tx = adamw(optax.constant_schedule(1e-2), max_grad_norm=1.0)
    batch = toy_batch(jax.random.key(2))
    results = []
    for micro in (1, 4):
        step = jax.jit(make_sft_step(toy_apply, tx, micro_batches=micro))
        state, metrics = step(init_train_state(params, tx), batch, jax.random.key(0))
        results.append((state, metrics))
    (s1, m1), (s4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_loss_falls_and_frozen_parts_stay():
    params = toy_params(jax.random.key(0))
    original = jax.tree.map(np.asarray, params)
    schedule = warmup_cosine_schedule(0.1, total_steps=40, warmup_steps=4)
    mask = trainable_mask(params, [r"^emb$"])
    tx = adamw(schedule, trainable=mask)
    step = jax.jit(make_sft_step(toy_apply, tx, micro_batches=2), donate_argnums=0)
    batch = toy_batch(jax.random.key(3))
    state = init_train_state(params, tx)
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0]
    np.testing.assert_array_equal(state.params["emb"], original["emb"])
    assert not np.allclose(state.params["out"], original["out"])


def test_bad_micro_batches():
    with pytest.raises(ValueError, match="micro_batches"):
        make_sft_step(toy_apply, optax.sgd(1.0), micro_batches=0)
    step = make_sft_step(toy_apply, optax.sgd(1.0), micro_batches=3)
    params = toy_params(jax.random.key(0))
    with pytest.raises(ValueError, match="divisible"):
        step(init_train_state(params, optax.sgd(1.0)), toy_batch(jax.random.key(0)), jax.random.key(0))
