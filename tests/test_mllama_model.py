"""Mllama (Llama-3.2-Vision) vs transformers' MllamaForConditionalGeneration on a tiny random checkpoint written by
`save_pretrained` (sharded safetensors + index, the 11B's on-disk layout): logits (text only, one image, a padded
batch with several multi-tile images), vision attention in query blocks, cross-K/V-cached decoding, greedy
generation, sharded loading, bad inputs."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import torch
import transformers
from transformers.models.mllama.processing_mllama import (  # noqa: E402
    convert_sparse_cross_attention_mask_to_dense, get_cross_attention_token_mask)

from jaxrl_vlm.models import api, mllama, mllama_port, mllama_vision, sampler  # noqa: E402
from jaxrl_vlm.models.port.safetensors_io import CheckpointReader  # noqa: E402
from jaxrl_vlm.models.sharding import make_mesh, tree_shardings  # noqa: E402

VOCAB, IMG, PAD, BOS, EOS = 100, 100, 0, 1, 2  # <|image|> lives in the 8 extra embedding rows, like 128256
TILE = 28
ATOL = 1e-4


def _hf_config():
    return transformers.MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                           attention_heads=4, image_size=TILE, patch_size=14, intermediate_layers_indices=[0, 2],
                           vision_output_dim=96, max_num_tiles=4),
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1, 3],
                         pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, max_position_embeddings=256,
                         rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                              low_freq_factor=1.0, high_freq_factor=4.0,
                                              original_max_position_embeddings=64)),
        image_token_index=IMG)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, transformers model): random weights of O(0.1), random gates (the init leaves them 0)."""
    torch.manual_seed(0)
    model = transformers.MllamaForConditionalGeneration(_hf_config()).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() == 1:
                p.uniform_(-1.0, 1.0, generator=gen)
            elif name.endswith("norm.weight") or "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    directory = str(tmp_path_factory.mktemp("tiny_mllama"))
    model.save_pretrained(directory, max_shard_size="40KB")
    assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
    return directory, model


@pytest.fixture(scope="module")
def model(checkpoint):
    return api.load(checkpoint[0])


def _image(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _vision_inputs(images, input_ids):
    """transformers' processor outputs for nested images and (padded) token ids."""
    processed = transformers.MllamaImageProcessorPil(size={"height": TILE, "width": TILE})(images, return_tensors="np")
    spans = [get_cross_attention_token_mask(list(row), IMG) for row in input_ids]
    cross = convert_sparse_cross_attention_mask_to_dense(spans, processed["num_tiles"], 4, input_ids.shape[1])
    return {"pixel_values": processed["pixel_values"], "aspect_ratio_ids": processed["aspect_ratio_ids"],
            "aspect_ratio_mask": processed["aspect_ratio_mask"], "cross_attention_mask": cross}


def _positions(attention_mask):
    return np.maximum(np.cumsum(attention_mask, axis=-1) - 1, 0)


def _hf_logits(hf_model, input_ids, attention_mask, vision=None):
    kwargs = {k: torch.tensor(np.asarray(v)) for k, v in (vision or {}).items()}
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
                       position_ids=torch.tensor(_positions(attention_mask)), **kwargs)
    return out.logits.numpy()


def _assert_close_on_real_tokens(ours, ref, attention_mask):
    real = attention_mask.astype(bool)
    diff = np.abs(ours - ref)[real].max()
    assert diff <= ATOL, f"max abs logits diff {diff} on real tokens"


@pytest.fixture(scope="module")
def padded_image_batch():
    """Two left-padded samples: 2 images (wide multi-tile + small square) and 1 tall multi-tile image whose
    <|image|> is the last prompt token (only the last mask row attends to it)."""
    input_ids = np.array([[BOS, IMG, 11, 12, IMG, 13, 14, 15, 16],
                          [PAD, PAD, PAD, BOS, 21, 22, 23, 24, IMG]])
    attention_mask = (input_ids != PAD).astype(np.int64)
    images = [[_image(30, 80, 1), _image(20, 20, 2)], [_image(90, 25, 3)]]
    return input_ids, attention_mask, _vision_inputs(images, input_ids)


