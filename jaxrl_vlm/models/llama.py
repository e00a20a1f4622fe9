"""Llama causal LM and the PPO value head as pure functions over a param dict.

Params: {'embed': [V,D], 'layers': <one layer's dict with a leading [L] axis>, 'final_norm': [D],
         'lm_head': [D,V] (only when embeddings are untied)}.
Layers are stacked and run with `lax.scan` (one compiled layer body, whatever the depth) when there is no cache
(training, scoring). With a KV cache (prefill and decode) they run one after another (`layers.layer_params`), each
with its own cache arrays; `LlamaDecoder.decode_params` gives the layers the form a decode loop reads fastest
without a second copy of the weights on TPU / GPU (`layers.DecodeLayers`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.models.config import LlamaConfig, dtype_from_name
from jaxrl_vlm.models.layers import (KVCache, cache_mask, cached_decoder_layers, causal_mask, decode_layers,
                                     decoder_layer, init_kv_cache, kv_cache_logical_axes, layer_logical_axes,
                                     layer_param_shapes, positions_from_mask, rms_norm, rope_inv_freq)
from jaxrl_vlm.models.sharding import MeshRules

Params = dict[str, Any]
ACTIVATION_AXES = ("batch", "seq", "act_embed")
VALUE_HEAD_SIZES = (1024, 512)


def param_shapes(config: LlamaConfig) -> Params:
    """Tree of param shapes (tuples) of the causal LM."""
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
    layers = jax.tree_util.tree_map(lambda s: (config.num_layers, *s), layer_param_shapes(config), is_leaf=is_shape)
    shapes = {"embed": (config.vocab_size, config.hidden_size), "layers": layers, "final_norm": (config.hidden_size,)}
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (config.hidden_size, config.vocab_size)
    return shapes


def param_logical_axes(config: LlamaConfig) -> Params:
    """Tree of logical axis names matching `param_shapes` (see `jaxrl_vlm.models.sharding.LOGICAL_RULES`)."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(i, str) for i in x)
    layers = jax.tree_util.tree_map(lambda a: ("layers", *a), layer_logical_axes(), is_leaf=is_axes)
    axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("norm",)}
    if not config.tie_word_embeddings:
        axes["lm_head"] = ("embed", "vocab")
    return axes


