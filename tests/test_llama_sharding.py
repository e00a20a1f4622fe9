"""Sharding: params / optimizer state follow the logical rules on a (data=2, fsdp=2, tensor=2) mesh of 8 fake CPU
devices; sharded forward and generation equal single-device; two processes x 4 devices equal one process."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxrl_vlm.models import api, llama
from jaxrl_vlm.models.sharding import make_mesh, optimizer_state_shardings, sharding_for, tree_shardings
from llama_test_utils import left_padded_batch, tiny_hf_llama

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
WORKER = os.path.join(os.path.dirname(__file__), "llama_multiprocess_worker.py")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tiny_sharding"))
    tiny_hf_llama(directory, tied=False, seed=7)
    return directory


@pytest.fixture(scope="module")
def batch():
    return left_padded_batch(np.random.RandomState(2), [11, 4, 8, 1], 128)


@pytest.fixture(scope="module")
def turn():
    return left_padded_batch(np.random.RandomState(3), [2, 5, 1, 3], 128)


@pytest.fixture(scope="module")
def single(checkpoint, batch, turn):
    """Single-device logits, greedy tokens, and greedy tokens after an appended turn (cache grown from 8 slots)."""
    model = api.load(checkpoint)
    ids, mask = batch
    first = api.sample(model, ids, mask, max_new_tokens=6, capacity=8)
    second = api.continue_sampling(model, first.state, *turn, max_new_tokens=6)
    return model.logits(ids, mask), first.tokens, second.tokens


def test_params_follow_the_rules(checkpoint):
    model = api.load(checkpoint, mesh=MESH)
    assert model.params["layers"]["attn"]["q"].sharding.spec == P(None, "fsdp", "tensor", None)
    assert model.params["layers"]["attn"]["k"].sharding.spec == P(None, "fsdp", "tensor", None)
    assert model.params["layers"]["mlp"]["down"].sharding.spec == P(None, "tensor", "fsdp")
    assert model.params["embed"].sharding.spec == P("tensor", "fsdp")
    assert model.params["lm_head"].sharding.spec == P("fsdp", "tensor")
    shard = model.params["layers"]["mlp"]["gate"].addressable_shards[0].data
    assert shard.shape == (3, 32, 48)


def test_optimizer_state_follows_param_shardings(checkpoint):
    model = api.load(checkpoint, mesh=MESH)
    params_shardings = jax.tree_util.tree_map(lambda x: x.sharding, model.params)
    state_shapes = jax.eval_shape(optax.adam(1e-3).init, model.params)
    shardings = optimizer_state_shardings(state_shapes, model.params, params_shardings, model.mesh_rules.mesh)
    assert shardings[0].mu["layers"]["attn"]["o"].spec == P(None, "tensor", None, "fsdp")
    assert shardings[0].count.spec == P()
    value_head = llama.init_value_head(jax.random.PRNGKey(0), model.config.hidden_size)
    placed = tree_shardings(value_head, llama.value_head_logical_axes(), model.mesh_rules.mesh)
    assert placed["dense_0"]["kernel"].spec == P("fsdp", None)


def test_sharded_forward_and_generation_equal_single_device(checkpoint, batch, turn, single):
    model = api.load(checkpoint, mesh=MESH)
    ids, mask = batch
    valid = mask.astype(bool)
    np.testing.assert_allclose(model.logits(ids, mask)[valid], single[0][valid], atol=1e-5)
    first = api.sample(model, ids, mask, max_new_tokens=6, capacity=8)
    np.testing.assert_array_equal(first.tokens, single[1])
    second = api.continue_sampling(model, first.state, *turn, max_new_tokens=6)
    np.testing.assert_array_equal(second.tokens, single[2])
    fresh = model.decoder.init_cache(4, 8)
    for grown, new in zip(second.state.cache.k, fresh.k):
        assert grown.sharding.is_equivalent_to(new.sharding, 4)


def test_any_batch_size_on_the_mesh_equals_single_device(checkpoint, batch, turn, single):
    """3 of the 4 prompts on a mesh with 4 batch shards: the public API pads the rows inside and returns the
    caller's 3, equal to the single-device results of the same rows (fails with 'not divisible' without the
    padding, or with wrong rows if the padding went first or the state lost the padded rows)."""
    model = api.load(checkpoint, mesh=MESH)
    ids, mask = (x[:3] for x in batch)
    logits = model.logits(ids, mask)
    assert logits.shape[0] == 3
    valid = mask.astype(bool)
    np.testing.assert_allclose(logits[valid], single[0][:3][valid], atol=1e-5)
    first = api.sample(model, ids, mask, max_new_tokens=6, capacity=8)
    np.testing.assert_array_equal(first.tokens, single[1][:3])
    second = api.continue_sampling(model, first.state, *(x[:3] for x in turn), max_new_tokens=6)
    np.testing.assert_array_equal(second.tokens, single[2][:3])


def test_put_batch_not_divisible_by_mesh_names_the_axis(checkpoint):
    model = api.load(checkpoint, mesh=MESH)
    with pytest.raises(ValueError, match="'batch'"):
        model.put_batch(np.zeros((3, 5), np.int32))


def test_sharding_for_rejects_unknown_logical_axis():
    mesh = make_mesh(**MESH)
    with pytest.raises(ValueError, match="'experts'"):
        sharding_for((4, 4), ("experts", None), mesh)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(checkpoint, batch, turn, single, tmp_path):
    ids, mask = batch
    inputs = str(tmp_path / "inputs.npz")
    output = str(tmp_path / "output.npz")
    np.savez(inputs, ids=ids, mask=mask, turn_ids=turn[0], turn_mask=turn[1])
    port = str(_free_port())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), port, checkpoint, inputs, output], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    result = np.load(output)
    valid = mask.astype(bool)
    np.testing.assert_allclose(result["logits"][valid], single[0][valid], atol=1e-5)
    np.testing.assert_array_equal(result["tokens"], single[1])
    np.testing.assert_array_equal(result["turn_tokens"], single[2])
