"""Building blocks of a Llama decoder as pure functions over plain param dicts.

Why pure functions and not Flax modules: every jit boundary of the project (training step, sampler, porting)
takes the params as a plain nested dict of arrays, which shards, donates, checkpoints and ports without any
module bookkeeping; the layers are small enough that a module system would add nothing.

Conventions (B batch, T new tokens, S cache slots, D hidden, H query heads, K kv heads, Dh head dim, F ffn):
- one decoder layer's params:
  {'attn_norm': [D], 'attn': {'q': [D,H,Dh], 'k': [D,K,Dh], 'v': [D,K,Dh], 'o': [H,Dh,D]},
   'mlp_norm': [D], 'mlp': {'gate': [D,F], 'up': [D,F], 'down': [F,D]}}
- q/k use Hugging Face's rotate-half RoPE layout, so HF weights load without permutation.
- norms, softmax and RoPE angles are computed in float32; matmul inputs in `config.compute_dtype`, accumulated in
  float32 (`dense`).
- a KV cache is a fixed number of slots S; `valid[B,S]` marks slots holding real tokens (left padding and tokens
  after EOS stay invalid), `next_pos[B]` is each row's next position id, `index` the next free slot (shared by rows).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.models.config import LlamaConfig, dtype_from_name

Params = dict[str, Any]


class KVCache(NamedTuple):
    """Self-attention KV cache of a stack of L layers (a pytree).

    k, v: [L,B,S,K,Dh] compute dtype; valid: [B,S] bool; next_pos: [B] int32; index: [] int32.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    next_pos: jax.Array
    index: jax.Array

    @property
    def capacity(self) -> int:
        """Number of slots S."""
        return self.k.shape[2]


def init_kv_cache(config: LlamaConfig, batch: int, capacity: int, num_layers: int | None = None) -> KVCache:
    """Empty cache with `capacity` slots for `num_layers` (default config.num_layers) self-attention layers."""
    layers = config.num_layers if num_layers is None else num_layers
    shape = (layers, batch, capacity, config.num_kv_heads, config.head_dim)
    dtype = dtype_from_name(config.compute_dtype)
    return KVCache(
        k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, capacity), bool), next_pos=jnp.zeros((batch,), jnp.int32),
        index=jnp.zeros((), jnp.int32))


_FLOAT16 = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _as_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype in _FLOAT16 else x


def _bits_workaround() -> bool:
    return jax.default_backend() == "cpu"


def scan_stacked(body: Any, carry: Any, xs: Any) -> tuple[Any, Any]:
    """`jax.lax.scan(body, carry, xs)` for inference over stacked layers (not differentiable in xs).

    On XLA:CPU, a 16-bit float dynamic-slice or dynamic-update-slice (what scan does to its xs and ys each
    iteration) is rewritten to float32 over the whole stacked array: every decode step would convert all the weights
    and the KV cache. There, 16-bit float leaves of xs and of the per-iteration outputs pass through the loop as
    uint16 bitcasts. Elsewhere this is plain `lax.scan`.
    """
    if not _bits_workaround():
        return jax.lax.scan(body, carry, xs)
    x_dtypes = jax.tree_util.tree_map(lambda a: a.dtype, xs)
    y_dtypes = []

    def from_bits(tree: Any, dtypes: Any) -> Any:
        return jax.tree_util.tree_map(lambda a, d: jax.lax.bitcast_convert_type(a, d) if a.dtype != d else a,
                                      tree, dtypes)

    def wrapped(c: Any, x: Any) -> tuple[Any, Any]:
        c, y = body(c, from_bits(x, x_dtypes))
        y_dtypes.append(jax.tree_util.tree_map(lambda a: a.dtype, y))
        return c, jax.tree_util.tree_map(_as_bits, y)
    carry, ys = jax.lax.scan(wrapped, carry, jax.tree_util.tree_map(_as_bits, xs))
    return carry, from_bits(ys, y_dtypes[-1])


def update_slice(operand: jax.Array, update: jax.Array, start: tuple[Any, ...]) -> jax.Array:
    """`jax.lax.dynamic_update_slice` (update cast to operand.dtype) for inference; 16-bit floats are written as
    uint16 bitcasts on XLA:CPU (see `scan_stacked`)."""
    update = update.astype(operand.dtype)
    if not (_bits_workaround() and operand.dtype in _FLOAT16):
        return jax.lax.dynamic_update_slice(operand, update, start)
    out = jax.lax.dynamic_update_slice(_as_bits(operand), _as_bits(update), start)
    return jax.lax.bitcast_convert_type(out, operand.dtype)


