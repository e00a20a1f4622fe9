"""Llama-3.2-Vision (Mllama) vision encoder and multimodal projector as pure functions over a param dict,
numerically equal to transformers' `MllamaVisionModel` + `multi_modal_projector`.

Per image: tiles -> patch embedding (stride-p conv as a matmul over flattened patches) -> aspect-ratio-gated pre-tile
embedding -> class token -> gated positional + tile-positional embedding -> LayerNorm -> patches padded to a multiple
of 8 -> local encoder (all tiles of one image attend to each other) -> LayerNorm -> gated post-tile embedding ->
gated global encoder -> padding removed; the outputs of the local layers in `intermediate_layers_indices` are
concatenated to the final features (1280 * 6 = 7680-d for the 11B model).

Params (D width, F ffn, H heads, Dh head dim, C channels, p patch, P patches per tile incl. class token,
T max tiles, R number of aspect ratios, L local / G global layers, stacked on a leading axis):
  {'patch_embed': [D,C,p,p], 'class_embed': [D],
   'pos_embed': [P,D], 'pos_gate': [1], 'tile_pos_embed': [R+1, T*P*D],
   'pre_tile_embed': [R+1, T*D], 'pre_tile_gate': [1], 'post_tile_embed': [R+1, T*D], 'post_tile_gate': [1],
   'pre_norm': {'scale': [D], 'bias': [D]}, 'post_norm': {...},
   'local': {'attn_norm': {'scale': [L,D], 'bias': [L,D]}, 'attn': {'q','k','v': [L,D,H,Dh], 'o': [L,H,Dh,D]},
             'mlp_norm': {...}, 'mlp': {'fc1': [L,D,F], 'fc1_bias': [L,F], 'fc2': [L,F,D], 'fc2_bias': [L,D]}},
   'global': like 'local' with G layers, plus 'attn_gate': [G,1], 'mlp_gate': [G,1]}
Projector params: {'kernel': [T_out, D_text], 'bias': [D_text]} with T_out = vision_output_dim.
LayerNorm statistics and softmax are float32; matmul inputs are in the compute dtype.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.models.config import dtype_from_name
from jaxrl_vlm.models.layers import attend, dense

Params = dict[str, Any]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
}

DEFAULT_ASPECT_RATIOS = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))
# Outer LayerNorms (layernorm_pre/post) use torch's default eps in transformers, not `norm_eps`.
OUTER_NORM_EPS = 1e-5
# Queries per block of the encoder's attention (`encoder_attention`): 402 at 11B (16 blocks of S = 6432).
QUERY_BLOCK = 512


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation named like transformers' ACT2FN keys ('gelu' is the exact erf GELU)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported vision hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class MllamaVisionConfig:
    """Vision tower settings named like transformers' `MllamaVisionConfig` (defaults: Llama-3.2-11B-Vision),
    plus storage / compute dtypes and `remat` (recompute each encoder layer's activations in the backward pass).
    Frozen and hashable (a static jit argument)."""

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
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.attention_heads:
            raise ValueError(
                f"vision hidden_size {self.hidden_size} is not divisible by attention_heads {self.attention_heads}")
        bad = [i for i in self.intermediate_layers_indices if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"intermediate_layers_indices {bad} outside the {self.num_hidden_layers} local layers")
        expected = self.hidden_size * (len(self.intermediate_layers_indices) + 1)
        if self.vision_output_dim != expected:
            raise ValueError(f"vision_output_dim {self.vision_output_dim} != hidden_size * "
                             f"(1 + len(intermediate_layers_indices)) = {expected}")
        activation(self.hidden_act)
        dtype_from_name(self.param_dtype)
        dtype_from_name(self.compute_dtype)

    @property
    def num_patches(self) -> int:
        """Tokens per tile including the class token: (image_size / patch_size)^2 + 1."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def padded_num_patches(self) -> int:
        """num_patches rounded up to a multiple of 8 (the encoder's tokens per tile)."""
        return self.num_patches + (8 - self.num_patches % 8) % 8

    @property
    def max_aspect_ratio_id(self) -> int:
        """Largest aspect ratio id (ids start at 1; 0 means no image)."""
        return len(self.supported_aspect_ratios)

    @property
    def head_dim(self) -> int:
        """Width of one vision attention head."""
        return self.hidden_size // self.attention_heads

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], **overrides: Any) -> "MllamaVisionConfig":
        """From the `vision_config` entry of an HF Mllama config.json (unknown keys ignored)."""
        kwargs: dict[str, Any] = {k: cfg[k] for k in cls.__dataclass_fields__ if cfg.get(k) is not None}
        for name in ("image_size", "patch_size"):
            if name in kwargs and not isinstance(kwargs[name], int):
                raise ValueError(f"vision_config.{name} must be one int, got {kwargs[name]!r}")
        if "intermediate_layers_indices" in kwargs:
            kwargs["intermediate_layers_indices"] = tuple(int(i) for i in kwargs["intermediate_layers_indices"])
        if "supported_aspect_ratios" in kwargs:
            kwargs["supported_aspect_ratios"] = tuple(tuple(int(v) for v in r) for r in kwargs["supported_aspect_ratios"])
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `vision_config` entry of an HF Mllama config.json."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("param_dtype", "compute_dtype")}
        out["intermediate_layers_indices"] = list(self.intermediate_layers_indices)
        out["supported_aspect_ratios"] = [list(r) for r in self.supported_aspect_ratios]
        out["model_type"] = "mllama_vision_model"
        return out


