"""Llama-3.2-Vision (Mllama) image preprocessing in NumPy + PIL, equal to transformers' `MllamaImageProcessor`, and
the same on the device for batches of equally sized images (`preprocess_on_device`, bit-exact with the host path).

Each image is resized (aspect ratio preserved, PIL bilinear on uint8) to fit the best canvas of at most
`max_image_tiles` square tiles, zero-padded at the bottom/right to that canvas, rescaled to [0, 1] and normalised with
the processor's mean/std, then cut into tiles in row-major order. A batch is a list of samples, each a list of images;
missing images and tiles are zero-filled and reported through `aspect_ratio_ids` (0 = no image) and
`aspect_ratio_mask`.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxrl_vlm import pil_resample

ImageLike = Union[Image.Image, np.ndarray]

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"


@dataclass(frozen=True)
class MllamaImageProcessorConfig:
    """Settings of the Mllama image processor; the defaults are transformers' `MllamaImageProcessor` defaults.

    The real Llama-3.2-11B-Vision checkpoint ships its own values (tile 560, CLIP mean/std) in
    `preprocessor_config.json`: load them with `from_pretrained_dir`.
    """

    tile_size: int = 224
    max_image_tiles: int = 4
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1.0 / 255.0
    resample: int = int(Image.Resampling.BILINEAR)

    def __post_init__(self) -> None:
        if self.tile_size <= 0:
            raise ValueError(f"tile_size must be positive, got {self.tile_size}")
        if self.max_image_tiles <= 0:
            raise ValueError(f"max_image_tiles must be a positive integer, got {self.max_image_tiles}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"image_mean and image_std need 3 values, got {self.image_mean}, {self.image_std}")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "MllamaImageProcessorConfig":
        """Builds the settings from a transformers `preprocessor_config.json` dict (unknown keys are ignored)."""
        size = config.get("size", {"height": cls.tile_size, "width": cls.tile_size})
        if size.get("height") != size.get("width"):
            raise ValueError(f"Mllama tiles must be square, got size={size}")
        for flag in ("do_resize", "do_pad"):
            if config.get(flag, True) is False:
                raise ValueError(f"Mllama image processing does not support {flag}=False")
        if config.get("do_rescale", True) is False or config.get("do_normalize", True) is False:
            raise ValueError("Mllama image processing here always rescales and normalises")
        return cls(
            tile_size=int(size["height"]),
            max_image_tiles=int(config.get("max_image_tiles", cls.max_image_tiles)),
            image_mean=tuple(float(v) for v in config.get("image_mean", cls.image_mean)),
            image_std=tuple(float(v) for v in config.get("image_std", cls.image_std)),
            rescale_factor=float(config.get("rescale_factor", cls.rescale_factor)),
            resample=int(config.get("resample", cls.resample)),
        )

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike) -> "MllamaImageProcessorConfig":
        """Reads `preprocessor_config.json` from an HF checkpoint directory."""
        file = os.path.join(os.fspath(path), PREPROCESSOR_CONFIG_NAME)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {PREPROCESSOR_CONFIG_NAME} in {path}")
        with open(file) as f:
            return cls.from_dict(json.load(f))


@dataclass(frozen=True)
class MllamaImageBatch:
    """Model inputs for a batch of samples with up to M images each and T = max_image_tiles tiles per image.

    pixel_values: float32[B, M, T, 3, tile, tile]; aspect_ratio_ids: int32[B, M] (0 = no image);
    aspect_ratio_mask: int32[B, M, T] (1 = real tile; tile 0 is always 1); num_tiles: tiles used per image.
    """

    pixel_values: np.ndarray
    aspect_ratio_ids: np.ndarray
    aspect_ratio_mask: np.ndarray
    num_tiles: list[list[int]]


@lru_cache(maxsize=16)
def supported_aspect_ratios(max_image_tiles: int) -> tuple[tuple[int, int], ...]:
    """All tile grids (a, b) with a * b <= max_image_tiles, in transformers' order; id = index + 1."""
    return tuple(
        (a, b) for a in range(1, max_image_tiles + 1) for b in range(1, max_image_tiles + 1) if a * b <= max_image_tiles
    )


