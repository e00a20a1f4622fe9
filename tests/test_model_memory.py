"""Memory of the model programs, compiled deviceless for a TPU (v5e:2x2, 4 chips, by libtpu on this host) at the
real Llama-3.2-11B-Vision widths with few layers, on a tensor-parallel mesh (data 1, fsdp 1, tensor 4; with fsdp, a
decode step all-gathers every layer and the gathered weights in flight would hide the copies checked here): a
decode loop holds no second copy of the layer weights (`layers.DecodeLayers`) or of the cross-attention K/V
(`mllama.CrossAttentionState`), and the vision encoder keeps one block of attention scores at a time, not [H,S,S]
per image (`mllama_vision.encoder_attention`), whose blocks give the one-block result; and, on an fsdp mesh of the
same chips, the vision tower's gradient keeps only each chip's own image's layer inputs."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrl_vlm.models import llama, mllama, sampler
from jaxrl_vlm.models import mllama_vision as vision_lib
from jaxrl_vlm.models.layers import attend, kv_cache_logical_axes
from jaxrl_vlm.models.sharding import MeshRules, tree_shardings
from jaxrl_vlm.planning.targets import parse_target, target_devices

MIB = 2**20


@pytest.fixture(scope="module")
def v5e_devices():
    """The 4 compile-only chips of a v5e:2x2 slice that this host does not have."""
    return target_devices(parse_target("v5e-4"))


@pytest.fixture(scope="module")
def mesh(v5e_devices):
    """(data 1, fsdp 1, tensor 4) over the v5e chips."""
    return Mesh(np.array(v5e_devices).reshape(1, 1, 4), ("data", "fsdp", "tensor"))


def abstract(tree, axes, mesh, dtype=None):
    """ShapeDtypeStructs of a tree of shapes (tuples) or of ShapeDtypeStructs, placed by their logical axes."""
    shardings = tree_shardings(tree, axes, mesh)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(getattr(x, "shape", x), dtype or x.dtype, sharding=s), tree, shardings,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x))


def chip_bytes(tree) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs."""
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves)


def decode_temp_bytes(decoder, params, extra, mesh, config, num_layers, batch=8, capacity=128) -> int:
    """Per-chip temporary bytes of `sampler.decode` (a 4-token while loop) compiled for the mesh; config: the text
    decoder's `LlamaConfig`, num_layers: its self-attention layers."""
    cache = abstract(jax.eval_shape(lambda: llama.init_kv_cache(config, batch, capacity, num_layers)),
                     kv_cache_logical_axes(num_layers), mesh)
    logits = jax.ShapeDtypeStruct((batch, config.vocab_size), jnp.float32, sharding=NamedSharding(mesh, P()))
    run = lambda p, c, x, lg: sampler.decode(decoder, p, c, x, lg, jax.random.PRNGKey(0), jnp.float32(1.0),
                                             jnp.float32(1.0), jnp.array([2], jnp.int32), jnp.int32(0), 4)
    return jax.jit(run).lower(params, cache, extra, logits).compile().memory_analysis().temp_size_in_bytes


def test_llama_decode_loop_holds_no_second_copy_of_the_weights(mesh):
    config = mllama.MllamaConfig.from_hf_dict(mllama.mllama_11b_config(num_text_layers=2), "bfloat16").text
    config = dataclasses.replace(config, vocab_size=8192)
    params = abstract(llama.param_shapes(config), llama.param_logical_axes(config), mesh, jnp.bfloat16)
    temp = decode_temp_bytes(llama.LlamaDecoder(config, MeshRules(mesh)), params, None, mesh, config,
                             config.num_layers)
    layers = chip_bytes(params["layers"])
    assert temp < layers / 4, f"decode temporaries {temp / MIB:.0f} MiB per chip, layer weights {layers / MIB:.0f} MiB"


def test_mllama_decode_loop_holds_no_copy_of_weights_or_cross_kv(mesh):
    config = mllama.MllamaConfig.from_hf_dict(mllama.mllama_11b_config(num_text_layers=4, num_vision_layers=1),
                                              "bfloat16")
    params = abstract(mllama.param_shapes(config), mllama.param_logical_axes(config), mesh, jnp.bfloat16)
    batch = 8
    states = jax.ShapeDtypeStruct((batch, config.num_vision_tokens_per_image, config.text.hidden_size), jnp.bfloat16)
    cross = jax.eval_shape(lambda p, s: mllama.compute_cross_kv(p, s, jnp.ones((batch, 16, 1, 4), jnp.int32), config),
                           params, states)
    cross = abstract(cross, mllama.cross_state_logical_axes(len(config.cross_attention_layers)), mesh)
    temp = decode_temp_bytes(mllama.MllamaDecoder(config, MeshRules(mesh)), params, cross, mesh, config.text,
                             len(config.self_attention_layers), batch)
    kv = chip_bytes((cross.k, cross.v))
    weights = chip_bytes((params["layers"], params["cross_layers"]))
    assert temp < kv / 2 < weights, (f"decode temporaries {temp / MIB:.0f} MiB per chip, cross K/V {kv / MIB:.0f} "
                                     f"MiB, layer weights {weights / MIB:.0f} MiB")


