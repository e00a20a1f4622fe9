"""The project's own playing-card art, drawn procedurally with PIL (no fonts, no copied images).

Every card is drawn at SUPERSAMPLE x its final size and reduced with a box filter (exact area average), which gives
anti-aliased edges. Rank characters are stroked from our own polyline glyphs; suit pips are filled from circles and
polygons. Hearts and diamonds are red, spades and clubs black. Number cards carry the usual pip layout; face cards
carry a tinted frame with a large letter, so J, Q and K stand apart from the number cards at a glance.
Coordinates are in pixels of the final 270x378 card unless stated otherwise.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

CARD_WIDTH = 270
CARD_HEIGHT = 378
TABLE_RGB = (0x35, 0x65, 0x4D)
SUPERSAMPLE = 4

RED_RGB = (200, 16, 32)
BLACK_RGB = (20, 20, 20)
CARD_RGB = (255, 255, 255)
BORDER_RGB = (70, 70, 70)
FACE_TINT_RGB = (250, 236, 196)
CORNER_RADIUS = 16

Point = tuple[float, float]
_GLYPH_WIDTH = 0.62  # glyph box width as a fraction of its height
_STROKE = 0.15  # stroke width as a fraction of glyph height


def _arc(cx: float, cy: float, rx: float, ry: float, start_deg: float, end_deg: float, n: int = 40) -> list[Point]:
    """Points along an elliptic arc in y-down coordinates (0 deg = right, 90 deg = down)."""
    angles = np.radians(np.linspace(start_deg, end_deg, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _rotate_glyph(strokes: list[list[Point]]) -> list[list[Point]]:
    """The glyph turned by 180 degrees inside its box (a 6 becomes a 9)."""
    return [[(_GLYPH_WIDTH - x, 1.0 - y) for x, y in stroke] for stroke in strokes]


_SIX = [_arc(0.31, 0.69, 0.29, 0.30, 0, 360), _arc(0.62, 0.69, 0.60, 0.69, 180, 252)]

# Polylines in a box of height 1 and width _GLYPH_WIDTH (y down). Each value: (advance width, strokes).
GLYPHS: dict[str, tuple[float, list[list[Point]]]] = {
    "A": (_GLYPH_WIDTH, [[(0.0, 1.0), (0.31, 0.0), (0.62, 1.0)], [(0.12, 0.64), (0.50, 0.64)]]),
    "1": (0.40, [[(0.04, 0.22), (0.30, 0.0), (0.30, 1.0)]]),
    "0": (_GLYPH_WIDTH, [_arc(0.31, 0.5, 0.29, 0.48, 0, 360)]),
    "2": (_GLYPH_WIDTH, [_arc(0.31, 0.28, 0.28, 0.27, 180, 380) + [(0.02, 1.0), (0.62, 1.0)]]),
    "3": (_GLYPH_WIDTH, [_arc(0.30, 0.26, 0.26, 0.24, 200, 450) + _arc(0.30, 0.75, 0.30, 0.25, 270, 520)]),
    "4": (_GLYPH_WIDTH, [[(0.48, 1.0), (0.48, 0.0), (0.0, 0.70), (0.62, 0.70)]]),
    "5": (_GLYPH_WIDTH, [[(0.58, 0.0), (0.10, 0.0), (0.07, 0.46)] + _arc(0.31, 0.69, 0.30, 0.31, 240, 520)]),
    "6": (_GLYPH_WIDTH, _SIX),
    "7": (_GLYPH_WIDTH, [[(0.0, 0.0), (0.62, 0.0), (0.22, 1.0)]]),
    "8": (_GLYPH_WIDTH, [_arc(0.31, 0.25, 0.24, 0.24, 0, 360), _arc(0.31, 0.73, 0.29, 0.27, 0, 360)]),
    "9": (_GLYPH_WIDTH, _rotate_glyph(_SIX)),
    "J": (_GLYPH_WIDTH, [[(0.20, 0.0), (0.60, 0.0)],
                         [(0.46, 0.0), (0.46, 0.72)] + _arc(0.25, 0.72, 0.21, 0.27, 0, 180)]),
    "Q": (_GLYPH_WIDTH, [_arc(0.31, 0.47, 0.30, 0.46, 0, 360), [(0.36, 0.70), (0.64, 1.02)]]),
    "K": (_GLYPH_WIDTH, [[(0.04, 0.0), (0.04, 1.0)], [(0.60, 0.0), (0.04, 0.62)], [(0.22, 0.42), (0.62, 1.0)]]),
}
RANK_TEXT = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
_GLYPH_GAP = 0.10  # space between the glyphs of "10", fraction of height

# Suit shapes in a box [-1, 1]^2 (y down): circles (cx, cy, r) and polygons.
SUIT_SHAPES: dict[str, tuple[list[tuple[float, float, float]], list[list[Point]]]] = {
    "H": ([(-0.46, -0.42, 0.50), (0.46, -0.42, 0.50)], [[(-0.95, -0.32), (0.0, -0.50), (0.95, -0.32), (0.0, 0.98)]]),
    "D": ([], [[(0.0, -1.0), (0.74, 0.0), (0.0, 1.0), (-0.74, 0.0)]]),
    "S": (
        [(-0.45, 0.16, 0.47), (0.45, 0.16, 0.47)],
        [[(-0.91, 0.22), (0.0, -1.0), (0.91, 0.22), (0.0, 0.30)], [(0.0, 0.15), (0.30, 1.0), (-0.30, 1.0)]],
    ),
    "C": (
        [(0.0, -0.56, 0.38), (-0.54, 0.10, 0.38), (0.54, 0.10, 0.38), (0.0, -0.02, 0.30)],
        [[(0.0, 0.0), (0.30, 1.0), (-0.30, 1.0)]],
    ),
}
SUIT_RGB = {"H": RED_RGB, "D": RED_RGB, "S": BLACK_RGB, "C": BLACK_RGB}

# Pip centres of number cards, in the unit square of the pip field (column 0/0.5/1, row 0..1).
_SIDES_4 = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
_SIDES_6 = _SIDES_4 + [(0.0, 0.5), (1.0, 0.5)]
_SIDES_8 = _SIDES_4 + [(0.0, 1 / 3), (1.0, 1 / 3), (0.0, 2 / 3), (1.0, 2 / 3)]
PIP_LAYOUTS: dict[int, list[Point]] = {
    2: [(0.5, 0.0), (0.5, 1.0)],
    3: [(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)],
    4: _SIDES_4,
    5: _SIDES_4 + [(0.5, 0.5)],
    6: _SIDES_6,
    7: _SIDES_6 + [(0.5, 0.25)],
    8: _SIDES_6 + [(0.5, 0.25), (0.5, 0.75)],
    9: _SIDES_8 + [(0.5, 0.5)],
    10: _SIDES_8 + [(0.5, 1 / 6), (0.5, 5 / 6)],
}
_PIP_FIELD = (88.0, 72.0, 182.0, 306.0)  # x of left column, y of top row, x of right column, y of bottom row
_PIP_HALF = 24.0
_INDEX_CENTER_X = 32.0
_INDEX_TOP = 12.0
_INDEX_HEIGHT = 44.0
_INDEX_PIP_Y = 82.0
_INDEX_PIP_HALF = 15.0
_INDEX_BOX = (0, 0, 62, 102)  # corner region copied, turned by 180 degrees, to the bottom-right corner
_FACE_FRAME = (62.0, 44.0, 208.0, 334.0)


class _Canvas:
    """A supersampled card image with drawing helpers taking final-card pixel coordinates."""

    def __init__(self) -> None:
        s = SUPERSAMPLE
        self.image = Image.new("RGB", (CARD_WIDTH * s, CARD_HEIGHT * s), TABLE_RGB)
        self.draw = ImageDraw.Draw(self.image)

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (x * SUPERSAMPLE, y * SUPERSAMPLE)

    def disc(self, x: float, y: float, r: float, fill: tuple[int, int, int]) -> None:
        s = SUPERSAMPLE
        self.draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=fill)

    def polyline(self, points: Sequence[Point], width: float, fill: tuple[int, int, int]) -> None:
        """A stroke with round joins and round caps: straight segments plus a disc at every vertex."""
        pixels = [self.px(x, y) for x, y in points]
        for start, end in zip(pixels[:-1], pixels[1:]):
            self.draw.line([start, end], fill=fill, width=round(width * SUPERSAMPLE))
        for x, y in points:
            self.disc(x, y, width / 2, fill)

    def polygon(self, points: Sequence[Point], fill: tuple[int, int, int]) -> None:
        self.draw.polygon([self.px(x, y) for x, y in points], fill=fill)

    def rounded_rect(self, box: Sequence[float], radius: float, fill, outline=None, width: float = 0) -> None:
        s = SUPERSAMPLE
        self.draw.rounded_rectangle([v * s for v in box], radius=radius * s, fill=fill, outline=outline,
                                    width=round(width * s))

    def finish(self) -> np.ndarray:
        """Box-filter the supersampled image down to uint8[CARD_HEIGHT, CARD_WIDTH, 3]."""
        return np.asarray(self.image.resize((CARD_WIDTH, CARD_HEIGHT), Image.Resampling.BOX), dtype=np.uint8)


def _draw_pip(canvas: _Canvas, suit: str, cx: float, cy: float, half: float, upside_down: bool = False) -> None:
    """A suit symbol centred at (cx, cy) spanning 2*half pixels, optionally turned by 180 degrees."""
    sign = -1.0 if upside_down else 1.0
    fill = SUIT_RGB[suit]
    circles, polygons = SUIT_SHAPES[suit]
    for u, v, r in circles:
        canvas.disc(cx + sign * half * u, cy + sign * half * v, half * r, fill)
    for poly in polygons:
        canvas.polygon([(cx + sign * half * u, cy + sign * half * v) for u, v in poly], fill)


def _text_width(text: str) -> float:
    """Width of text in units of glyph height."""
    return sum(GLYPHS[c][0] for c in text) + _GLYPH_GAP * (len(text) - 1)


def _draw_text(canvas: _Canvas, text: str, center_x: float, top: float, height: float, fill) -> None:
    """Rank text from our stroke glyphs, horizontally centred at center_x, glyph box from top to top+height."""
    stroke = _STROKE * height
    x = center_x - _text_width(text) * height / 2
    for char in text:
        advance, strokes = GLYPHS[char]
        transform: Callable[[Point], Point] = lambda p, x0=x: (x0 + p[0] * height, top + p[1] * height)
        for line in strokes:
            canvas.polyline([transform(p) for p in line], stroke, fill)
        x += (advance + _GLYPH_GAP) * height


def _draw_face_panel(canvas: _Canvas, text: str, suit: str) -> None:
    """Face cards: a tinted frame in the suit colour with a large letter between two pips."""
    fill = SUIT_RGB[suit]
    canvas.rounded_rect(_FACE_FRAME, 8, fill=FACE_TINT_RGB, outline=fill, width=4)
    left, top, right, bottom = _FACE_FRAME
    cx, cy = (left + right) / 2, (top + bottom) / 2
    _draw_text(canvas, text, cx, cy - 60, 120, fill)
    _draw_pip(canvas, suit, cx, top + 34, 20)
    _draw_pip(canvas, suit, cx, bottom - 34, 20, upside_down=True)


def draw_card(rank: int, suit: str) -> np.ndarray:
    """One card of rank 1..13 and suit 'H', 'S', 'D' or 'C' as uint8[378, 270, 3] (table colour at the corners)."""
    if not 1 <= int(rank) <= 13:
        raise ValueError(f"rank must be in 1..13, got {rank}")
    if suit not in SUIT_SHAPES:
        raise ValueError(f"suit must be one of {sorted(SUIT_SHAPES)}, got {suit!r}")
    canvas = _Canvas()
    card_box = (0, 0, CARD_WIDTH - 1 / SUPERSAMPLE, CARD_HEIGHT - 1 / SUPERSAMPLE)  # last supersampled pixel
    canvas.rounded_rect(card_box, CORNER_RADIUS, fill=CARD_RGB, outline=BORDER_RGB, width=2)
    text, fill = RANK_TEXT[int(rank) - 1], SUIT_RGB[suit]
    _draw_text(canvas, text, _INDEX_CENTER_X, _INDEX_TOP, _INDEX_HEIGHT, fill)
    _draw_pip(canvas, suit, _INDEX_CENTER_X, _INDEX_PIP_Y, _INDEX_PIP_HALF)
    s = SUPERSAMPLE
    corner = canvas.image.crop(tuple(v * s for v in _INDEX_BOX)).transpose(Image.Transpose.ROTATE_180)
    canvas.image.paste(corner, ((CARD_WIDTH - _INDEX_BOX[2]) * s, (CARD_HEIGHT - _INDEX_BOX[3]) * s))
    if rank == 1:
        _draw_pip(canvas, suit, CARD_WIDTH / 2, CARD_HEIGHT / 2, 56)
    elif rank <= 10:
        left, top, right, bottom = _PIP_FIELD
        for u, v in PIP_LAYOUTS[int(rank)]:
            _draw_pip(canvas, suit, left + u * (right - left), top + v * (bottom - top), _PIP_HALF, upside_down=v > 0.5)
    else:
        _draw_face_panel(canvas, text, suit)
    return canvas.finish()
