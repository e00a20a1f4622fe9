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
  Each layer's keys and values are separate arrays [B,K,S,Dh] (slots next to head_dim), so a decode step writes its
  token in place and attention reads the layer's cache without slicing or transposing a stacked array.
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
    """Self-attention KV cache of L layers (a pytree).

    k, v: L-tuples of [B,K,S,Dh] arrays (compute dtype); valid: [B,S] bool; next_pos: [B] int32; index: [] int32.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    next_pos: jax.Array
    index: jax.Array

    @property
    def capacity(self) -> int:
        """Number of slots S."""
        return self.valid.shape[1]


CACHE_SLOT_AXIS = 2


def init_kv_cache(config: LlamaConfig, batch: int, capacity: int, num_layers: int | None = None) -> KVCache:
    """Empty cache with `capacity` slots for `num_layers` (default config.num_layers) self-attention layers."""
    layers = config.num_layers if num_layers is None else num_layers
    shape = (batch, config.num_kv_heads, capacity, config.head_dim)
    dtype = dtype_from_name(config.compute_dtype)
    return KVCache(
        k=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
        v=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
        valid=jnp.zeros((batch, capacity), bool), next_pos=jnp.zeros((batch,), jnp.int32),
        index=jnp.zeros((), jnp.int32))


def kv_cache_logical_axes(num_layers: int) -> KVCache:
    """Logical axes of a `KVCache` of `num_layers` layers."""
    kv = tuple(("batch", "kv_heads", "cache_seq", "head_dim") for _ in range(num_layers))
    return KVCache(k=kv, v=kv, valid=("batch", "cache_seq"), next_pos=("batch",), index=())


class DecodeLayers(NamedTuple):
    """A stack of L layers' params in the form a decode loop reads them (a pytree; `decode_layers`).

    stacked: the params as stored, leaves [L, ...]; sliced: L per-layer dicts, slices of `stacked` taken once,
    before the loop. `layer_params` reads `sliced` only in a program lowered for CPU, where slicing a stacked
    array inside a loop copies the layer's weights at every step (1.7x slower float32 decoding at batch 1). On TPU
    and GPU it slices `stacked` inside the loop (XLA:TPU reads the slice in place; XLA:GPU copies each layer's
    slice at every step, one layer's worth alive at a time), and XLA drops the unused `sliced`, which would be a
    second copy of every weight alive for the whole loop.
    """

    stacked: Params
    sliced: tuple[Params, ...]


def decode_layers(stacked: Params | DecodeLayers, num_layers: int) -> DecodeLayers:
    """`DecodeLayers` of a stacked layer dict (leaves [L, ...]; returned unchanged when already `DecodeLayers`)."""
    if isinstance(stacked, DecodeLayers):
        return stacked
    return DecodeLayers(stacked, tuple(jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
                                       for i in range(num_layers)))


def layer_params(layers: Params | DecodeLayers, i: int) -> Params:
    """Layer i's params from a stacked layer dict (leaves [L, ...]) or from `DecodeLayers` (see there)."""
    take = lambda stacked: jax.tree_util.tree_map(lambda a: a[i], stacked)
    if not isinstance(layers, DecodeLayers):
        return take(layers)
    return jax.lax.platform_dependent(layers.stacked, layers.sliced[i], cpu=lambda stacked, sliced: sliced,
                                      default=lambda stacked, sliced: take(stacked))


_FLOAT16 = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _as_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.uint16)


def update_slice(operand: jax.Array, update: jax.Array, start: tuple[Any, ...]) -> jax.Array:
    """`jax.lax.dynamic_update_slice` (update cast to operand.dtype) for inference (not differentiable).

    On XLA:CPU a 16-bit float dynamic-update-slice is rewritten to float32 over the whole operand (a KV cache write
    would convert the cache at every decode step); there 16-bit floats are written as uint16 bitcasts. The choice
    is made when the program is lowered, for the platform it is lowered for (a TPU or GPU program compiled on a CPU
    host gets the plain update).
    """
    update = update.astype(operand.dtype)
    plain = lambda o, u: jax.lax.dynamic_update_slice(o, u, start)
    if operand.dtype not in _FLOAT16:
        return plain(operand, update)

    def as_bits(o: jax.Array, u: jax.Array) -> jax.Array:
        out = jax.lax.dynamic_update_slice(_as_bits(o), _as_bits(u), start)
        return jax.lax.bitcast_convert_type(out, o.dtype)

    return jax.lax.platform_dependent(operand, update, cpu=as_bits, default=plain)


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


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q: [B,T,H,Dh]; k, v: [B,K,S,Dh]; mask: bool[B,T,S]. Returns [B,T,H,Dh] q.dtype.

    Fully masked query rows (left padding) give a uniform average instead of NaN; their outputs are never used.
    """
    b, t, h, dh = q.shape
    kv_heads, slots = k.shape[1], k.shape[2]
    group = h // kv_heads
    # [B,K,G*T,Dh] queries: both products are then plain batched matmuls (XLA:CPU has no bf16 kernel for the
    # operand order the 5-d einsum lowers to).
    qg = q.reshape(b, t, kv_heads, group, dh).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, group * t, dh)
    scores = jnp.einsum("bkqd,bksd->bkqs", qg, k, preferred_element_type=jnp.float32) / math.sqrt(dh)
    scores = scores.reshape(b, kv_heads, group, t, slots)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv_heads, group * t, slots)
    out = dense("bkqs,bksd->bkqd", probs, v).reshape(b, kv_heads, group, t, dh)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attend` with keys and values laid out [B,S,K,Dh] (as projected)."""
    return attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)


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
    if kv is None:
        out = gqa_attention(q, k, v, mask)
    else:
        start = (0, 0, index, 0)
        kv = (update_slice(kv[0], k.transpose(0, 2, 1, 3), start), update_slice(kv[1], v.transpose(0, 2, 1, 3), start))
        out = attend(q, kv[0].astype(dt), kv[1].astype(dt), mask)
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


def cached_decoder_layers(layers: Params | DecodeLayers, x: jax.Array, cache_k: tuple[jax.Array, ...],
                          cache_v: tuple[jax.Array, ...], positions: jax.Array, mask: jax.Array, inv_freq: jax.Array,
                          config: LlamaConfig, index: jax.Array, constrain: Any = lambda h: h, first: int = 0
                          ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Run layers first.. of a stack (`layer_params`) one after another over x [B,T,D], one per cache [B,K,S,Dh]
    (written at slot `index`); `constrain` is applied to x after each layer. Returns (x, new keys, new values)."""
    new_k, new_v = [], []
    for i, (k, v) in enumerate(zip(cache_k, cache_v), start=first):
        x, (k, v) = decoder_layer(layer_params(layers, i), x, positions, mask, inv_freq, config, (k, v), index)
        x = constrain(x)
        new_k.append(k)
        new_v.append(v)
    return x, tuple(new_k), tuple(new_v)


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