def init_params(config: LlamaConfig, rng: jax.Array, std: float = 0.02) -> Params:
    """Random params (normal(0, std) matrices, unit norms) in `config.param_dtype`."""
    dtype = dtype_from_name(config.param_dtype)
    shapes = param_shapes(config)
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    keys = jax.random.split(rng, len(leaves))
    out = []
    for path, shape, key in zip(paths, leaves, keys):
        is_norm = "norm" in str(path[-1].key)
        out.append(jnp.ones(shape, dtype) if is_norm else (std * jax.random.normal(key, shape)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def _constrain(x: jax.Array, mesh_rules: MeshRules | None) -> jax.Array:
    return x if mesh_rules is None else mesh_rules.constrain(x, ACTIVATION_AXES)


def hidden_states(params: Params, input_ids: jax.Array, token_mask: jax.Array, config: LlamaConfig,
                  cache: KVCache | None = None, mesh_rules: MeshRules | None = None,
                  inputs_embeds: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states [B,T,D] (compute dtype) of T new tokens, and the updated cache.

    input_ids: int[B,T]; token_mask: [B,T] (1 = real token, 0 = padding; left padding for prompts).
    Without a cache: causal self-attention among the T tokens. With a cache: the tokens are written at slots
    cache.index.. and attend to every valid earlier slot; positions continue from cache.next_pos; params['layers']
    may be `DecodeLayers` (`decode_params`).
    `inputs_embeds` [B,T,D] replaces the embedding lookup when given.
    """
    dt = dtype_from_name(config.compute_dtype)
    token_mask = token_mask.astype(bool)
    x = params["embed"][input_ids] if inputs_embeds is None else inputs_embeds
    x = _constrain(x.astype(dt), mesh_rules)
    inv_freq = jnp.asarray(rope_inv_freq(config))
    t = input_ids.shape[1]
    if cache is None:
        positions = positions_from_mask(token_mask)
        mask = causal_mask(token_mask)

        def body(h, layer):
            h, _ = decoder_layer(layer, h, positions, mask, inv_freq, config)
            return _constrain(h, mesh_rules), None
        x, _ = jax.lax.scan(jax.checkpoint(body) if config.remat else body, x, params["layers"])
        new_cache = None
    else:
        positions = positions_from_mask(token_mask, cache.next_pos)
        valid = jax.lax.dynamic_update_slice(cache.valid, token_mask, (0, cache.index))
        mask = cache_mask(valid, cache.index, t)

        x, k, v = cached_decoder_layers(params["layers"], x, cache.k, cache.v, positions, mask, inv_freq, config,
                                        cache.index, lambda h: _constrain(h, mesh_rules))
        new_cache = KVCache(k=k, v=v, valid=valid,
                            next_pos=cache.next_pos + token_mask.sum(axis=1, dtype=jnp.int32),
                            index=cache.index + t)
    return rms_norm(x, params["final_norm"], config.rms_norm_eps), new_cache


def lm_logits(params: Params, hidden: jax.Array, config: LlamaConfig) -> jax.Array:
    """float32 logits [..., V] from final hidden states [..., D] (tied or untied output embedding)."""
    dt = hidden.dtype
    if config.tie_word_embeddings:
        return jnp.einsum("...d,vd->...v", hidden, params["embed"].astype(dt), preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", hidden, params["lm_head"].astype(dt), preferred_element_type=jnp.float32)


def forward(params: Params, input_ids: jax.Array, token_mask: jax.Array, config: LlamaConfig,
            mesh_rules: MeshRules | None = None) -> jax.Array:
    """float32 logits [B,T,V] of a (left-padded) batch without a cache."""
    hidden, _ = hidden_states(params, input_ids, token_mask, config, mesh_rules=mesh_rules)
    return lm_logits(params, hidden, config)


def decode_step(params: Params, input_ids: jax.Array, token_mask: jax.Array, cache: KVCache, extra: Any,
                config: LlamaConfig, mesh_rules: MeshRules | None = None) -> tuple[jax.Array, KVCache]:
    """Sampler interface: append T tokens to the cache; return float32 logits [B,V] of the last column and the cache.

    `extra` is unused by the text-only Llama (Mllama threads its cross-attention state through it).
    """
    del extra
    hidden, cache = hidden_states(params, input_ids, token_mask, config, cache, mesh_rules)
    return lm_logits(params, hidden[:, -1], config), cache


@dataclasses.dataclass(frozen=True)
class LlamaDecoder:
    """The sampler's `DecodeModel` for a Llama causal LM (hashable: a static jit argument)."""

    config: LlamaConfig
    mesh_rules: MeshRules | None = None

    def decode_params(self, params: Params) -> Params:
        """Params with the layers as `layers.DecodeLayers`, for `step` in a decode loop (inside jit; idempotent)."""
        return dict(params, layers=decode_layers(params["layers"], self.config.num_layers))

    def step(self, params: Params, input_ids: jax.Array, token_mask: jax.Array, cache: KVCache,
             extra: Any) -> tuple[jax.Array, KVCache]:
        """See `decode_step`."""
        return decode_step(params, input_ids, token_mask, cache, extra, self.config, self.mesh_rules)

    def init_cache(self, batch: int, capacity: int) -> KVCache:
        """Empty cache, sharded by the logical rules when there is a mesh."""
        make = lambda: init_kv_cache(self.config, batch, capacity)
        if self.mesh_rules is None:
            return make()
        shapes = jax.eval_shape(make)
        shardings = jax.tree_util.tree_map(
            lambda axes, s: self.mesh_rules.sharding(s.shape, axes, "kv_cache"),
            kv_cache_logical_axes(self.config.num_layers), shapes,
            is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x))
        return jax.jit(make, out_shardings=shardings)()


def init_value_head(rng: jax.Array, hidden_size: int, dtype: Any = jnp.float32) -> Params:
    """Value head params: Linear(D,1024) -> ReLU -> Linear(1024,512) -> ReLU -> Linear(512,1), as in the reference
    `VLMValue`; torch-style uniform(+-1/sqrt(fan_in)) init."""
    sizes = (hidden_size, *VALUE_HEAD_SIZES, 1)
    keys = jax.random.split(rng, 2 * (len(sizes) - 1))
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / np.sqrt(fan_in)
        params[f"dense_{i}"] = {
            "kernel": jax.random.uniform(keys[2 * i], (fan_in, fan_out), dtype, -bound, bound),
            "bias": jax.random.uniform(keys[2 * i + 1], (fan_out,), dtype, -bound, bound)}
    return params


def value_head_logical_axes() -> Params:
    """Logical axes of the value head params."""
    return {"dense_0": {"kernel": ("embed", "value_hidden"), "bias": ("value_hidden",)},
            "dense_1": {"kernel": ("value_hidden", "value_hidden"), "bias": ("value_hidden",)},
            "dense_2": {"kernel": ("value_hidden", None), "bias": (None,)}}


def value_head(params: Params, hidden: jax.Array) -> jax.Array:
    """float32 values [...] from hidden states [..., D] (MLP with ReLU, computed in float32)."""
    x = hidden.astype(jnp.float32)
    n = len(params)
    for i in range(n):
        layer = params[f"dense_{i}"]
        x = x @ layer["kernel"].astype(jnp.float32) + layer["bias"].astype(jnp.float32)
        if i < n - 1:
            x = jax.nn.relu(x)
    return x[..., 0]


def token_values(params: Params, value_params: Params, input_ids: jax.Array, token_mask: jax.Array,
                 token_index: jax.Array, config: LlamaConfig, mesh_rules: MeshRules | None = None) -> jax.Array:
    """float32 values [B] of the final hidden state at column token_index[B] (e.g. the last prompt token)."""
    hidden, _ = hidden_states(params, input_ids, token_mask, config, mesh_rules=mesh_rules)
    chosen = jnp.take_along_axis(hidden, token_index[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    return value_head(value_params, chosen)
