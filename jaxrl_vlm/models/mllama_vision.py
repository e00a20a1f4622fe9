"""Llama-3.2-Vision (Mllama) vision encoder and multimodal projector in Flax NNX, numerically equal to transformers.

Per image: tiles -> patch embedding (a linear map of flattened 14x14 patches, equal to the stride-14 conv) ->
aspect-ratio-gated pre-tile embedding -> class token -> gated positional + tile-positional embedding -> LayerNorm ->
patches padded to a multiple of 8 -> local encoder (all tiles of an image attend to each other) -> LayerNorm ->
aspect-ratio-gated post-tile embedding -> gated global encoder -> padding removed; the outputs of the local layers listed
in `intermediate_layers_indices` are concatenated to the final features (1280 * 6 = 7680-d for the 11B model).
Parameter names mirror the transformers module tree so that porting is a plain name table.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

DType = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
}

DEFAULT_ASPECT_RATIOS = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function named like transformers' ACT2FN keys (erf GELU for 'gelu')."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class MllamaVisionConfig:
    """Vision tower settings, named like transformers' `MllamaVisionConfig` (defaults: Llama-3.2-11B-Vision)."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_global_layers: int = 8
    attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 560
    patch_size: int = 14
    norm_eps: float = 1e-5
    max_num_tiles: int = 4
    intermediate_layers_indices: tuple[int, ...] = (3, 7, 15, 23, 30)
    supported_aspect_ratios: tuple[tuple[int, int], ...] = DEFAULT_ASPECT_RATIOS
    vision_output_dim: int = 7680
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by attention_heads {self.attention_heads}")
        bad = [i for i in self.intermediate_layers_indices if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(
                f"intermediate_layers_indices {bad} outside the {self.num_hidden_layers} local vision layers"
            )
        expected = self.hidden_size * (len(self.intermediate_layers_indices) + 1)
        if self.vision_output_dim != expected:
            raise ValueError(
                f"vision_output_dim {self.vision_output_dim} != hidden_size * (1 + len(intermediate_layers_indices))"
                f" = {expected}"
            )
        activation(self.hidden_act)

    @property
    def num_patches(self) -> int:
        """Patches per tile including the class token: (image_size / patch_size)^2 + 1."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def padded_num_patches(self) -> int:
        """num_patches rounded up to a multiple of 8 (the encoder's sequence length per tile)."""
        return self.num_patches + (8 - self.num_patches % 8) % 8

    @property
    def max_aspect_ratio_id(self) -> int:
        """Largest aspect ratio id (ids start at 1; 0 means no image)."""
        return len(self.supported_aspect_ratios)

    @property
    def head_dim(self) -> int:
        """Per-head width of the vision attention."""
        return self.hidden_size // self.attention_heads

    @classmethod
    def from_hf_dict(cls, config: dict[str, Any]) -> "MllamaVisionConfig":
        """Builds the settings from the `vision_config` entry of an HF Mllama config.json."""
        kwargs: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name in config and config[name] is not None:
                kwargs[name] = config[name]
        for name in ("image_size", "patch_size"):
            if name in kwargs and not isinstance(kwargs[name], int):
                raise ValueError(f"vision_config.{name} must be a single int, got {kwargs[name]!r}")
        if "intermediate_layers_indices" in kwargs:
            kwargs["intermediate_layers_indices"] = tuple(int(i) for i in kwargs["intermediate_layers_indices"])
        if "supported_aspect_ratios" in kwargs:
            kwargs["supported_aspect_ratios"] = tuple(tuple(int(v) for v in r) for r in kwargs["supported_aspect_ratios"])
        return cls(**kwargs)


def _normal(rngs: nnx.Rngs, shape: Sequence[int], dtype: DType, std: float = 0.02) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), tuple(shape), dtype))


def _layer_norm(features: int, eps: float, dtype: DType, param_dtype: DType, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features, epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, rngs=rngs
    )