def _layer_shapes(c: MllamaVisionConfig, gated: bool) -> Params:
    d, f, h, dh = c.hidden_size, c.intermediate_size, c.attention_heads, c.head_dim
    shapes = {"attn_norm": {"scale": (d,), "bias": (d,)},
              "attn": {"q": (d, h, dh), "k": (d, h, dh), "v": (d, h, dh), "o": (h, dh, d)},
              "mlp_norm": {"scale": (d,), "bias": (d,)},
              "mlp": {"fc1": (d, f), "fc1_bias": (f,), "fc2": (f, d), "fc2_bias": (d,)}}
    if gated:
        shapes.update(attn_gate=(1,), mlp_gate=(1,))
    return shapes


def _layer_axes(gated: bool) -> Params:
    axes = {"attn_norm": {"scale": ("norm",), "bias": ("norm",)},
            "attn": {"q": ("embed", "heads", "head_dim"), "k": ("embed", "heads", "head_dim"),
                     "v": ("embed", "heads", "head_dim"), "o": ("heads", "head_dim", "embed")},
            "mlp_norm": {"scale": ("norm",), "bias": ("norm",)},
            "mlp": {"fc1": ("embed", "mlp"), "fc1_bias": ("mlp",), "fc2": ("mlp", "embed"), "fc2_bias": ("norm",)}}
    if gated:
        axes.update(attn_gate=(None,), mlp_gate=(None,))
    return axes


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def param_shapes(c: MllamaVisionConfig) -> Params:
    """Tree of param shapes (tuples) of the vision tower."""
    d, t, p, r = c.hidden_size, c.max_num_tiles, c.num_patches, c.max_aspect_ratio_id + 1
    stack = lambda n, tree: jax.tree_util.tree_map(lambda s: (n, *s), tree, is_leaf=_is_shape)
    return {"patch_embed": (d, c.num_channels, c.patch_size, c.patch_size), "class_embed": (d,),
            "pos_embed": (p, d), "pos_gate": (1,), "tile_pos_embed": (r, t * p * d),
            "pre_tile_embed": (r, t * d), "pre_tile_gate": (1,), "post_tile_embed": (r, t * d), "post_tile_gate": (1,),
            "pre_norm": {"scale": (d,), "bias": (d,)}, "post_norm": {"scale": (d,), "bias": (d,)},
            "local": stack(c.num_hidden_layers, _layer_shapes(c, False)),
            "global": stack(c.num_global_layers, _layer_shapes(c, True))}


def param_logical_axes(c: MllamaVisionConfig) -> Params:
    """Logical axis names matching `param_shapes` (see `jaxrl_vlm.models.sharding`)."""
    del c
    stack = lambda tree: jax.tree_util.tree_map(lambda a: ("layers", *a), tree, is_leaf=_is_axes)
    return {"patch_embed": ("embed", None, None, None), "class_embed": ("norm",),
            "pos_embed": (None, "norm"), "pos_gate": (None,), "tile_pos_embed": (None, None),
            "pre_tile_embed": (None, None), "pre_tile_gate": (None,), "post_tile_embed": (None, None),
            "post_tile_gate": (None,), "pre_norm": {"scale": ("norm",), "bias": ("norm",)},
            "post_norm": {"scale": ("norm",), "bias": ("norm",)},
            "local": stack(_layer_axes(False)), "global": stack(_layer_axes(True))}


