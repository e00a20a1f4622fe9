"""PIL's `Image.resize` of uint8 images in JAX, bit-exact: the V-IRL view grid (bicubic) and the Mllama image
processor (bilinear) run on the device with the arithmetic the reference's host PIL calls use.

Mirrors Pillow's `ImagingResample` for 8-bit images (src/libImaging/Resample.c): per output pixel of an axis,
`precompute_coeffs` (filter support scaled by max(in/out, 1), taps from round(centre - support) to
round(centre + support), weights filter((x + xmin - centre + 0.5) / filterscale) normalised in float64),
`normalize_coeffs_8bpc` (22-bit fixed point, rounded away from zero), then integer accumulation from 2^21 and an
arithmetic shift with clipping to [0, 255]. Horizontal pass first with a uint8 intermediate, each pass only when
that side changes size; no `reducing_gap` (Image.resize's default).

Pass order: Pillow up to 12 always runs the horizontal pass first. Pillow 13 sometimes runs the vertical one first
when both sides change by different factors (a rule not reproduced here); the two orders differ by a level or two
in some pixels. Square-to-square resizes (the V-IRL views and grid, the GP canvas, every Mllama tile canvas of a
square image) and one-axis resizes are bit-exact with every Pillow version (tested against the installed one).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

PRECISION_BITS = 22  # Pillow's 8bpc PRECISION_BITS = 32 - 8 - 2
BICUBIC_A = -0.5


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return 0.0


# name -> (filter, support), Pillow's BILINEAR and BICUBIC; PIL's resample ids 2 and 3 (`Image.Resampling`)
FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}
PIL_RESAMPLE_IDS = {2: "bilinear", 3: "bicubic"}


@functools.lru_cache(maxsize=32)
def resample_taps(in_size: int, out_size: int, filter_name: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """(source index int32[out, k], fixed-point weight int32[out, k]) of PIL's resampling of one axis from in_size
    to out_size pixels; unused taps have weight 0 (index 0)."""
    if filter_name not in FILTERS:
        raise ValueError(f"unsupported PIL filter {filter_name!r}; expected one of {sorted(FILTERS)}")
    kernel, base_support = FILTERS[filter_name]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = base_support * filter_scale
    ss = 1.0 / filter_scale
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), np.int32)
    weight = np.zeros((out_size, ksize), np.int32)
    for xx in range(out_size):
        centre = (xx + 0.5) * scale
        xmin = max(int(centre - support + 0.5), 0)
        xmax = min(int(centre + support + 0.5), in_size) - xmin
        k = [kernel((x + xmin - centre + 0.5) * ss) for x in range(xmax)]
        total = sum(k)
        for x in range(xmax):
            w = k[x] / total if total != 0.0 else k[x]
            weight[xx, x] = int(-0.5 + w * (1 << PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << PRECISION_BITS))
            index[xx, x] = xmin + x
    return index, weight


def resample_axis(image: jax.Array, axis: int, out_size: int, filter_name: str = "bicubic") -> jax.Array:
    """uint8 image [..., H, W, C] resampled along `axis` (-3 rows, -2 columns) to out_size, PIL's 8-bit arithmetic."""
    axis = axis % image.ndim
    index, weight = resample_taps(image.shape[axis], out_size, filter_name)
    shape = [1] * image.ndim
    shape[axis] = out_size
    acc = jnp.int32(1 << (PRECISION_BITS - 1))
    for tap in range(index.shape[1]):  # one gather per tap: memory O(pixels), not O(taps * pixels)
        w = jnp.asarray(weight[:, tap]).reshape(shape)
        acc = acc + jnp.take(image, jnp.asarray(index[:, tap]), axis=axis).astype(jnp.int32) * w
    return jnp.clip(jnp.right_shift(acc, PRECISION_BITS), 0, 255).astype(jnp.uint8)


def resize(image: jax.Array, height: int, width: int, filter_name: str = "bicubic") -> jax.Array:
    """uint8[..., height, width, C] resize of uint8[..., H, W, C], bit-exact with PIL's
    `Image.resize((width, height), resample)` of each [H, W, C] image."""
    out = image
    if image.shape[-2] != width:
        out = resample_axis(out, -2, width, filter_name)
    if image.shape[-3] != height:
        out = resample_axis(out, -3, height, filter_name)
    return out
