"""`jaxrl_vlm.pil_resample` against the installed Pillow's `Image.resize` (bilinear: the Mllama processor's; bicubic:
the V-IRL views'): bit-exact for square-to-square and one-axis resizes, up and down; close where both sides change by
different factors (Pillow 13 may then run the vertical pass first, see the module docstring: on noise the two orders
differ by about a level on average, more at single pixels of bicubic's overshoot)."""
import jax
import numpy as np
import pytest
from PIL import Image

from jaxrl_vlm import pil_resample

PIL_IDS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
resize = jax.jit(pil_resample.resize, static_argnums=(1, 2, 3))


def _pil(image: np.ndarray, height: int, width: int, name: str) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), resample=PIL_IDS[name]))


@pytest.mark.parametrize("name", sorted(PIL_IDS))
def test_square_and_one_axis_resizes_are_bit_exact(name):
    """(h, w) -> (H, W): down by odd factors (incl. V-IRL's 2405 px grid to Mllama's 1120 px canvas), up, and one
    side only, on noise (every tap and the rounding show)."""
    rng = np.random.default_rng(0)
    for h, w, out_h, out_w in ((2405, 2405, 1120, 1120), (69, 69, 56, 56), (50, 50, 7, 7), (16, 16, 40, 40),
                               (100, 50, 37, 50), (37, 50, 37, 211), (30, 80, 30, 9)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(np.asarray(resize(image, out_h, out_w, name)), _pil(image, out_h, out_w, name),
                                      err_msg=f"{(h, w)} -> {(out_h, out_w)}")


@pytest.mark.parametrize("name", sorted(PIL_IDS))
def test_resizes_of_both_sides_by_different_factors_are_close(name):
    rng = np.random.default_rng(1)
    for h, w, out_h, out_w in ((100, 50, 37, 211), (90, 105, 61, 37), (31, 97, 101, 46)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = np.asarray(resize(image, out_h, out_w, name)).astype(int)
        assert np.abs(ours - _pil(image, out_h, out_w, name)).mean() < 1.0, (h, w, out_h, out_w)


def test_batched_leading_axes_and_unknown_filter():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    out = np.asarray(resize(images, 17, 17, "bilinear"))
    for image, got in zip(images, out):
        np.testing.assert_array_equal(got, _pil(image, 17, 17, "bilinear"))
    with pytest.raises(ValueError, match="unsupported PIL filter 'lanczos'"):
        pil_resample.resample_taps(10, 5, "lanczos")