def projector_shapes(c: MllamaVisionConfig, text_hidden_size: int) -> Params:
    """Shapes of the multimodal projector params."""
    return {"kernel": (c.vision_output_dim, text_hidden_size), "bias": (text_hidden_size,)}


def projector_logical_axes() -> Params:
    """Logical axes of the multimodal projector params."""
    return {"kernel": (None, "embed"), "bias": ("norm",)}


def init_params(c: MllamaVisionConfig, rng: jax.Array, std: float = 0.02) -> Params:
    """Random vision params in `c.param_dtype`: normal(0, std) tensors, unit norm scales, zero biases,
    zero embedding gates and pi/4 layer gates (transformers' constructor values)."""
    dtype = dtype_from_name(c.param_dtype)
    shapes = param_shapes(c)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    keys = jax.random.split(rng, len(flat))
    leaves = []
    for (path, shape), key in zip(flat, keys):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            leaves.append(jnp.ones(shape, dtype))
        elif name.endswith("bias"):
            leaves.append(jnp.zeros(shape, dtype))
        elif name in ("attn_gate", "mlp_gate"):
            leaves.append(jnp.full(shape, math.pi / 4, dtype))
        elif name.endswith("gate"):
            leaves.append(jnp.zeros(shape, dtype))
        else:
            leaves.append((std * jax.random.normal(key, shape)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def init_projector(c: MllamaVisionConfig, text_hidden_size: int, rng: jax.Array, std: float = 0.02) -> Params:
    """Random projector params in `c.param_dtype`."""
    dtype = dtype_from_name(c.param_dtype)
    kernel = std * jax.random.normal(rng, (c.vision_output_dim, text_hidden_size))
    return {"kernel": kernel.astype(dtype), "bias": jnp.zeros((text_hidden_size,), dtype)}


def layer_norm(x: jax.Array, p: Params, eps: float) -> jax.Array:
    """LayerNorm over the last axis with float32 statistics; output in x.dtype. x: [..., D]."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def query_blocks(length: int, target: int) -> int:
    """The fewest equal blocks of at most `target` queries that split `length` queries (more, smaller blocks when
    no divisor fits: the encoder's lengths are multiples of 8)."""
    blocks = -(-length // target)
    while length % blocks:
        blocks += 1
    return blocks


def encoder_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array,
                      query_block: int = QUERY_BLOCK) -> jax.Array:
    """Bidirectional multi-head attention of the encoder over blocks of at most `query_block` queries.

    q, k, v: [N,S,H,Dh]; valid: bool[N,S] (see `valid_tokens`): a query/key pair is masked only when BOTH tokens are
    invalid, as transformers does. Each block's softmax runs over all S keys, so the result is that of one block;
    only one block's float32 scores [N,H,block,S] are alive at a time instead of [N,H,S,S] (2.6 GB per image and
    layer at 11B, S = 4 tiles x 1608). Returns [N,S,H,Dh] in q.dtype.
    """
    n, s, h, dh = q.shape
    blocks = query_blocks(s, query_block)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    invalid = ~valid

    def block(xs: tuple[jax.Array, jax.Array]) -> jax.Array:
        q_block, invalid_block = xs
        return attend(q_block, k, v, ~(invalid_block[:, :, None] & invalid[:, None, :]))

    # Checkpointed so that training through the tower recomputes a block's scores in the backward pass instead of
    # saving every block's (which would be [N,H,S,S] again).
    out = jax.lax.map(jax.checkpoint(block), (q.reshape(n, blocks, s // blocks, h, dh).swapaxes(0, 1),
                                              invalid.reshape(n, blocks, s // blocks).swapaxes(0, 1)))
    return out.swapaxes(0, 1).reshape(n, s, h, dh)


def encoder_layer(p: Params, x: jax.Array, valid: jax.Array, c: MllamaVisionConfig,
                  query_block: int = QUERY_BLOCK) -> jax.Array:
    """One pre-LayerNorm encoder layer; gated (global) when `p` has 'attn_gate'. x: [N,S,D]; valid: bool[N,S]
    (`valid_tokens`); attention over blocks of `query_block` queries (`encoder_attention`)."""
    dt = x.dtype
    h = layer_norm(x, p["attn_norm"], c.norm_eps)
    q = dense("nsd,dhe->nshe", h, p["attn"]["q"])
    k = dense("nsd,dhe->nshe", h, p["attn"]["k"])
    v = dense("nsd,dhe->nshe", h, p["attn"]["v"])
    h = dense("nshe,hed->nsd", encoder_attention(q, k, v, valid, query_block), p["attn"]["o"])
    if "attn_gate" in p:
        h = jnp.tanh(p["attn_gate"].astype(jnp.float32)).astype(dt) * h
    x = x + h
    h = layer_norm(x, p["mlp_norm"], c.norm_eps)
    mlp = p["mlp"]
    h = activation(c.hidden_act)(dense("...d,df->...f", h, mlp["fc1"]) + mlp["fc1_bias"].astype(dt))
    h = dense("...f,fd->...d", h, mlp["fc2"]) + mlp["fc2_bias"].astype(dt)
    if "mlp_gate" in p:
        h = jnp.tanh(p["mlp_gate"].astype(jnp.float32)).astype(dt) * h
    return x + h


def run_encoder(layers: Params, x: jax.Array, valid: jax.Array, c: MllamaVisionConfig, keep: tuple[int, ...] = (),
                query_block: int = QUERY_BLOCK, constrain: Callable[[jax.Array], jax.Array] = lambda h: h
                ) -> tuple[jax.Array, jax.Array | None]:
    """Scan the stacked `layers` over x [N,S,D] (valid: bool[N,S]); `constrain` is applied to each layer's output
    (a sharding constraint), and with `c.remat` each layer is recomputed in the backward pass. Returns (final
    [N,S,D], outputs of the layers in `keep` stacked on the last axis [N,S,D,len(keep)], or None when `keep` is
    empty).

    The layers run as scans over the segments that end at the kept layers, so a kept output is a segment's result
    rather than a buffer carried through one scan (which the backward pass would save at every layer)."""
    def body(h: jax.Array, layer: Params) -> tuple[jax.Array, None]:
        return constrain(encoder_layer(layer, h, valid, c, query_block)), None

    body = jax.checkpoint(body) if c.remat else body
    num_layers = jax.tree_util.tree_leaves(layers)[0].shape[0]
    outputs, start = {}, 0
    for stop in sorted({i + 1 for i in keep} | {num_layers}):
        x, _ = jax.lax.scan(body, x, jax.tree_util.tree_map(lambda w: w[start:stop], layers))
        outputs[stop - 1], start = x, stop
    return x, (jnp.stack([outputs[i] for i in keep], axis=-1) if keep else None)


def valid_tokens(aspect_ratio_mask: jax.Array, c: MllamaVisionConfig) -> jax.Array:
    """bool[N, T*S] (S = padded_num_patches): the encoder tokens that are real, from aspect_ratio_mask int[N, T].

    A token is invalid when its tile is padding or it is one of the padding patches (attention masks a pair only
    when both are invalid, see `encoder_attention`). transformers marks the last `S - num_patches` patches as
    padding via `[-pad:]`, which marks every patch when pad == 0; we mirror that (it does not occur for 560 / 14).
    """
    pad = c.padded_num_patches - c.num_patches
    real_patch = np.arange(c.padded_num_patches) < (c.num_patches if pad > 0 else 0)
    valid = (aspect_ratio_mask[:, :, None] != 0) & jnp.asarray(real_patch)[None, None, :]
    return valid.reshape(aspect_ratio_mask.shape[0], -1)


def check_inputs(pixel_values: Any, aspect_ratio_ids: Any, aspect_ratio_mask: Any, c: MllamaVisionConfig) -> None:
    """ValueError naming the input whose shape does not fit the vision config."""
    expected = (c.max_num_tiles, c.num_channels, c.image_size, c.image_size)
    shape = tuple(np.shape(pixel_values))
    if len(shape) != 6 or shape[2:] != expected:
        raise ValueError(f"pixel_values must have shape [batch, num_images, {', '.join(map(str, expected))}], "
                         f"got {shape}")
    if tuple(np.shape(aspect_ratio_ids)) != shape[:2]:
        raise ValueError(f"aspect_ratio_ids must have shape {shape[:2]}, got {tuple(np.shape(aspect_ratio_ids))}")
    if tuple(np.shape(aspect_ratio_mask)) != shape[:2] + (c.max_num_tiles,):
        raise ValueError(f"aspect_ratio_mask must have shape {shape[:2] + (c.max_num_tiles,)}, "
                         f"got {tuple(np.shape(aspect_ratio_mask))}")


def _aspect_embed(table: jax.Array, gate: jax.Array, ids: jax.Array, shape: tuple[int, ...], dt: Any) -> jax.Array:
    emb = jnp.take(table, ids, axis=0).astype(jnp.float32).reshape(ids.shape[0], *shape)
    return (emb * jnp.tanh(gate.astype(jnp.float32))).astype(dt)


def vision_features(params: Params, pixel_values: jax.Array, aspect_ratio_ids: jax.Array,
                    aspect_ratio_mask: jax.Array, c: MllamaVisionConfig, query_block: int = QUERY_BLOCK,
                    constrain: Callable[[jax.Array], jax.Array] = lambda h: h) -> jax.Array:
    """pixel_values float[B,M,T,C,S,S]; aspect_ratio_ids int[B,M]; aspect_ratio_mask int[B,M,T]
    -> features [B, M, T, num_patches, vision_output_dim] in the compute dtype. query_block: see
    `encoder_attention`; constrain: a sharding constraint of the encoder's activations [N = B*M, tokens, D]."""
    check_inputs(pixel_values, aspect_ratio_ids, aspect_ratio_mask, c)
    dt = dtype_from_name(c.compute_dtype)
    batch, num_images, tiles = pixel_values.shape[:3]
    n, d, p = batch * num_images, c.hidden_size, c.patch_size
    ids = aspect_ratio_ids.reshape(n).astype(jnp.int32)
    grid = c.image_size // p
    patches = pixel_values.astype(dt).reshape(n * tiles, c.num_channels, grid, p, grid, p)
    patches = patches.transpose(0, 2, 4, 1, 3, 5).reshape(n * tiles, grid * grid, -1)
    x = dense("...k,dk->...d", patches, params["patch_embed"].reshape(d, -1))
    x = x.reshape(n, tiles, grid * grid, d) + _aspect_embed(
        params["pre_tile_embed"], params["pre_tile_gate"], ids, (tiles, 1, d), dt)
    cls = jnp.broadcast_to(params["class_embed"].astype(dt), (n, tiles, 1, d))
    x = jnp.concatenate([cls, x], axis=2)
    gate = jnp.tanh(params["pos_gate"].astype(jnp.float32))
    x = x + ((1 - gate) * params["pos_embed"].astype(jnp.float32)).astype(dt)
    tile_pos = jnp.take(params["tile_pos_embed"], ids, axis=0).astype(jnp.float32)
    x = x + (gate * tile_pos.reshape(n, tiles, c.num_patches, d)).astype(dt)
    x = layer_norm(x, params["pre_norm"], OUTER_NORM_EPS)

    padded = c.padded_num_patches
    x = jnp.pad(x, ((0, 0), (0, 0), (0, padded - c.num_patches), (0, 0)))
    valid = valid_tokens(aspect_ratio_mask.reshape(n, tiles), c)
    x, kept = run_encoder(params["local"], constrain(x.reshape(n, tiles * padded, d)), valid, c,
                          c.intermediate_layers_indices, query_block, constrain)
    x = layer_norm(x, params["post_norm"], OUTER_NORM_EPS).reshape(n, tiles, padded, d)
    x = x + _aspect_embed(params["post_tile_embed"], params["post_tile_gate"], ids, (tiles, 1, d), dt)
    x, _ = run_encoder(params["global"], constrain(x.reshape(n, tiles * padded, d)), valid, c,
                       query_block=query_block, constrain=constrain)

    features = x if kept is None else jnp.concatenate([x, kept.reshape(n, tiles * padded, -1)], axis=-1)
    features = features.reshape(n, tiles, padded, -1)[:, :, : c.num_patches]
    return features.reshape(batch, num_images, tiles, c.num_patches, c.vision_output_dim)


def project(params: Params, features: jax.Array) -> jax.Array:
    """Multimodal projector: features [B,M,T,P,Dv] -> cross-attention states [B, M*T*P, D_text]
    (vision tokens in image, tile, patch order), in the features' dtype."""
    dt = features.dtype
    out = dense("...f,fd->...d", features, params["kernel"]) + params["bias"].astype(dt)
    return out.reshape(features.shape[0], -1, out.shape[-1])
