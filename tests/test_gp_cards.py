"""GP-VL card art, atlas, user card folders and the device renderer (spec generalpoints.md §6)."""
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import jax
import jax.numpy as jnp

from jaxrl_vlm.envs.general_points.cards import card_atlas, load_card_folder, render_hands

TABLE = np.array([0x35, 0x65, 0x4D], np.uint8)
SPEC_XS = (5, 302, 599, 896)  # spec §6, written out rather than recomputed
SPEC_Y, CARD_W, CARD_H = 411, 270, 378
SUIT_CHARS = "HSDC"
RANK_CHARS = "A23456789TJQK"
# Hands: ranks 1..13, suits index (H, S, D, C).
HANDS_RANKS = np.array([[1, 10, 12, 7], [13, 6, 9, 2], [13, 6, 9, 3]], np.int32)
HANDS_SUITS = np.array([[1, 0, 2, 3], [3, 2, 1, 0], [3, 2, 1, 0]], np.int32)


@pytest.fixture(scope="module")
def atlas():
    return card_atlas()


@pytest.fixture(scope="module")
def images(atlas):
    return np.asarray(render_hands(jnp.asarray(HANDS_RANKS), jnp.asarray(HANDS_SUITS), jnp.asarray(atlas)))


def test_atlas_shape_and_distinct_cards(atlas):
    assert atlas.shape == (4, 13, CARD_H, CARD_W, 3) and atlas.dtype == np.uint8
    digests = {atlas[s, r].tobytes() for s in range(4) for r in range(13)}
    assert len(digests) == 52
    assert card_atlas() is atlas  # drawn once per process


def test_render_shape_background_and_card_positions(images, atlas):
    assert images.shape == (3, 1200, 1200, 3) and images.dtype == np.uint8
    outside = np.ones((1200, 1200), bool)
    for x in SPEC_XS:
        outside[SPEC_Y:SPEC_Y + CARD_H, x:x + CARD_W] = False
    assert (images[:, outside] == TABLE).all()
    for b in range(len(images)):
        for i, x in enumerate(SPEC_XS):
            tile = atlas[HANDS_SUITS[b, i], HANDS_RANKS[b, i] - 1]
            np.testing.assert_array_equal(images[b, SPEC_Y:SPEC_Y + CARD_H, x:x + CARD_W], tile)


def test_different_hands_give_different_images(images):
    assert not np.array_equal(images[0], images[1])
    diff = (images[1] != images[2]).any(axis=-1)
    rows, cols = np.nonzero(diff)
    # only the last card (2 -> 3 of hearts) changed
    assert cols.min() >= SPEC_XS[3] and cols.max() < SPEC_XS[3] + CARD_W and rows.min() >= SPEC_Y


def _ink(tile):
    tile = tile.astype(int)
    red = (tile[..., 0] > 150) & (tile[..., 1] < 90) & (tile[..., 2] < 90)
    black = tile.max(axis=-1) < 60
    return red, black


def test_suit_colours(atlas):
    for s, suit in enumerate(SUIT_CHARS):
        for r in range(13):
            red, black = _ink(atlas[s, r])
            if suit in "HD":
                assert red.sum() > 1500 and black.sum() == 0, (suit, r + 1)
            else:
                assert black.sum() > 1500 and red.sum() == 0, (suit, r + 1)


def test_pip_count_matches_rank(atlas):
    """Number cards show as many separate pips in the centre field as their rank (the ace one large pip)."""
    for s in range(4):
        for rank in range(1, 11):
            red, black = _ink(atlas[s, rank - 1])
            field = (red | black)[40:338, 62:208]
            _, count = ndimage.label(field)
            assert count == rank, (SUIT_CHARS[s], rank, count)


def test_face_cards_have_a_framed_panel(atlas):
    tint = np.array([250, 236, 196])
    for s in range(4):
        for r in range(13):
            tinted = (np.abs(atlas[s, r].astype(int) - tint).max(axis=-1) <= 2).sum()
            assert (tinted > 10_000) == (r >= 10), (SUIT_CHARS[s], r + 1, tinted)