def test_vision_encoder_keeps_one_block_of_attention_scores(mesh):
    """One 4-tile 560 px image through one local and one global layer: S = 6432 tokens, 4 heads per chip, whose
    float32 scores [4, S, S] would take 631 MiB per layer."""
    c = vision_lib.MllamaVisionConfig(num_hidden_layers=1, num_global_layers=1, intermediate_layers_indices=(),
                                      vision_output_dim=1280, param_dtype="bfloat16", compute_dtype="bfloat16")
    params = abstract(vision_lib.param_shapes(c), vision_lib.param_logical_axes(c), mesh, jnp.bfloat16)
    replicated = NamedSharding(mesh, P())
    inputs = (jax.ShapeDtypeStruct((1, 1, 4, 3, 560, 560), jnp.float32, sharding=replicated),
              jax.ShapeDtypeStruct((1, 1), jnp.int32, sharding=replicated),
              jax.ShapeDtypeStruct((1, 1, 4), jnp.int32, sharding=replicated))
    compiled = jax.jit(lambda p, *x: vision_lib.vision_features(p, *x, c)).lower(params, *inputs).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    tokens = 4 * c.padded_num_patches
    scores = c.attention_heads // 4 * tokens * tokens * 4
    assert temp < scores / 4, f"vision temporaries {temp / MIB:.0f} MiB per chip, one layer's scores {scores / MIB:.0f}"


@pytest.mark.parametrize("query_block", [8, 20, 48])
def test_encoder_attention_in_blocks_equals_one_block(query_block):
    """Blocks of queries (6, 3 of 16, 1) give the attention of the whole [S,S] mask: a query/key pair masked only
    when both tokens are padding."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 48, 4, 16)), jnp.float32) for _ in range(3))
    valid = jnp.asarray(rng.random((2, 48)) < 0.7)
    mask = valid[:, :, None] | valid[:, None, :]
    expected = attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
    got = vision_lib.encoder_attention(q, k, v, valid, query_block)
    assert vision_lib.query_blocks(48, query_block) == {8: 6, 20: 3, 48: 1}[query_block]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_query_blocks_divide_the_tokens():
    assert vision_lib.query_blocks(6432, 512) == 16  # the 11B: 4 tiles x 1608 tokens, blocks of 402
    assert vision_lib.query_blocks(96, 512) == 1
    assert vision_lib.query_blocks(8 * 13, 16) == 8  # no divisor of 104 gives 7 blocks


def test_vision_training_splits_images_over_the_batch_and_recomputes_layers(v5e_devices):
    """The gradient through the vision tower and projector (`mllama.cross_attention_states`) of 4 one-tile images
    (S = 1608 tokens) on (data 1, fsdp 4): with the mesh's rules each chip keeps its own image's activations, and
    with remat only each encoder layer's input, plus the working set of one layer (its largest part one query
    block's float32 scores). Measured: 39 MiB of temporaries per chip; 103 MiB without the batch split, 107 MiB
    without remat, 224 MiB without either."""
    mesh = Mesh(np.array(v5e_devices).reshape(1, 4, 1), ("data", "fsdp", "tensor"))
    config = mllama.MllamaConfig.from_hf_dict(mllama.mllama_11b_config(num_text_layers=4, num_vision_layers=4),
                                              "float32", "bfloat16").with_remat(True)
    config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, num_global_layers=1,
                                                                    max_num_tiles=1))
    params = abstract(mllama.param_shapes(config), mllama.param_logical_axes(config), mesh, jnp.float32)
    by_image = NamedSharding(mesh, P("fsdp"))
    inputs = (jax.ShapeDtypeStruct((4, 1, 1, 3, 560, 560), jnp.float32, sharding=by_image),
              jax.ShapeDtypeStruct((4, 1), jnp.int32, sharding=by_image),
              jax.ShapeDtypeStruct((4, 1, 1), jnp.int32, sharding=by_image))
    loss = lambda p, *x: mllama.cross_attention_states(p, *x, config, MeshRules(mesh)).astype(jnp.float32).mean()
    temp = jax.jit(jax.grad(loss)).lower(params, *inputs).compile().memory_analysis().temp_size_in_bytes
    v = config.vision
    tokens = v.padded_num_patches
    block_scores = v.attention_heads * (tokens // vision_lib.query_blocks(tokens, vision_lib.QUERY_BLOCK)) * tokens * 4
    layer_output = tokens * v.hidden_size * 2  # one image's [S, D] in bfloat16
    bound = block_scores + 2 * (v.num_hidden_layers + v.num_global_layers) * layer_output
    assert temp < bound, (f"vision temporaries {temp / MIB:.1f} MiB per chip, bound {bound / MIB:.1f} MiB: one query "
                          f"block's scores {block_scores / MIB:.1f} MiB + 2 x each layer's per-image output")