class MllamaVisionAttention(nnx.Module):
    """Bidirectional multi-head self-attention without biases; masking by per-token "invalid" flags."""

    def __init__(self, config: MllamaVisionConfig, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        self.num_heads = config.attention_heads
        self.head_dim = config.head_dim
        width = config.hidden_size

        def proj() -> nnx.Linear:
            return nnx.Linear(width, width, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.q_proj, self.k_proj, self.v_proj, self.o_proj = proj(), proj(), proj(), proj()

    def __call__(self, x: jax.Array, invalid: jax.Array) -> jax.Array:
        """x: [N, L, D]; invalid: float[N, L] in {0, 1}. Pairs where query AND key are invalid are masked out.

        This is transformers' aspect-ratio mask (outer product of the invalid flags times the dtype minimum),
        so valid tokens do attend to padding patches, as in the reference model.
        """
        n, length, _ = x.shape
        split = lambda t: t.reshape(n, length, self.num_heads, self.head_dim)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32) * (self.head_dim**-0.5)
        pair_invalid = invalid[:, None, :, None] * invalid[:, None, None, :]
        scores = scores + pair_invalid.astype(jnp.float32) * jnp.finfo(x.dtype).min
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, length, -1)
        return self.o_proj(out)


class MllamaVisionMLP(nnx.Module):
    """fc1 -> activation -> fc2, both with bias."""

    def __init__(self, config: MllamaVisionConfig, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        self.act = activation(config.hidden_act)
        self.fc1 = nnx.Linear(config.hidden_size, config.intermediate_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = nnx.Linear(config.intermediate_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D]."""
        return self.fc2(self.act(self.fc1(x)))


class MllamaVisionEncoderLayer(nnx.Module):
    """Pre-LayerNorm transformer layer; the global (gated) variant scales both branches by tanh(gate)."""

    def __init__(
        self, config: MllamaVisionConfig, is_gated: bool, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs
    ):
        self.is_gated = is_gated
        self.self_attn = MllamaVisionAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = MllamaVisionMLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = _layer_norm(config.hidden_size, config.norm_eps, dtype, param_dtype, rngs)
        self.post_attention_layernorm = _layer_norm(config.hidden_size, config.norm_eps, dtype, param_dtype, rngs)
        if is_gated:
            self.gate_attn = nnx.Param(jnp.full((1,), math.pi / 4, param_dtype))
            self.gate_ffn = nnx.Param(jnp.full((1,), math.pi / 4, param_dtype))

    def __call__(self, x: jax.Array, invalid: jax.Array) -> jax.Array:
        """x: [N, L, D]; invalid: [N, L] -> [N, L, D]."""
        h = self.self_attn(self.input_layernorm(x), invalid)
        if self.is_gated:
            h = jnp.tanh(self.gate_attn[...]).astype(h.dtype) * h
        x = x + h
        h = self.mlp(self.post_attention_layernorm(x))
        if self.is_gated:
            h = jnp.tanh(self.gate_ffn[...]).astype(h.dtype) * h
        return x + h


class MllamaVisionEncoder(nnx.Module):
    """A stack of encoder layers (`layers.{i}`)."""

    def __init__(
        self, config: MllamaVisionConfig, num_layers: int, is_gated: bool, *, dtype: DType, param_dtype: DType,
        rngs: nnx.Rngs,
    ):
        self.layers = nnx.List(
            [
                MllamaVisionEncoderLayer(config, is_gated, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for _ in range(num_layers)
            ]
        )

    def __call__(
        self, x: jax.Array, invalid: jax.Array, keep: Sequence[int] = ()
    ) -> tuple[jax.Array, list[jax.Array]]:
        """x: [N, L, D] -> (final [N, L, D], outputs of the layers whose indices are in `keep`, in `keep` order)."""
        outputs = {}
        for i, layer in enumerate(self.layers):
            x = layer(x, invalid)
            outputs[i] = x
        return x, [outputs[i] for i in keep]


class MllamaAspectRatioEmbedding(nnx.Module):
    """Per-aspect-ratio, per-tile embedding added to every patch of a tile, scaled by tanh(gate)."""

    def __init__(self, config: MllamaVisionConfig, *, param_dtype: DType, rngs: nnx.Rngs):
        self.max_num_tiles = config.max_num_tiles
        self.hidden_size = config.hidden_size
        self.embedding = _normal(
            rngs, (config.max_aspect_ratio_id + 1, config.max_num_tiles * config.hidden_size), param_dtype
        )
        self.gate = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        """x: [N, T, L, D]; aspect_ratio_ids: int[N] -> [N, T, L, D]."""
        emb = jnp.take(self.embedding[...], aspect_ratio_ids, axis=0)
        emb = emb.reshape(-1, self.max_num_tiles, 1, self.hidden_size) * jnp.tanh(self.gate[...])
        return x + emb.astype(x.dtype)


class MllamaGatedPositionalEmbedding(nnx.Module):
    """(1 - tanh g) * per-patch position embedding + tanh g * per-aspect-ratio tile/patch embedding."""

    def __init__(self, config: MllamaVisionConfig, *, param_dtype: DType, rngs: nnx.Rngs):
        self.shape = (config.max_num_tiles, config.num_patches, config.hidden_size)
        self.gate = nnx.Param(jnp.zeros((1,), param_dtype))
        self.embedding = _normal(rngs, (config.num_patches, config.hidden_size), param_dtype)
        self.tile_embedding = _normal(
            rngs, (config.max_aspect_ratio_id + 1, math.prod(self.shape)), param_dtype
        )

    def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        """x: [N, T, P, D]; aspect_ratio_ids: int[N] -> [N, T, P, D]."""
        gate = jnp.tanh(self.gate[...])
        x = x + ((1 - gate) * self.embedding[...]).astype(x.dtype)
        tiles = jnp.take(self.tile_embedding[...], aspect_ratio_ids, axis=0).reshape(-1, *self.shape)
        return x + (gate * tiles).astype(x.dtype)


class MllamaVisionModel(nnx.Module):
    """The Mllama vision tower: pixels of tiled images -> per-patch features of width `vision_output_dim`."""

    def __init__(
        self, config: MllamaVisionConfig, *, dtype: DType = jnp.float32, param_dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.dtype = dtype
        patch_dim = config.num_channels * config.patch_size**2
        self.patch_embedding = nnx.Linear(
            patch_dim, config.hidden_size, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.class_embedding = _normal(rngs, (config.hidden_size,), param_dtype)
        self.gated_positional_embedding = MllamaGatedPositionalEmbedding(config, param_dtype=param_dtype, rngs=rngs)
        self.pre_tile_positional_embedding = MllamaAspectRatioEmbedding(config, param_dtype=param_dtype, rngs=rngs)
        self.post_tile_positional_embedding = MllamaAspectRatioEmbedding(config, param_dtype=param_dtype, rngs=rngs)
        self.layernorm_pre = _layer_norm(config.hidden_size, 1e-5, dtype, param_dtype, rngs)
        self.layernorm_post = _layer_norm(config.hidden_size, 1e-5, dtype, param_dtype, rngs)
        self.transformer = MllamaVisionEncoder(
            config, config.num_hidden_layers, False, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.global_transformer = MllamaVisionEncoder(
            config, config.num_global_layers, True, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def _check_inputs(self, pixel_values: jax.Array, aspect_ratio_ids: jax.Array, aspect_ratio_mask: jax.Array) -> None:
        c = self.config
        expected = (c.max_num_tiles, c.num_channels, c.image_size, c.image_size)
        if pixel_values.ndim != 6 or tuple(pixel_values.shape[2:]) != expected:
            raise ValueError(
                f"pixel_values must have shape [batch, num_images, {', '.join(map(str, expected))}], "
                f"got {tuple(pixel_values.shape)}"
            )
        batch_images = tuple(pixel_values.shape[:2])
        if tuple(aspect_ratio_ids.shape) != batch_images:
            raise ValueError(f"aspect_ratio_ids must have shape {batch_images}, got {tuple(aspect_ratio_ids.shape)}")
        if tuple(aspect_ratio_mask.shape) != batch_images + (c.max_num_tiles,):
            raise ValueError(
                f"aspect_ratio_mask must have shape {batch_images + (c.max_num_tiles,)}, "
                f"got {tuple(aspect_ratio_mask.shape)}"
            )

    def _patchify(self, pixels: jax.Array) -> jax.Array:
        """pixels: [N, C, H, W] -> flattened patches [N, (H/p)*(W/p), C*p*p] in (C, p, p) order, row-major grid."""
        n, ch, height, width = pixels.shape
        p = self.config.patch_size
        patches = pixels.reshape(n, ch, height // p, p, width // p, p).transpose(0, 2, 4, 1, 3, 5)
        return patches.reshape(n, (height // p) * (width // p), ch * p * p)

    def _invalid_tokens(self, aspect_ratio_mask: jax.Array) -> jax.Array:
        """aspect_ratio_mask: int[N, T] -> float[N, T * padded_num_patches]: 1 for padding tiles and patches.

        Mirrors transformers: the last `padded - num_patches` positions of every tile are padding; when that number
        is 0 its slice `[-0:]` marks every position (this never happens for 560 / 14).
        """
        c = self.config
        pad = c.padded_num_patches - c.num_patches
        real_patch = jnp.arange(c.padded_num_patches) < (c.num_patches if pad > 0 else 0)
        valid = (aspect_ratio_mask[:, :, None] != 0) & real_patch[None, None, :]
        return (1.0 - valid.astype(jnp.float32)).reshape(aspect_ratio_mask.shape[0], -1)

    def __call__(self, pixel_values: jax.Array, aspect_ratio_ids: jax.Array, aspect_ratio_mask: jax.Array) -> jax.Array:
        """pixel_values: float[B, M, T, C, S, S]; aspect_ratio_ids: int[B, M]; aspect_ratio_mask: int[B, M, T]
        -> features [B, M, T, num_patches, vision_output_dim] in the compute dtype."""
        self._check_inputs(pixel_values, aspect_ratio_ids, aspect_ratio_mask)
        c = self.config
        batch, num_images, tiles = pixel_values.shape[:3]
        n = batch * num_images
        ids = aspect_ratio_ids.reshape(n)
        patches = self._patchify(pixel_values.reshape(n * tiles, *pixel_values.shape[3:]).astype(self.dtype))
        x = self.patch_embedding(patches).reshape(n, tiles, -1, c.hidden_size)
        x = self.pre_tile_positional_embedding(x, ids)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (n, tiles, 1, c.hidden_size))
        x = jnp.concatenate([cls, x], axis=2)
        x = self.gated_positional_embedding(x, ids)
        x = self.layernorm_pre(x)

        padded = c.padded_num_patches
        x = jnp.pad(x, ((0, 0), (0, 0), (0, padded - c.num_patches), (0, 0)))
        invalid = self._invalid_tokens(aspect_ratio_mask.reshape(n, tiles))
        x, intermediates = self.transformer(x.reshape(n, tiles * padded, -1), invalid, c.intermediate_layers_indices)
        x = self.layernorm_post(x)
        x = self.post_tile_positional_embedding(x.reshape(n, tiles, padded, -1), ids)
        x, _ = self.global_transformer(x.reshape(n, tiles * padded, -1), invalid)

        stacked = jnp.stack(intermediates, axis=-1).reshape(n, tiles, padded, -1)
        features = jnp.concatenate([x.reshape(n, tiles, padded, -1), stacked], axis=-1)[:, :, : c.num_patches]
        return features.reshape(batch, num_images, tiles, c.num_patches, c.vision_output_dim)


class MllamaMultiModalProjector(nnx.Linear):
    """Linear map (with bias) of vision features to the text width; flattens images, tiles, patches per sample."""

    def __init__(
        self, vision_output_dim: int, text_hidden_size: int, *, dtype: DType = jnp.float32,
        param_dtype: DType = jnp.float32, rngs: nnx.Rngs,
    ):
        super().__init__(vision_output_dim, text_hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        """features: [B, M, T, P, Dv] -> cross-attention states [B, M * T * P, H] (image, tile, patch order)."""
        batch = features.shape[0]
        return super().__call__(features).reshape(batch, -1, self.out_features)
