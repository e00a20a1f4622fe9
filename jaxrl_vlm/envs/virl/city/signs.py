"""Shop-sign textures: the landmark's name drawn with PIL's default font on a coloured board."""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIGN_TEXTURE_HEIGHT = 64


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def sign_texture(text: str, background: tuple[int, int, int], foreground: tuple[int, int, int],
                 height: int = SIGN_TEXTURE_HEIGHT) -> np.ndarray:
    """uint8[height, width, 3] board showing `text` centred, with a thin border in the text colour.

    The width follows the text length, so width / height is the aspect ratio the sign keeps on the facade.
    """
    if not text:
        raise ValueError("sign text must be non-empty")
    font = _font(int(height * 0.6))
    left, top, right, bottom = font.getbbox(text)
    pad = int(height * 0.35)
    width = (right - left) + 2 * pad
    image = Image.new("RGB", (width, height), tuple(background))
    draw = ImageDraw.Draw(image)
    border = max(1, height // 24)
    draw.rectangle([border, border, width - 1 - border, height - 1 - border], outline=tuple(foreground),
                   width=border)
    draw.text((pad - left, (height - (bottom - top)) // 2 - top), text, fill=tuple(foreground), font=font)
    return np.asarray(image, np.uint8)


def sign_atlas(textures: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack sign textures of equal height into (uint8[n, height, max_width, 3], widths int32[n])."""
    if not textures:
        return np.zeros((0, SIGN_TEXTURE_HEIGHT, 1, 3), np.uint8), np.zeros((0,), np.int32)
    height = textures[0].shape[0]
    if any(t.shape[0] != height for t in textures):
        raise ValueError("sign textures must share one height")
    widths = np.array([t.shape[1] for t in textures], np.int32)
    atlas = np.zeros((len(textures), height, int(widths.max()), 3), np.uint8)
    for k, t in enumerate(textures):
        atlas[k, :, : t.shape[1]] = t
    return atlas, widths