def optimal_tiled_canvas(height: int, width: int, max_image_tiles: int, tile_size: int) -> tuple[int, int]:
    """The (canvas_height, canvas_width) of the tile grid that needs the least up-scaling (or least down-scaling).

    Among the grids, each at scale min(canvas_h / height, canvas_w / width), the smallest scale >= 1 wins, else the
    largest scale < 1; ties go to the grid with the smallest area (first one on equal areas).
    """
    canvases = np.array(supported_aspect_ratios(max_image_tiles)) * tile_size
    canvas_heights, canvas_widths = canvases.T
    scale_h = canvas_heights / height
    scale_w = canvas_widths / width
    scales = np.where(scale_w > scale_h, scale_h, scale_w)
    upscales = scales[scales >= 1]
    selected = np.min(upscales) if len(upscales) else np.max(scales[scales < 1])
    chosen = canvases[scales == selected]
    best = chosen[np.argmin(chosen[:, 0] * chosen[:, 1])]
    return int(best[0]), int(best[1])


def size_fit_to_canvas(height: int, width: int, canvas_height: int, canvas_width: int, tile_size: int) -> tuple[int, int]:
    """The resized (height, width): aspect ratio kept, each side clipped to [tile_size, canvas side], at least 1."""
    target_width = int(np.clip(width, tile_size, canvas_width))
    target_height = int(np.clip(height, tile_size, canvas_height))
    scale_h = target_height / height
    scale_w = target_width / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_height), target_width
    return target_height, min(math.floor(width * scale_h) or 1, target_width)