def test_text_only_padded_batch_logits(checkpoint, model):
    input_ids = np.array([[BOS, 5, 6, 7, 8, 9, 10, 11], [PAD, PAD, PAD, BOS, 30, 31, 32, 33]])
    attention_mask = (input_ids != PAD).astype(np.int64)
    ref = _hf_logits(checkpoint[1], input_ids, attention_mask)
    _assert_close_on_real_tokens(model.logits(input_ids, attention_mask), ref, attention_mask)


def test_single_image_logits(checkpoint, model):
    input_ids = np.array([[BOS, 5, IMG, 7, 8, 9, 10]])  # tokens before <|image|> have a fully masked row
    attention_mask = np.ones_like(input_ids)
    vision = _vision_inputs([[_image(20, 24, 0)]], input_ids)
    assert vision["aspect_ratio_ids"].tolist() == [[1]]
    ours = model.logits(input_ids, attention_mask, **vision)
    _assert_close_on_real_tokens(ours, _hf_logits(checkpoint[1], input_ids, attention_mask, vision), attention_mask)
    text_only = _hf_logits(checkpoint[1], input_ids, attention_mask)
    assert np.abs(ours - text_only)[0, 2:].max() > 100 * ATOL  # the image really changes the logits


def test_padded_multi_image_multi_tile_batch_logits(checkpoint, model, padded_image_batch):
    input_ids, attention_mask, vision = padded_image_batch
    assert vision["aspect_ratio_ids"][0, 0] > 1 and vision["aspect_ratio_ids"][1, 0] > 1
    assert vision["aspect_ratio_ids"][1, 1] == 0  # sample 1 has no second image
    ours = model.vision_inputs([[_image(30, 80, 1), _image(20, 20, 2)], [_image(90, 25, 3)]], input_ids)
    for key, value in vision.items():
        np.testing.assert_allclose(ours[key], value, atol=1e-6, rtol=0, err_msg=key)
    ref = _hf_logits(checkpoint[1], input_ids, attention_mask, vision)
    _assert_close_on_real_tokens(model.logits(input_ids, attention_mask, **vision), ref, attention_mask)


def test_vision_features_in_query_blocks_equal_one_block(model, padded_image_batch):
    """The encoder's attention over 4 blocks of 8 queries gives the one-block (transformers-equal) features."""
    _, _, vision = padded_image_batch
    c = model.config.vision
    args = (model.params["vision"], vision["pixel_values"], vision["aspect_ratio_ids"], vision["aspect_ratio_mask"])
    assert mllama_vision.query_blocks(c.max_num_tiles * c.padded_num_patches, 8) == 4
    np.testing.assert_allclose(mllama_vision.vision_features(*args, c, query_block=8),
                               mllama_vision.vision_features(*args, c), rtol=1e-6, atol=1e-6)


