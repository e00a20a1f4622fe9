"""GP-VL card images (spec generalpoints.md §6): a host-built card atlas and a jittable device renderer.

The atlas is uint8[4 suits, 13 ranks, 378, 270, 3] with suits in SUITS order ('H', 'S', 'D', 'C') and rank r at
index r - 1. It is either the project's own art (`card_art.draw_card`) or a folder of the user's card images.
`render_hands` lays four atlas tiles onto the #35654d table canvas at the spec positions with a gather and static
`dynamic_update_slice`s, all on the device.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxrl_vlm.envs.general_points.card_art import CARD_HEIGHT, CARD_WIDTH, TABLE_RGB, draw_card
from jaxrl_vlm.envs.general_points.sampling import SUITS

CANVAS_SIZE = 1200
CARD_Y = 411
CARD_XS = tuple(5 + int(i * CARD_WIDTH * 1.1) for i in range(4))  # (5, 302, 599, 896), as the reference computes it
RANK_CHARS = "A23456789TJQK"  # file-name rank characters of user card folders
ATLAS_SHAPE = (len(SUITS), 13, CARD_HEIGHT, CARD_WIDTH, 3)


@functools.lru_cache(maxsize=1)
def _drawn_atlas() -> np.ndarray:
    atlas = np.stack([np.stack([draw_card(r, s) for r in range(1, 14)]) for s in SUITS])
    atlas.setflags(write=False)
    return atlas


def card_file_name(suit: int, rank: int) -> str:
    """File name of a card in a user folder: `{suit}{rank}.png`, e.g. 'HA.png', 'ST.png', 'CK.png'."""
    return f"{SUITS[suit]}{RANK_CHARS[rank - 1]}.png"


def load_card_folder(card_dir: str | os.PathLike) -> np.ndarray:
    """Read 52 user card images `{suit}{rank}.png` (suit H,S,D,C; rank A,2..9,T,J,Q,K) into an atlas.

    Each image is converted to RGB (transparent parts are composited onto the table colour) and resized to 270x378
    with PIL's Lanczos filter. Returns uint8[4, 13, 378, 270, 3]. Raises FileNotFoundError naming every missing file
    and ValueError naming a file that cannot be decoded.
    """
    card_dir = os.fspath(card_dir)
    if not os.path.isdir(card_dir):
        raise FileNotFoundError(f"card image folder {card_dir!r} does not exist or is not a folder")
    paths = [[os.path.join(card_dir, card_file_name(s, r)) for r in range(1, 14)] for s in range(len(SUITS))]
    missing = [p for row in paths for p in row if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} card image(s) missing in {card_dir!r}: {missing}")
    atlas = np.empty(ATLAS_SHAPE, dtype=np.uint8)
    for s, row in enumerate(paths):
        for r, path in enumerate(row):
            atlas[s, r] = _read_card_image(path)
    return atlas


def _read_card_image(path: str) -> np.ndarray:
    """One user card image as uint8[378, 270, 3]."""
    try:
        with Image.open(path) as image:
            image.load()
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read card image {path!r}: {err}") from err
    table = Image.new("RGBA", rgba.size, TABLE_RGB + (255,))
    rgb = Image.alpha_composite(table, rgba).convert("RGB")
    return np.asarray(rgb.resize((CARD_WIDTH, CARD_HEIGHT), Image.Resampling.LANCZOS), dtype=np.uint8)


def card_atlas(card_dir: Optional[str | os.PathLike] = None) -> np.ndarray:
    """The card atlas uint8[4, 13, 378, 270, 3] (suit order SUITS, rank r at index r-1), built on the host.

    card_dir None: the project's own art (drawn once per process, ~0.5 s, read-only array). Otherwise the user's
    folder of card images, see `load_card_folder`.
    """
    return _drawn_atlas() if card_dir is None else load_card_folder(card_dir)


def _check_render_inputs(ranks, suits, atlas, resolution: int) -> None:
    """Shape checks always; value checks only for concrete (non-traced) hands."""
    if tuple(atlas.shape) != ATLAS_SHAPE or atlas.dtype != jnp.uint8:
        raise ValueError(f"atlas must be uint8{list(ATLAS_SHAPE)}, got {atlas.dtype}{list(atlas.shape)}")
    if ranks.shape != suits.shape or ranks.ndim != 2 or ranks.shape[1] != 4:
        raise ValueError(f"ranks and suits must both be int[B, 4], got {ranks.shape} and {suits.shape}")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if not isinstance(ranks, jax.core.Tracer) and not np.isin(np.asarray(ranks), np.arange(1, 14)).all():
        raise ValueError(f"ranks must lie in 1..13, got {np.asarray(ranks).tolist()}")
    if not isinstance(suits, jax.core.Tracer) and not np.isin(np.asarray(suits), np.arange(len(SUITS))).all():
        raise ValueError(f"suits must index {SUITS} (0..3), got {np.asarray(suits).tolist()}")


def render_hands(ranks, suits, atlas, *, resolution: int = CANVAS_SIZE) -> jax.Array:
    """Images of hands: ranks int32[B, 4] in 1..13, suits int32[B, 4] indexing SUITS -> uint8[B, res, res, 3].

    atlas: uint8[4, 13, 378, 270, 3] from `card_atlas` (pass a device array to avoid an upload per call).
    The 1200x1200 table (#35654d) carries card i at x = CARD_XS[i], y = 411 (spec §6). For resolution != 1200 the
    canvas is resized on the device with `jax.image.resize(method='linear', antialias=True)`: a bilinear (triangle)
    filter whose support widens by the scale factor when shrinking (area-aware, like PIL's BILINEAR resize), then
    rounded to uint8. The float copy costs B*1200*1200*12 bytes, so render large batches in chunks.
    Callable inside jit (the value checks on ranks and suits then are skipped).
    """
    _check_render_inputs(ranks, suits, atlas, resolution)
    return _render_hands(jnp.asarray(ranks, jnp.int32), jnp.asarray(suits, jnp.int32), jnp.asarray(atlas),
                         resolution=resolution)


@functools.partial(jax.jit, static_argnames=("resolution",))
def _render_hands(ranks: jax.Array, suits: jax.Array, atlas: jax.Array, *, resolution: int) -> jax.Array:
    batch = ranks.shape[0]
    tiles = atlas[suits, ranks - 1]  # [B, 4, 378, 270, 3]
    canvas = jnp.broadcast_to(jnp.asarray(TABLE_RGB, jnp.uint8), (batch, CANVAS_SIZE, CANVAS_SIZE, 3))
    for i, x in enumerate(CARD_XS):
        canvas = jax.lax.dynamic_update_slice(canvas, tiles[:, i], (0, CARD_Y, x, 0))
    if resolution == CANVAS_SIZE:
        return canvas
    resized = jax.image.resize(canvas.astype(jnp.float32), (batch, resolution, resolution, 3), method="linear",
                               antialias=True)
    return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)