def test_resolution_option_matches_pil_bilinear(images, atlas):
    small = np.asarray(render_hands(jnp.asarray(HANDS_RANKS[:1]), jnp.asarray(HANDS_SUITS[:1]), jnp.asarray(atlas),
                                    resolution=560))
    assert small.shape == (1, 560, 560, 3) and small.dtype == np.uint8
    reference = np.asarray(Image.fromarray(images[0]).resize((560, 560), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(reference - small[0]).max() <= 2


def test_bad_atlas_and_hand_shapes_raise(atlas):
    with pytest.raises(ValueError, match="atlas"):
        render_hands(jnp.asarray(HANDS_RANKS), jnp.asarray(HANDS_SUITS), jnp.zeros((4, 13, 10, 10, 3), jnp.uint8))
    with pytest.raises(ValueError, match="ranks and suits"):
        render_hands(jnp.asarray(HANDS_RANKS[:, :3]), jnp.asarray(HANDS_SUITS[:, :3]), jnp.asarray(atlas))


def _card_colour(s, r):
    return (10 + 60 * s, 5 + 19 * r, 200 - 13 * r)


@pytest.fixture()
def card_folder(tmp_path):
    for s, suit in enumerate(SUIT_CHARS):
        for r, rank in enumerate(RANK_CHARS):
            Image.new("RGB", (135, 189), _card_colour(s, r)).save(tmp_path / f"{suit}{rank}.png")
    Image.new("RGBA", (90, 126), (255, 255, 255, 0)).save(tmp_path / "CK.png")  # fully transparent
    return tmp_path


def test_user_card_folder(card_folder):
    atlas = load_card_folder(card_folder)
    assert atlas.shape == (4, 13, CARD_H, CARD_W, 3) and atlas.dtype == np.uint8
    for s in range(4):
        for r in range(13):
            expected = TABLE if (s, r) == (3, 12) else np.array(_card_colour(s, r), np.uint8)
            assert (atlas[s, r] == expected).all(), (SUIT_CHARS[s], RANK_CHARS[r])
    image = np.asarray(render_hands(jnp.asarray(HANDS_RANKS[:1]), jnp.asarray(HANDS_SUITS[:1]), jnp.asarray(atlas)))
    for i, x in enumerate(SPEC_XS):
        colour = _card_colour(HANDS_SUITS[0, i], HANDS_RANKS[0, i] - 1)
        assert (image[0, SPEC_Y:SPEC_Y + CARD_H, x:x + CARD_W] == colour).all()
    np.testing.assert_array_equal(card_atlas(card_folder), atlas)


def test_user_card_folder_errors(card_folder):
    (card_folder / "DT.png").unlink()
    with pytest.raises(FileNotFoundError, match="DT.png"):
        load_card_folder(card_folder)
    (card_folder / "DT.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="DT.png"):
        load_card_folder(card_folder)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_card_folder(card_folder / "nowhere")


def test_bad_hand_values_raise(atlas):
    with pytest.raises(ValueError, match="ranks must lie in 1..13"):
        render_hands(np.array([[0, 1, 2, 3]]), np.zeros((1, 4), np.int32), jnp.asarray(atlas))
    with pytest.raises(ValueError, match="suits must index"):
        render_hands(np.ones((1, 4), np.int32), np.array([[0, 1, 2, 4]]), jnp.asarray(atlas))


def test_render_inside_jit(atlas):
    @jax.jit
    def first_card_corner(ranks, suits, atlas):
        return render_hands(ranks, suits, atlas)[:, SPEC_Y, SPEC_XS[0] + 40]

    out = first_card_corner(jnp.asarray(HANDS_RANKS), jnp.asarray(HANDS_SUITS), jnp.asarray(atlas))
    np.testing.assert_array_equal(out, atlas[HANDS_SUITS[:, 0], HANDS_RANKS[:, 0] - 1, 0, 40])