def _to_rgb_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image; transparency is composited onto white like transformers does."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (H, W, 3) or (H, W), got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 3:
            return Image.fromarray(image, mode="RGB")
        if image.ndim == 2:
            return Image.fromarray(image, mode="L").convert("RGB")
        raise ValueError(f"numpy images must have shape (H, W, 3) or (H, W), got {image.shape}")
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 numpy array, got {type(image).__name__}")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_image(image: ImageLike, config: MllamaImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (tiles float32[nh * nw, 3, tile, tile], (nh, nw)); tiles are in row-major grid order."""
    pil = _to_rgb_pil(image)
    width, height = pil.size
    tile = config.tile_size
    canvas_h, canvas_w = optimal_tiled_canvas(height, width, config.max_image_tiles, tile)
    new_h, new_w = size_fit_to_canvas(height, width, canvas_h, canvas_w, tile)
    resized = np.asarray(pil.resize((new_w, new_h), resample=config.resample))
    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    scaled = (canvas.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    normalised = (scaled - mean) / std
    nh, nw = canvas_h // tile, canvas_w // tile
    tiles = normalised.reshape(nh, tile, nw, tile, 3).transpose(0, 2, 4, 1, 3).reshape(nh * nw, 3, tile, tile)
    return np.ascontiguousarray(tiles), (nh, nw)


def _nest(images: ImageLike | Sequence[ImageLike] | Sequence[Sequence[ImageLike]]) -> list[list[ImageLike]]:
    """Single image -> [[image]]; flat list -> one sample [[...]]; list of lists -> as is."""
    if isinstance(images, (Image.Image, np.ndarray)):
        return [[images]]
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images must be an image, a non-empty list of images or a list of lists of images")
    if all(isinstance(sample, (list, tuple)) for sample in images):
        return [list(sample) for sample in images]
    return [list(images)]


def preprocess(
    images: ImageLike | Sequence[ImageLike] | Sequence[Sequence[ImageLike]],
    config: MllamaImageProcessorConfig | None = None,
) -> MllamaImageBatch:
    """Preprocesses a batch (list of samples, each a list of images) into Mllama vision inputs (see MllamaImageBatch)."""
    config = config or MllamaImageProcessorConfig()
    samples = _nest(images)
    max_images = max(len(sample) for sample in samples)
    if max_images == 0:
        raise ValueError("every sample in the batch has zero images")
    ratios = supported_aspect_ratios(config.max_image_tiles)
    tile, num_tiles_max = config.tile_size, config.max_image_tiles
    pixel_values = np.zeros((len(samples), max_images, num_tiles_max, 3, tile, tile), dtype=np.float32)
    aspect_ratio_ids = np.zeros((len(samples), max_images), dtype=np.int32)
    aspect_ratio_mask = np.zeros((len(samples), max_images, num_tiles_max), dtype=np.int32)
    aspect_ratio_mask[:, :, 0] = 1
    num_tiles: list[list[int]] = []
    for i, sample in enumerate(samples):
        counts = []
        for j, image in enumerate(sample):
            tiles, grid = preprocess_image(image, config)
            pixel_values[i, j, : len(tiles)] = tiles
            aspect_ratio_ids[i, j] = ratios.index(grid) + 1
            aspect_ratio_mask[i, j, : len(tiles)] = 1
            counts.append(len(tiles))
        num_tiles.append(counts)
    return MllamaImageBatch(pixel_values, aspect_ratio_ids, aspect_ratio_mask, num_tiles)


@lru_cache(maxsize=64)
def _rescale_normalise_table(config: MllamaImageProcessorConfig) -> np.ndarray:
    """float32[256, 3]: the host path's rescale (in float64, then float32) and normalisation of each uint8 value per
    channel, so the device path is a lookup with the host's exact rounding."""
    values = (np.arange(256, dtype=np.float64)[:, None] * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    return (values - mean) / std


def preprocess_on_device(images: jax.Array, config: MllamaImageProcessorConfig) -> dict[str, jax.Array]:
    """Mllama inputs of one image per sample, on the device (jittable; the tile layout is static for the static
    image size): images uint8[B, H, W, 3] -> {pixel_values float32[B, 1, T, 3, tile, tile], aspect_ratio_ids
    int32[B, 1], aspect_ratio_mask int32[B, 1, T]} with T = max_image_tiles, equal to `preprocess` of the same
    images (the PIL resize through `pil_resample`)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != jnp.uint8:
        raise ValueError(f"expected uint8 images [batch, height, width, 3], got {images.dtype} {images.shape}")
    if config.resample not in pil_resample.PIL_RESAMPLE_IDS:
        raise ValueError(f"device preprocessing supports PIL resample {sorted(pil_resample.PIL_RESAMPLE_IDS)} "
                         f"(bilinear, bicubic), got {config.resample}")
    batch, height, width = images.shape[:3]
    tile, tiles = config.tile_size, config.max_image_tiles
    canvas_h, canvas_w = optimal_tiled_canvas(height, width, tiles, tile)
    new_h, new_w = size_fit_to_canvas(height, width, canvas_h, canvas_w, tile)
    resized = pil_resample.resize(images, new_h, new_w, pil_resample.PIL_RESAMPLE_IDS[config.resample])
    canvas = jnp.pad(resized, ((0, 0), (0, canvas_h - new_h), (0, canvas_w - new_w), (0, 0)))
    table = jnp.asarray(_rescale_normalise_table(config))
    pixels = table[canvas.astype(jnp.int32), jnp.arange(3)]  # [B, canvas_h, canvas_w, 3]
    nh, nw = canvas_h // tile, canvas_w // tile
    grid = pixels.reshape(batch, nh, tile, nw, tile, 3).transpose(0, 1, 3, 5, 2, 4).reshape(batch, nh * nw, 3, tile,
                                                                                            tile)
    pixel_values = jnp.zeros((batch, 1, tiles, 3, tile, tile), jnp.float32).at[:, 0, :nh * nw].set(grid)
    ratio_id = supported_aspect_ratios(tiles).index((nh, nw)) + 1
    mask = (jnp.arange(tiles) < nh * nw).astype(jnp.int32)
    return {"pixel_values": pixel_values, "aspect_ratio_ids": jnp.full((batch, 1), ratio_id, jnp.int32),
            "aspect_ratio_mask": jnp.broadcast_to(mask, (batch, 1, tiles))}
