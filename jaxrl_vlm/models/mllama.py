"""Llama-3.2-Vision (Mllama) as pure functions over a param dict, numerically equal to transformers'
`MllamaForConditionalGeneration`.

The text decoder is a Llama stack (self-attention layers from `jaxrl_vlm.models.layers`) with gated cross-attention
layers at `cross_attention_layers`, attending to the projected vision features. Cross-attention keys/values are
computed once per image (`encode_images` -> `CrossAttentionState`) and reused for every prefill / decode step; the
self-attention layers use the Llama `KVCache` (one slot per token, cache for the self-attention layers only).

Params: {'embed': [V+8, D] (8 extra rows after the vocabulary; <|image|> = V is the first), 'layers': Llama layer dict stacked over the
self-attention layers, 'cross_layers': {'attn_norm': [C,D], 'attn': {'q': [C,D,H,Dh], 'k','v': [C,D,K,Dh],
'o': [C,H,Dh,D], 'q_norm','k_norm': [C,Dh]}, 'attn_gate': [C,1], 'mlp_norm': [C,D], 'mlp': {...}, 'mlp_gate': [C,1]},
'final_norm': [D], 'lm_head': [D,V], 'vision': see `mllama_vision`, 'projector': {'kernel', 'bias'}}.

Cross-attention masking follows transformers exactly: `cross_attention_mask` int[B, S, M, T] (1 = the text token at
that column attends to tile T of image M) is expanded to the image's patches; a text row with no allowed vision token
attends to ALL vision tokens (mask zeroed) and its cross-attention MLP output is dropped (full-text-row mask).
A token written at cache slot s uses mask row min(s, S-1): decoded tokens repeat the prompt's last row, as
transformers' `generate` does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.models import llama
from jaxrl_vlm.models import mllama_vision as vision_lib
from jaxrl_vlm.models.image_processing import MllamaImageProcessorConfig, preprocess_on_device
from jaxrl_vlm.models.config import LlamaConfig, dtype_from_name
from jaxrl_vlm.models.layers import (KVCache, attend, cache_mask, cached_decoder_layers, causal_mask, decode_layers,
                                     decoder_layer, dense, init_kv_cache, kv_cache_logical_axes, layer_logical_axes,
                                     layer_param_shapes, layer_params, positions_from_mask, rms_norm, rope_inv_freq,
                                     swiglu_mlp)
from jaxrl_vlm.models.mllama_vision import MllamaVisionConfig
from jaxrl_vlm.models.sharding import MeshRules

Params = dict[str, Any]
EXTRA_EMBEDDING_ROWS = 8
# Cross-attention keys are padded (masked) to a multiple of 8: XLA:TPU lays out a [B,K,N,Dh] argument whose N is not
# a multiple of its 8-row tiles with K innermost, and would relay out every layer's K/V before the decode loop.
CROSS_KEY_MULTIPLE = 8


@dataclasses.dataclass(frozen=True)
class MllamaConfig:
    """Mllama hyper-parameters: the text decoder (`text.num_layers` counts ALL layers, cross-attention ones
    included), the vision tower, the cross-attention layer indices and the <|image|> token id. Hashable."""

    text: LlamaConfig
    vision: MllamaVisionConfig
    cross_attention_layers: tuple[int, ...]
    image_token_index: int

    def __post_init__(self) -> None:
        bad = [i for i in self.cross_attention_layers if not 0 <= i < self.text.num_layers]
        if bad:
            raise ValueError(f"cross_attention_layers {bad} outside the {self.text.num_layers} text layers")
        if len(set(self.cross_attention_layers)) != len(self.cross_attention_layers):
            raise ValueError(f"cross_attention_layers has duplicates: {self.cross_attention_layers}")
        rows = self.text.vocab_size + EXTRA_EMBEDDING_ROWS
        for name, value in (("bos_token_id", self.text.bos_token_id), ("pad_token_id", self.text.pad_token_id),
                            ("image_token_index", self.image_token_index)):
            if value is not None and not 0 <= value < rows:
                raise ValueError(f"{name}={value} is outside the {rows}-row embedding table")
        bad_eos = [i for i in self.text.eos_token_ids if not 0 <= i < self.text.vocab_size]
        if bad_eos:
            raise ValueError(f"text_config.eos_token_id {bad_eos} outside the vocabulary of {self.text.vocab_size}")

    @property
    def self_attention_layers(self) -> tuple[int, ...]:
        """Indices of the plain self-attention layers, in order."""
        return tuple(i for i in range(self.text.num_layers) if i not in self.cross_attention_layers)

    @property
    def num_vision_tokens_per_image(self) -> int:
        """Cross-attention keys per image: max_num_tiles * num_patches."""
        return self.vision.max_num_tiles * self.vision.num_patches

    @property
    def segments(self) -> tuple[tuple[str, int, int], ...]:
        """Layer execution plan: ('self', a, b) runs self-attention layers a..b-1 (indices into the self stack),
        ('cross', j, j+1) the j-th cross-attention layer."""
        plan: list[tuple[str, int, int]] = []
        self_index = cross_index = 0
        for i in range(self.text.num_layers):
            if i in self.cross_attention_layers:
                plan.append(("cross", cross_index, cross_index + 1))
                cross_index += 1
            elif plan and plan[-1][0] == "self":
                plan[-1] = ("self", plan[-1][1], self_index + 1)
                self_index += 1
            else:
                plan.append(("self", self_index, self_index + 1))
                self_index += 1
        return tuple(plan)

    def with_dtypes(self, param_dtype: str, compute_dtype: str | None = None) -> "MllamaConfig":
        """Copy with other storage / compute dtypes for both towers."""
        compute = compute_dtype or param_dtype
        return dataclasses.replace(
            self, text=self.text.with_dtypes(param_dtype, compute),
            vision=dataclasses.replace(self.vision, param_dtype=param_dtype, compute_dtype=compute))

    def with_remat(self, remat: bool) -> "MllamaConfig":
        """Copy whose text decoder and vision encoder recompute (True) or keep (False) each layer's activations for
        the backward pass."""
        return dataclasses.replace(self, text=self.text.with_remat(remat),
                                   vision=dataclasses.replace(self.vision, remat=remat))

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], param_dtype: str = "float32",
                     compute_dtype: str | None = None) -> "MllamaConfig":
        """From an HF Mllama config.json dict (transformers 5 `rope_parameters` or the older `rope_scaling`)."""
        for key in ("text_config", "vision_config"):
            if not isinstance(cfg.get(key), dict):
                raise ValueError(f"Mllama config.json lacks the '{key}' entry")
        text_cfg = cfg["text_config"]
        if "cross_attention_layers" not in text_cfg:
            raise ValueError("Mllama text_config lacks 'cross_attention_layers'")
        config = cls(
            text=LlamaConfig.from_hf_dict(text_cfg),
            vision=MllamaVisionConfig.from_hf_dict(cfg["vision_config"]),
            cross_attention_layers=tuple(int(i) for i in text_cfg["cross_attention_layers"]),
            image_token_index=int(cfg.get("image_token_index", cfg.get("image_token_id", 128256))))
        return config.with_dtypes(param_dtype, compute_dtype)

    def to_hf_dict(self) -> dict[str, Any]:
        """An HF `MllamaForConditionalGeneration` config.json dict."""
        text = self.text.to_hf_dict()
        for key in ("architectures", "attention_bias", "mlp_bias", "torch_dtype", "head_dim"):
            text.pop(key, None)
        text.update(model_type="mllama_text_model", cross_attention_layers=list(self.cross_attention_layers))
        return {"architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama",
                "image_token_index": self.image_token_index, "text_config": text,
                "vision_config": self.vision.to_hf_dict(), "torch_dtype": self.text.param_dtype}


class CrossAttentionState(NamedTuple):
    """Per-image cross-attention keys/values and the text->image mask (a pytree; the sampler's `extra`).

    k, v: C-tuples (one per cross-attention layer) of [B, K, N', Dh] arrays in the compute dtype: the N = M *
    max_num_tiles * num_patches vision tokens (k-normed keys), then zeros up to N' (a multiple of
    CROSS_KEY_MULTIPLE; always masked). Separate arrays in the layout attention reads, like `KVCache`, so a decode
    step neither slices a stacked array nor transposes (XLA:TPU otherwise keeps a relaid-out copy of every layer's
    K/V for the whole decode loop);
    mask: int32[B, S, M, T], transformers' `cross_attention_mask` of the prompt (row min(slot, S-1) applies).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array


# ----------------------------------------------------------------------------------------------------------------
# Params


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def cross_layer_shapes(config: LlamaConfig) -> Params:
    """Shapes of one cross-attention decoder layer's params."""
    d, h, k, dh = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    base = layer_param_shapes(config)
    return {"attn_norm": (d,), "attn": {"q": (d, h, dh), "k": (d, k, dh), "v": (d, k, dh), "o": (h, dh, d),
                                        "q_norm": (dh,), "k_norm": (dh,)},
            "attn_gate": (1,), "mlp_norm": (d,), "mlp": base["mlp"], "mlp_gate": (1,)}


def cross_layer_logical_axes() -> Params:
    """Logical axes of one cross-attention decoder layer's params."""
    base = layer_logical_axes()
    attn = dict(base["attn"], q_norm=("head_dim",), k_norm=("head_dim",))
    return {"attn_norm": ("norm",), "attn": attn, "attn_gate": (None,), "mlp_norm": ("norm",), "mlp": base["mlp"],
            "mlp_gate": (None,)}


def param_shapes(config: MllamaConfig) -> Params:
    """Tree of param shapes (tuples) of the whole model."""
    t = config.text
    stack = lambda n, tree: jax.tree_util.tree_map(lambda s: (n, *s), tree, is_leaf=_is_shape)
    return {"embed": (t.vocab_size + EXTRA_EMBEDDING_ROWS, t.hidden_size),
            "layers": stack(len(config.self_attention_layers), layer_param_shapes(t)),
            "cross_layers": stack(len(config.cross_attention_layers), cross_layer_shapes(t)),
            "final_norm": (t.hidden_size,), "lm_head": (t.hidden_size, t.vocab_size),
            "vision": vision_lib.param_shapes(config.vision),
            "projector": vision_lib.projector_shapes(config.vision, t.hidden_size)}


def param_logical_axes(config: MllamaConfig) -> Params:
    """Logical axis names matching `param_shapes` (see `jaxrl_vlm.models.sharding`)."""
    stack = lambda tree: jax.tree_util.tree_map(lambda a: ("layers", *a), tree, is_leaf=_is_axes)
    return {"embed": ("vocab", "embed"), "layers": stack(layer_logical_axes()),
            "cross_layers": stack(cross_layer_logical_axes()), "final_norm": ("norm",), "lm_head": ("embed", "vocab"),
            "vision": vision_lib.param_logical_axes(config.vision), "projector": vision_lib.projector_logical_axes()}


def cross_state_logical_axes(num_layers: int) -> CrossAttentionState:
    """Logical axes of a `CrossAttentionState` of `num_layers` cross-attention layers."""
    kv = tuple(("batch", "kv_heads", "cache_seq", "head_dim") for _ in range(num_layers))
    return CrossAttentionState(k=kv, v=kv, mask=("batch", None, None, None))


def init_params(config: MllamaConfig, rng: jax.Array, std: float = 0.02) -> Params:
    """Random params in the configured dtypes (normal(0, std) matrices, unit norms, zero cross-attention gates
    as in transformers' init)."""
    dtype = dtype_from_name(config.text.param_dtype)
    text_shapes = {k: v for k, v in param_shapes(config).items() if k not in ("vision", "projector")}
    flat, treedef = jax.tree_util.tree_flatten_with_path(text_shapes, is_leaf=_is_shape)
    keys = jax.random.split(rng, len(flat) + 2)
    leaves = []
    for (path, shape), key in zip(flat, keys):
        name = str(getattr(path[-1], "key", path[-1]))
        if "norm" in name:
            leaves.append(jnp.ones(shape, dtype))
        elif name.endswith("gate") and shape[-1] == 1:
            leaves.append(jnp.zeros(shape, dtype))
        else:
            leaves.append((std * jax.random.normal(key, shape)).astype(dtype))
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    params["vision"] = vision_lib.init_params(config.vision, keys[-2], std)
    params["projector"] = vision_lib.init_projector(config.vision, config.text.hidden_size, keys[-1], std)
    return params


def init_cache(config: MllamaConfig, batch: int, capacity: int) -> KVCache:
    """Empty self-attention KV cache (cross-attention layers keep their K/V in `CrossAttentionState`)."""
    return init_kv_cache(config.text, batch, capacity, num_layers=len(config.self_attention_layers))


# ----------------------------------------------------------------------------------------------------------------
# Vision side: computed once per image


def cross_attention_states(params: Params, pixel_values: jax.Array, aspect_ratio_ids: jax.Array,
                           aspect_ratio_mask: jax.Array, config: MllamaConfig,
                           mesh_rules: MeshRules | None = None) -> jax.Array:
    """Projected vision features [B, M*T*P, D] (compute dtype) of pixel_values float[B,M,T,C,S,S]; with mesh_rules
    the encoder's activations are split by image over the batch axes, as the text's are."""
    constrain = lambda x: _constrain(x, mesh_rules)
    features = vision_lib.vision_features(params["vision"], pixel_values, aspect_ratio_ids, aspect_ratio_mask,
                                          config.vision, constrain=constrain)
    return constrain(vision_lib.project(params["projector"], features))


def compute_cross_kv(params: Params, states: jax.Array, cross_attention_mask: jax.Array,
                     config: MllamaConfig) -> CrossAttentionState:
    """Cross-attention K/V of every cross-attention layer from projected states [B,N,D], with the prompt's
    cross_attention_mask int[B,S,M,T] (transformers' layout)."""
    t = config.text
    mask = jnp.asarray(cross_attention_mask).astype(jnp.int32)
    if mask.ndim != 4 or mask.shape[3] != config.vision.max_num_tiles or mask.shape[0] != states.shape[0]:
        raise ValueError(f"cross_attention_mask must have shape [batch={states.shape[0]}, seq, num_images, "
                         f"{config.vision.max_num_tiles}], got {tuple(mask.shape)}")
    num_images = mask.shape[2]
    if states.shape[1] != num_images * config.num_vision_tokens_per_image:
        raise ValueError(f"cross-attention states hold {states.shape[1]} vision tokens but cross_attention_mask "
                         f"has {num_images} images of {config.num_vision_tokens_per_image} tokens")
    dt = dtype_from_name(t.compute_dtype)
    x = jnp.pad(states.astype(dt), ((0, 0), (0, -states.shape[1] % CROSS_KEY_MULTIPLE), (0, 0)))

    ks, vs = [], []
    for i in range(len(config.cross_attention_layers)):
        layer = layer_params(params["cross_layers"]["attn"], i)
        ks.append(rms_norm(dense("bnd,dke->bkne", x, layer["k"]), layer["k_norm"], t.rms_norm_eps))
        vs.append(dense("bnd,dke->bkne", x, layer["v"]))
    return CrossAttentionState(k=tuple(ks), v=tuple(vs), mask=mask)


def encode_images(params: Params, pixel_values: jax.Array, aspect_ratio_ids: jax.Array,
                  aspect_ratio_mask: jax.Array, cross_attention_mask: jax.Array | None,
                  config: MllamaConfig, mesh_rules: MeshRules | None = None) -> CrossAttentionState:
    """Vision tower + projector + cross-attention K/V, once per batch of images (see `cross_attention_states` for
    mesh_rules).

    Without `cross_attention_mask` every text token attends to every tile (transformers' behaviour with no mask).
    """
    states = cross_attention_states(params, pixel_values, aspect_ratio_ids, aspect_ratio_mask, config, mesh_rules)
    if cross_attention_mask is None:
        b, m = pixel_values.shape[:2]
        cross_attention_mask = jnp.ones((b, 1, m, config.vision.max_num_tiles), jnp.int32)
    return compute_cross_kv(params, states, cross_attention_mask, config)


def image_cross_attention_mask(input_ids: jax.Array, image_token_id: int, aspect_ratio_mask: jax.Array) -> jax.Array:
    """transformers' cross_attention_mask int32[B, S, 1, T] of token rows int32[B, S] holding at most one image
    each, on the device: the tokens from the <|image|> token on see the image's used tiles (aspect_ratio_mask
    int32[B, 1, T]); a row without an image token sees nothing (its text skips cross-attention)."""
    seen = jnp.cumsum(input_ids == image_token_id, axis=1) > 0
    return (seen[:, :, None, None] & (aspect_ratio_mask[:, None, :, :] > 0)).astype(jnp.int32)


def vision_inputs_on_device(images: jax.Array, input_ids: jax.Array, config: MllamaConfig,
                            image_config: MllamaImageProcessorConfig) -> dict[str, jax.Array]:
    """Model inputs of one image per row, all on the device (jittable): images uint8[B, H, W, 3] and the token rows
    int32[B, S] that show them -> pixel_values, aspect_ratio_ids, aspect_ratio_mask (`preprocess_on_device`) and
    cross_attention_mask int32[B, S, 1, T] (`image_cross_attention_mask`), as `MllamaModel.vision_inputs` on the
    host."""
    vision = preprocess_on_device(images, image_config)
    cross = image_cross_attention_mask(input_ids, config.image_token_index, vision["aspect_ratio_mask"])
    return {**vision, "cross_attention_mask": cross}


def cross_attention_token_mask(mask: jax.Array, slots: jax.Array, num_patches: int) -> tuple[jax.Array, jax.Array]:
    """Text->vision attention of the tokens at cache slots int[T] from the prompt mask int32[B,S,M,T_tiles].

    Returns (allowed bool[B,T,N'] over the N = M*T_tiles*num_patches vision tokens and the padding keys after them
    (see `CrossAttentionState`), full_row bool[B,T]). Exactly transformers' `_prepare_cross_attention_mask`: rows
    without any allowed token become all-allowed (padding keys excepted) and are flagged False in full_row.
    """
    rows = jnp.take(mask, jnp.clip(slots, 0, mask.shape[1] - 1), axis=1)
    allowed = jnp.repeat(rows == 1, num_patches, axis=3).reshape(rows.shape[0], rows.shape[1], -1)
    full_row = jnp.any(allowed, axis=-1)
    allowed = allowed | ~full_row[..., None]
    return jnp.pad(allowed, ((0, 0), (0, 0), (0, -allowed.shape[2] % CROSS_KEY_MULTIPLE))), full_row


# ----------------------------------------------------------------------------------------------------------------
# Text decoder


def cross_attention_layer(p: Params, x: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array,
                          full_row: jax.Array, config: LlamaConfig) -> jax.Array:
    """Gated cross-attention decoder layer. x: [B,T,D]; k, v: [B,K,N,Dh]; allowed: bool[B,T,N]; full_row: bool[B,T]."""
    dt = x.dtype
    h = rms_norm(x, p["attn_norm"], config.rms_norm_eps)
    q = dense("btd,dhe->bthe", h, p["attn"]["q"])
    q = rms_norm(q, p["attn"]["q_norm"], config.rms_norm_eps)
    out = attend(q, k.astype(dt), v.astype(dt), allowed)
    h = dense("bthe,hed->btd", out, p["attn"]["o"])
    x = x + jnp.tanh(p["attn_gate"].astype(jnp.float32)).astype(dt) * h
    h = swiglu_mlp(p["mlp"], rms_norm(x, p["mlp_norm"], config.rms_norm_eps))
    h = h * full_row[..., None].astype(dt)
    return x + jnp.tanh(p["mlp_gate"].astype(jnp.float32)).astype(dt) * h


def _constrain(x: jax.Array, mesh_rules: MeshRules | None) -> jax.Array:
    return x if mesh_rules is None else mesh_rules.constrain(x, llama.ACTIVATION_AXES)


def hidden_states(params: Params, input_ids: jax.Array, token_mask: jax.Array, config: MllamaConfig,
                  cross: CrossAttentionState | None = None, cache: KVCache | None = None,
                  mesh_rules: MeshRules | None = None,
                  positions: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states [B,T,D] (compute dtype) of T new tokens and the updated self-attention cache.

    input_ids: int[B,T]; token_mask: [B,T] (1 = real token; left padding). Without `cross` the cross-attention
    layers are skipped (text-only, as transformers does). Without a cache: causal attention among the T tokens, at
    slots 0..T-1. With a cache: tokens go to slots cache.index.. and see every valid earlier slot, and the layer
    stacks may be `DecodeLayers` (`MllamaDecoder.decode_params`). `positions` int[B,T] overrides the position ids
    (default: count of real tokens before each token).
    """
    t_cfg = config.text
    dt = dtype_from_name(t_cfg.compute_dtype)
    token_mask = token_mask.astype(bool)
    num_new = input_ids.shape[1]
    x = _constrain(jnp.take(params["embed"], input_ids, axis=0).astype(dt), mesh_rules)
    inv_freq = jnp.asarray(rope_inv_freq(t_cfg))
    start = jnp.zeros((), jnp.int32) if cache is None else cache.index
    if cache is None:
        if positions is None:
            positions = positions_from_mask(token_mask)
        mask = causal_mask(token_mask)
        valid = None
    else:
        if positions is None:
            positions = positions_from_mask(token_mask, cache.next_pos)
        valid = jax.lax.dynamic_update_slice(cache.valid, token_mask, (0, cache.index))
        mask = cache_mask(valid, cache.index, num_new)
    if cross is not None:
        allowed, full_row = cross_attention_token_mask(cross.mask, start + jnp.arange(num_new),
                                                       config.vision.num_patches)

    new_k, new_v = [], []
    for kind, a, b in config.segments:
        if kind == "cross":
            if cross is not None:
                x = _constrain(cross_attention_layer(layer_params(params["cross_layers"], a), x, cross.k[a],
                                                     cross.v[a], allowed, full_row, t_cfg), mesh_rules)
            continue
        if cache is None:
            def body(h, layer):
                h, _ = decoder_layer(layer, h, positions, mask, inv_freq, t_cfg)
                return _constrain(h, mesh_rules), None
            layers = jax.tree_util.tree_map(lambda w: w[a:b], params["layers"])
            x, _ = jax.lax.scan(jax.checkpoint(body) if t_cfg.remat else body, x, layers)
        else:
            x, k, v = cached_decoder_layers(params["layers"], x, cache.k[a:b], cache.v[a:b], positions, mask,
                                            inv_freq, t_cfg, cache.index, lambda h: _constrain(h, mesh_rules), first=a)
            new_k.extend(k)
            new_v.extend(v)
    new_cache = None
    if cache is not None:
        new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid=valid,
                            next_pos=cache.next_pos + token_mask.sum(axis=1, dtype=jnp.int32),
                            index=cache.index + num_new)
    return rms_norm(x, params["final_norm"], t_cfg.rms_norm_eps), new_cache


def lm_logits(params: Params, hidden: jax.Array, config: MllamaConfig) -> jax.Array:
    """float32 logits [..., V] from final hidden states [..., D] (the untied lm_head)."""
    return llama.lm_logits(params, hidden, config.text)


def forward(params: Params, input_ids: jax.Array, token_mask: jax.Array, config: MllamaConfig,
            pixel_values: jax.Array | None = None, aspect_ratio_ids: jax.Array | None = None,
            aspect_ratio_mask: jax.Array | None = None, cross_attention_mask: jax.Array | None = None,
            positions: jax.Array | None = None, mesh_rules: MeshRules | None = None) -> jax.Array:
    """float32 logits [B,T,V] of a (left-padded) batch without a cache, like transformers'
    `MllamaForConditionalGeneration(...).logits`. Image inputs are optional (text-only without them)."""
    cross = None
    if pixel_values is not None:
        if aspect_ratio_ids is None or aspect_ratio_mask is None:
            raise ValueError("pixel_values needs aspect_ratio_ids and aspect_ratio_mask")
        cross = encode_images(params, pixel_values, aspect_ratio_ids, aspect_ratio_mask, cross_attention_mask, config,
                              mesh_rules)
    elif cross_attention_mask is not None:
        raise ValueError("cross_attention_mask was given without pixel_values")
    return text_logits(params, input_ids, token_mask, config, cross, mesh_rules, positions)


def text_logits(params: Params, input_ids: jax.Array, token_mask: jax.Array, config: MllamaConfig,
                cross: CrossAttentionState | None = None, mesh_rules: MeshRules | None = None,
                positions: jax.Array | None = None) -> jax.Array:
    """float32 logits [B,T,V] without a cache, given the images' `encode_images` state (None = text only)."""
    hidden, _ = hidden_states(params, input_ids, token_mask, config, cross, mesh_rules=mesh_rules,
                              positions=positions)
    return lm_logits(params, hidden, config)


def decode_step(params: Params, input_ids: jax.Array, token_mask: jax.Array, cache: KVCache,
                extra: CrossAttentionState | None, config: MllamaConfig,
                mesh_rules: MeshRules | None = None) -> tuple[jax.Array, KVCache]:
    """Sampler interface: append T tokens to the cache (prefill or decode) using the cached cross-attention
    state `extra` (None = text only). Returns float32 logits [B,V] of the last column and the cache."""
    hidden, cache = hidden_states(params, input_ids, token_mask, config, extra, cache, mesh_rules)
    return lm_logits(params, hidden[:, -1], config), cache


@dataclasses.dataclass(frozen=True)
class MllamaDecoder:
    """Hashable `DecodeModel` (see `jaxrl_vlm.models.sampler`) for Mllama; `extra` is a `CrossAttentionState`."""

    config: MllamaConfig
    mesh_rules: MeshRules | None = None
    image_config: MllamaImageProcessorConfig | None = None

    def decode_params(self, params: Params) -> Params:
        """Params with the self- and cross-attention layers as `layers.DecodeLayers`, for `step` in a decode loop
        (inside jit; idempotent)."""
        return dict(params, layers=decode_layers(params["layers"], len(self.config.self_attention_layers)),
                    cross_layers=decode_layers(params["cross_layers"], len(self.config.cross_attention_layers)))

    def step(self, params: Params, input_ids: jax.Array, token_mask: jax.Array, cache: KVCache,
             extra: CrossAttentionState | None) -> tuple[jax.Array, KVCache]:
        """See `decode_step`."""
        return decode_step(params, input_ids, token_mask, cache, extra, self.config, self.mesh_rules)

    def image_extra(self, params: Params, images: jax.Array, input_ids: jax.Array) -> CrossAttentionState:
        """The `extra` of a conversation showing one image per row, on the device: images uint8[B, H, W, 3]
        preprocessed as the model's image processor (`image_config`), encoded (vision tower, projector,
        cross-attention K/V) with the mask of input_ids int32[B, S], the prompt's tokens in the order of their cache
        slots. params: the model's params as stored (not `decode_params`)."""
        if self.image_config is None:
            raise ValueError("MllamaDecoder.image_config is needed to preprocess images on the device")
        vision = vision_inputs_on_device(images, input_ids, self.config, self.image_config)
        return encode_images(params, vision["pixel_values"], vision["aspect_ratio_ids"], vision["aspect_ratio_mask"],
                             vision["cross_attention_mask"], self.config, self.mesh_rules)

    def init_cache(self, batch: int, capacity: int) -> KVCache:
        """Empty self-attention cache (see `init_cache`), sharded by the logical rules when there is a mesh."""
        make = lambda: init_cache(self.config, batch, capacity)
        if self.mesh_rules is None:
            return make()
        shapes = jax.eval_shape(make)
        shardings = jax.tree_util.tree_map(
            lambda axes, s: self.mesh_rules.sharding(s.shape, axes, "kv_cache"),
            kv_cache_logical_axes(len(self.config.self_attention_layers)), shapes, is_leaf=_is_axes)
        return jax.jit(make, out_shardings=shardings)()


# ----------------------------------------------------------------------------------------------------------------
# Prompt-side helpers (host NumPy, no transformers needed)


def image_token_spans(input_ids: list[int] | np.ndarray, image_token_id: int) -> list[list[int]]:
    """[start, end) token ranges that attend to each image, as transformers' `get_cross_attention_token_mask`:
    an image covers the tokens from its <|image|> up to the next one (consecutive <|image|> tokens share the
    following text); the last image covers the rest of the sequence (end -1 when it is the only image)."""
    locations = [i for i, token in enumerate(list(input_ids)) if token == image_token_id]
    if not locations:
        return []
    if len(locations) == 1:
        return [[locations[0], -1]]
    spans = [[a, b] for a, b in zip(locations[:-1], locations[1:])] + [[locations[-1], len(input_ids)]]
    last_end = spans[-1][1]
    for span in reversed(spans):
        if span[0] == span[1] - 1:
            span[1] = last_end
        last_end = span[1]
    return spans


def cross_attention_mask_from_ids(input_ids: np.ndarray, image_token_id: int, num_tiles: list[list[int]],
                                  max_num_tiles: int) -> np.ndarray:
    """transformers' dense `cross_attention_mask` int32[B, S, M, max_num_tiles] for (padded) token ids int[B,S]
    and the tiles used per image (`MllamaImageBatch.num_tiles`)."""
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    if len(num_tiles) != batch:
        raise ValueError(f"num_tiles has {len(num_tiles)} samples, input_ids has {batch}")
    spans = [image_token_spans(row, image_token_id) for row in input_ids]
    for i, (s, tiles) in enumerate(zip(spans, num_tiles)):
        if len(s) != len(tiles):
            raise ValueError(f"sample {i} has {len(s)} image tokens but {len(tiles)} images")
    max_images = max(1, max(len(s) for s in spans))
    mask = np.zeros((batch, length, max_images, max_num_tiles), np.int32)
    for i, (sample_spans, tiles) in enumerate(zip(spans, num_tiles)):
        for j, ((start, end), count) in enumerate(zip(sample_spans, tiles)):
            end = length if end == -1 else min(end, length)
            mask[i, start:end, j, :count] = 1
    return mask


# ----------------------------------------------------------------------------------------------------------------
# The real model's shape


def mllama_11b_config(num_text_layers: int | None = None, num_vision_layers: int | None = None) -> dict[str, Any]:
    """The config.json dict of Llama-3.2-11B-Vision-Instruct (transformers 5 layout), optionally truncated.

    num_text_layers keeps the first text layers (and the cross-attention layers among them); num_vision_layers the
    first local vision layers (and the intermediate-feature layers among them, shrinking vision_output_dim).
    Build our config with `MllamaConfig.from_hf_dict`, or transformers' with `MllamaConfig(**dict)`.
    """
    text_layers, vision_layers = 40, 32
    cross = [3, 8, 13, 18, 23, 28, 33, 38]
    intermediate = [3, 7, 15, 23, 30]
    if num_text_layers is not None:
        if not 1 <= num_text_layers <= text_layers:
            raise ValueError(f"num_text_layers must be in [1, {text_layers}], got {num_text_layers}")
        text_layers, cross = num_text_layers, [i for i in cross if i < num_text_layers]
    if num_vision_layers is not None:
        if not 1 <= num_vision_layers <= vision_layers:
            raise ValueError(f"num_vision_layers must be in [1, {vision_layers}], got {num_vision_layers}")
        vision_layers, intermediate = num_vision_layers, [i for i in intermediate if i < num_vision_layers]
    return {
        "architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama", "image_token_index": 128256,
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "mllama_text_model", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": text_layers, "num_attention_heads": 32, "num_key_value_heads": 8,
            "cross_attention_layers": cross, "hidden_act": "silu", "rms_norm_eps": 1e-5,
            "max_position_embeddings": 131072, "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "pad_token_id": 128004,
        },
        "vision_config": {
            "model_type": "mllama_vision_model", "hidden_size": 1280, "intermediate_size": 5120,
            "num_hidden_layers": vision_layers, "num_global_layers": 8, "attention_heads": 16, "num_channels": 3,
            "image_size": 560, "patch_size": 14, "norm_eps": 1e-5, "max_num_tiles": 4, "hidden_act": "gelu",
            "intermediate_layers_indices": intermediate, "vision_output_dim": 1280 * (1 + len(intermediate)),
            "supported_aspect_ratios": [list(r) for r in vision_lib.DEFAULT_ASPECT_RATIOS],
        },
    }