def test_cross_kv_cached_decoding_equals_full_forward(checkpoint, model, padded_image_batch):
    """Feed the prompt, then two more tokens, one column at a time through the cached step (cross K/V computed
    once): prompt columns equal our full forward; the extra tokens equal transformers' forward with the last
    cross-attention mask row repeated (what its `generate` does)."""
    input_ids, attention_mask, vision = padded_image_batch
    full = model.logits(input_ids, attention_mask, **vision)
    extra = model.sampler_extra(model.params, **vision)
    cache = model.decoder.init_cache(2, 16)
    for column in range(input_ids.shape[1]):
        logits, cache = sampler.append_tokens(model.decoder, model.params, cache, input_ids[:, column:column + 1],
                                              attention_mask[:, column:column + 1].astype(bool), extra)
        real = attention_mask[:, column].astype(bool)
        np.testing.assert_allclose(np.asarray(logits)[real], full[real, column], atol=ATOL, rtol=0)

    appended = np.array([[40, 41], [42, 43]])
    longer_ids = np.concatenate([input_ids, appended], axis=1)
    longer_mask = np.concatenate([attention_mask, np.ones_like(appended)], axis=1)
    cross = vision["cross_attention_mask"]
    longer_vision = dict(vision, cross_attention_mask=np.concatenate([cross, cross[:, -1:], cross[:, -1:]], axis=1))
    ref = _hf_logits(checkpoint[1], longer_ids, longer_mask, longer_vision)
    for i in range(appended.shape[1]):
        logits, cache = sampler.append_tokens(model.decoder, model.params, cache, appended[:, i:i + 1],
                                              np.ones((2, 1), bool), extra)
        np.testing.assert_allclose(np.asarray(logits), ref[:, input_ids.shape[1] + i], atol=ATOL, rtol=0)


def test_greedy_generation_matches_transformers(checkpoint, model, padded_image_batch):
    input_ids, attention_mask, vision = padded_image_batch
    new = 6
    ours = api.generate(model, input_ids, attention_mask, max_new_tokens=new, **vision)
    kwargs = {k: torch.tensor(np.asarray(v)) for k, v in vision.items()}
    with torch.no_grad():
        ref = checkpoint[1].generate(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
                                     max_new_tokens=new, do_sample=False, pad_token_id=PAD, eos_token_id=EOS,
                                     **kwargs)
    np.testing.assert_array_equal(ours, ref[:, input_ids.shape[1]:].numpy())


def test_sharded_load_gives_the_same_logits(checkpoint, model, padded_image_batch):
    input_ids, attention_mask, vision = padded_image_batch
    mesh = make_mesh(data=1, fsdp=2, tensor=2, devices=jax.devices()[:4])
    sharded = api.load(checkpoint[0], mesh=mesh)
    assert len(sharded.params["cross_layers"]["attn"]["q"].sharding.device_set) == 4
    np.testing.assert_allclose(sharded.logits(input_ids, attention_mask, **vision),
                               model.logits(input_ids, attention_mask, **vision), atol=1e-5, rtol=0)


def test_bad_inputs_raise_clear_errors(checkpoint, model, padded_image_batch, tmp_path):
    input_ids, attention_mask, vision = padded_image_batch
    wrong = dict(vision, pixel_values=vision["pixel_values"][..., :20])
    with pytest.raises(ValueError, match="pixel_values"):
        model.logits(input_ids, attention_mask, **wrong)
    missing = {k: v for k, v in vision.items() if k != "aspect_ratio_ids"}
    with pytest.raises(ValueError, match="aspect_ratio_ids"):
        model.logits(input_ids, attention_mask, **missing)
    with pytest.raises(ValueError, match="pixel_value"):
        model.logits(input_ids, attention_mask, pixel_value=vision["pixel_values"])
    with pytest.raises(ValueError, match="cross_attention_mask"):
        model.sampler_extra(model.params, **dict(vision, cross_attention_mask=vision["cross_attention_mask"][..., :2]))

    class Without:
        def __init__(self, reader, key):
            self.reader, self.key = reader, key

        def keys(self):
            return [k for k in self.reader.keys() if k != self.key]

        def shape(self, name):
            return self.reader.shape(name)

        def read(self, name):
            return self.reader.read(name)

    dropped = "vision_model.global_transformer.layers.1.gate_ffn"  # save_pretrained writes the 11B's layout
    with pytest.raises(ValueError, match=r"lacks .*model\.vision_model\.global_transformer\.layers\.1\.gate_ffn"):
        mllama_port.load_params(Without(CheckpointReader(checkpoint[0]), dropped), model.config)
    with pytest.raises(FileNotFoundError, match="config.json"):
        api.load(str(tmp_path))
    shutil.copy(os.path.join(checkpoint[0], "config.json"), tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        api.load(str(tmp_path))


def test_11b_config_matches_transformers_parameter_count():
    config_dict = mllama.mllama_11b_config()
    config = mllama.MllamaConfig.from_hf_dict(config_dict)
    assert config.cross_attention_layers == (3, 8, 13, 18, 23, 28, 33, 38)
    assert config.vision.vision_output_dim == 7680 and config.num_vision_tokens_per_image == 4 * 1601
    with torch.device("meta"):
        reference = transformers.MllamaForConditionalGeneration(transformers.MllamaConfig(**config_dict))
    expected = sum(p.numel() for p in reference.parameters())
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
    ours = sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(mllama.param_shapes(config), is_leaf=is_shape))
    assert ours == expected
    small = mllama.MllamaConfig.from_hf_dict(json.loads(json.dumps(mllama.mllama_11b_config(5, 4))))
    assert small.cross_attention_layers == (3,) and small.vision.intermediate_layers_indices == (3,)
    assert small.text.num_layers == 5 and small.vision.num_hidden_layers == 4