def dense(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, x, w)` with w cast to x.dtype, accumulated in float32 and returned in x.dtype.

    Float32 accumulation is what bf16 training wants; it is also the form XLA:CPU runs in its fast dot kernels:
    a bf16 x bf16 dot with a bf16 result falls back to a path about 10x slower there.
    """
    return jnp.einsum(spec, x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis (statistics in float32), output in x.dtype. x: [..., D], scale: [D]."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse RoPE frequencies float32[Dh/2], with llama3 frequency scaling when `config.rope_scaling` says so."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    scaling = config.rope_scaling_dict
    if scaling is None:
        return inv_freq.astype(np.float32)
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE. x: [B,T,N,Dh]; positions: int[B,T]; inv_freq: float32[Dh/2]. Returns x.dtype."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def positions_from_mask(token_mask: jax.Array, start: jax.Array | None = None) -> jax.Array:
    """Position ids int32[B,T] of new tokens: start[B] + (number of valid tokens before each one).

    Matches transformers' `attention_mask.cumsum(-1) - 1` for left-padded prompts; pads get a clamped id.
    """
    counts = jnp.cumsum(token_mask.astype(jnp.int32), axis=-1) - 1
    if start is not None:
        counts = counts + start[:, None]
    return jnp.maximum(counts, 0)


def causal_mask(token_mask: jax.Array) -> jax.Array:
    """bool[B,T,T] for attention without a cache: key valid and key index <= query index."""
    t = token_mask.shape[1]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    return causal[None] & token_mask[:, None, :].astype(bool)


def cache_mask(valid: jax.Array, index: jax.Array, num_new: int) -> jax.Array:
    """bool[B,T,S] for T new tokens written at slots index..index+T-1 of a cache whose slot validity is valid[B,S]."""
    slots = jnp.arange(valid.shape[1])
    query_slots = index + jnp.arange(num_new)
    return valid[:, None, :] & (slots[None, None, :] <= query_slots[None, :, None])


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q: [B,T,H,Dh]; k, v: [B,S,K,Dh]; mask: bool[B,T,S]. Returns [B,T,H,Dh] q.dtype.

    Fully masked query rows (left padding) give a uniform average instead of NaN; their outputs are never used.
    """
    b, t, h, dh = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(b, t, kv_heads, h // kv_heads, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / math.sqrt(dh)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = dense("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, dh)


def self_attention(p: Params, x: jax.Array, positions: jax.Array, mask: jax.Array, inv_freq: jax.Array,
                   kv: tuple[jax.Array, jax.Array] | None = None,
                   index: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Llama self-attention. x: [B,T,D] (normed); positions: int[B,T]; mask: bool[B,T,T] without a cache or
    bool[B,T,S] with one; kv: this layer's (k, v) cache [B,S,K,Dh] written at slot `index`.

    Returns ([B,T,D], updated (k, v) or None).
    """
    dt = x.dtype
    q = dense("btd,dhe->bthe", x, p["q"])
    k = dense("btd,dhe->bthe", x, p["k"])
    v = dense("btd,dhe->bthe", x, p["v"])
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    if kv is not None:
        start = (0, index, 0, 0)
        k_all = update_slice(kv[0], k, start)
        v_all = update_slice(kv[1], v, start)
        kv = (k_all, v_all)
        k, v = k_all.astype(dt), v_all.astype(dt)
    out = gqa_attention(q, k, v, mask)
    return dense("bthe,hed->btd", out, p["o"]), kv


def swiglu_mlp(p: Params, x: jax.Array) -> jax.Array:
    """SwiGLU feed-forward: down(silu(x @ gate) * (x @ up)). x: [B,T,D] -> [B,T,D]."""
    gate = jax.nn.silu(dense("...d,df->...f", x, p["gate"]))
    return dense("...f,fd->...d", gate * dense("...d,df->...f", x, p["up"]), p["down"])


def decoder_layer(p: Params, x: jax.Array, positions: jax.Array, mask: jax.Array, inv_freq: jax.Array,
                  config: LlamaConfig, kv: tuple[jax.Array, jax.Array] | None = None,
                  index: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """One pre-norm Llama decoder layer (self-attention + SwiGLU, residuals). x: [B,T,D] compute dtype.

    See `self_attention` for positions / mask / kv / index. Returns (x [B,T,D], updated kv or None).
    """
    h, kv = self_attention(p["attn"], rms_norm(x, p["attn_norm"], config.rms_norm_eps), positions, mask,
                           inv_freq, kv, index)
    x = x + h
    x = x + swiglu_mlp(p["mlp"], rms_norm(x, p["mlp_norm"], config.rms_norm_eps))
    return x, kv


def layer_param_shapes(config: LlamaConfig) -> dict[str, Any]:
    """Shapes of one decoder layer's params (same nesting as the params)."""
    d, h, k, dh, f = (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                      config.intermediate_size)
    return {"attn_norm": (d,), "attn": {"q": (d, h, dh), "k": (d, k, dh), "v": (d, k, dh), "o": (h, dh, d)},
            "mlp_norm": (d,), "mlp": {"gate": (d, f), "up": (d, f), "down": (f, d)}}


def layer_logical_axes() -> dict[str, Any]:
    """Logical axis names of one decoder layer's params (see `jaxrl_vlm.models.sharding`)."""
    return {"attn_norm": ("norm",),
            "attn": {"q": ("embed", "heads", "head_dim"), "k": ("embed", "kv_heads", "head_dim"),
                     "v": ("embed", "kv_heads", "head_dim"), "o": ("heads", "head_dim", "embed")},
            "mlp_norm": ("norm",), "mlp": {"gate": ("embed", "mlp"), "up": ("embed", "mlp"), "down": ("mlp", "embed")}}
