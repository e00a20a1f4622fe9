"""Decoding's own weight layout (models/decode_layout.py) on a (data=2, fsdp=2, tensor=2) training mesh of 8 fake
CPU devices: the params land tensor-parallel on the decode mesh over the same devices, and a greedy GP rollout there
equals the one on the training layout, token for token."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.envs import protocol
from jaxrl_vlm.envs.general_points.task import make_task
from jaxrl_vlm.models import api
from jaxrl_vlm.models.decode_layout import decode_layout, decode_mesh
from jaxrl_vlm.models.sharding import make_mesh
from jaxrl_vlm.models.token_bytes import token_byte_table
from jaxrl_vlm.models.tokenizer import load_tokenizer

EPISODES, MAX_NEW = 8, 12


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = api.load(tiny_checkpoint, mesh=mesh)
    tokenizer = load_tokenizer(tiny_checkpoint)
    return model, mesh, tokenizer, make_task(tokenizer, "in_dist", verify_iter=2)


def greedy_rollout(model, tokenizer, task, decoder, params, put_batch):
    env, env_params = task
    state = protocol.reset_batch(env, jax.random.key(1), env_params, EPISODES, 0)
    state = jax.tree_util.tree_map(lambda x: put_batch(np.asarray(x)), state)
    out = rollout_lib.rollout(env, decoder, params, env_params, token_byte_table(tokenizer, special_tokens="empty"),
                              state, jax.random.key(2), jnp.float32(0.0), jnp.float32(1.0),
                              jnp.asarray(model.eos_token_ids, jnp.int32), max_new_tokens=MAX_NEW, pad_id=model.pad_id)
    return jax.tree_util.tree_map(np.asarray, (out.reply_tokens, out.reply_len, out.reward, out.sample_logp))


def test_params_are_placed_tensor_parallel_on_the_same_devices(setup):
    model, mesh, _, _ = setup
    layout = decode_layout(model.config, mesh, 2, "bfloat16")
    assert dict(layout.mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert list(layout.mesh.devices.reshape(-1)) == list(mesh.devices.reshape(-1))  # one device assignment
    placed = layout.place(model.params)
    q, gate = placed["layers"]["attn"]["q"], placed["layers"]["mlp"]["gate"]
    layers, embed, heads, head_dim = q.shape
    # whole rows of every matrix on a chip (fsdp has size 1): nothing to gather before using them
    assert q.sharding.shard_shape(q.shape) == (layers, embed, heads // 2, head_dim)
    assert gate.sharding.shard_shape(gate.shape) == (layers, embed, gate.shape[2] // 2)
    assert q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(q), np.asarray(model.params["layers"]["attn"]["q"]).astype(jnp.bfloat16))


def test_rollout_on_the_decode_layout_equals_the_training_layout(setup):
    model, mesh, tokenizer, task = setup
    trained = greedy_rollout(model, tokenizer, task, model.decoder, model.params, model.put_batch)
    layout = decode_layout(model.config, mesh, 2, "float32")
    decoded = greedy_rollout(model, tokenizer, task, layout.decoder(model.decoder), layout.place(model.params),
                             layout.put_batch)
    for ours, theirs in zip(decoded[:3], trained[:3]):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(decoded[3], trained[3], atol=1e-4)
    assert trained[1].sum() > 0


def test_a_tensor_size_that_does_not_divide_the_devices_is_named(setup):
    _, mesh, _, _ = setup
    with pytest.raises(ValueError, match="rollout_tensor=3"):
        decode_mesh(mesh, 3)