def test_11b_shapes_trace_and_shard():
    """The real 11B config traces end to end (abstract bf16 params: vision at 560 px / 4 tiles, cross K/V, cached
    decode step) and every param has a valid sharding on a (data, fsdp, tensor) = (2, 2, 2) mesh."""
    config = mllama.MllamaConfig.from_hf_dict(mllama.mllama_11b_config(), "bfloat16")
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
    shapes = mllama.param_shapes(config)
    params = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, np.dtype("bfloat16")), shapes,
                                    is_leaf=is_shape)
    sd = jax.ShapeDtypeStruct
    batch, length = 2, 16
    image_inputs = (sd((batch, 1, 4, 3, 560, 560), np.float32), sd((batch, 1), np.int32),
                    sd((batch, 1, 4), np.int32), sd((batch, length, 1, 4), np.int32))
    cross = jax.eval_shape(lambda p, *x: mllama.encode_images(p, *x, config), params, *image_inputs)
    assert len(cross.k) == 8 and all(k.shape == (batch, 8, 4 * 1601 + 4, 128) for k in cross.k + cross.v)
    cache = jax.eval_shape(lambda: mllama.init_cache(config, batch, 32))
    logits, _ = jax.eval_shape(
        lambda p, c, e: mllama.decode_step(p, np.zeros((batch, length), np.int32), np.ones((batch, length), bool),
                                           c, e, config), params, cache, cross)
    assert logits.shape == (batch, 128256)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    tree_shardings(shapes, mllama.param_logical_axes(config), mesh)


def test_init_params_match_param_shapes_and_dtype(model):
    config = model.config.with_dtypes("bfloat16")
    params = jax.eval_shape(lambda: mllama.init_params(config, jax.random.PRNGKey(0)))
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
    expected = mllama.param_shapes(config)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected, is_leaf=is_shape)
    for leaf, shape in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected, is_leaf=is_shape)):
        assert leaf.shape == shape and leaf.dtype == np.dtype("bfloat16")


def test_export_round_trip_loads_in_transformers(checkpoint, model, padded_image_batch, tmp_path):
    """Our params -> HF directory -> transformers -> the same logits as the original transformers model."""
    _, hf_model = checkpoint
    files = model.export(str(tmp_path / "export"), max_shard_bytes=60_000)
    assert "model.safetensors.index.json" in files
    reloaded = transformers.MllamaForConditionalGeneration.from_pretrained(str(tmp_path / "export")).eval()
    input_ids, attention_mask, vision = padded_image_batch
    expected = _hf_logits(hf_model, input_ids, attention_mask, vision)
    got = _hf_logits(reloaded, input_ids, attention_mask, vision)
    np.testing.assert_allclose(got, expected, atol=1e-6)
