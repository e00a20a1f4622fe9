"""Perspective-view grid renderer (spec §1.5) against independent NumPy/SciPy/PIL implementations written here."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jaxrl_vlm.envs.virl.city import generate_city, get_style
from jaxrl_vlm.envs.virl.panorama import render_panorama
from jaxrl_vlm.envs.virl.views import (assemble_grid, cv2_remap_table, grid_headings, panorama_coords,
                                       perspective_view, render_view_grids, resize_view, sample_panorama)


def spec_coords(heading, rotation, pano_h, pano_w, size, fov=90.0, pitch=0.0):
    """Spec §1.5 in float64 NumPy: intrinsics, Rodrigues rotations, lon/lat, panorama X/Y."""
    theta = math.radians(((heading - 180.0) % 360.0 + rotation) % 360.0)
    f = 0.5 * size / math.tan(math.radians(fov) / 2)
    k_inv = np.linalg.inv(np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1.0]]))
    xs, ys = np.meshgrid(np.arange(size), np.arange(size))
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ k_inv.T

    def rodrigues(v):
        angle = np.linalg.norm(v)
        if angle == 0:
            return np.eye(3)
        k = v / angle
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx

    r1 = rodrigues(np.array([0.0, 1.0, 0.0]) * theta)
    r2 = rodrigues(r1 @ np.array([1.0, 0.0, 0.0]) * math.radians(pitch))
    xyz = rays @ (r2 @ r1).T
    lon = np.arctan2(xyz[..., 0], xyz[..., 2])
    lat = np.arcsin(xyz[..., 1] / np.linalg.norm(xyz, axis=-1))
    return (lon / (2 * np.pi) + 0.5) * (pano_w - 1), (lat / np.pi + 0.5) * (pano_h - 1)


def keys_bicubic(pano, x, y, a=-0.75):
    """cv2-style bicubic with wrap on both axes, one tap at a time."""
    def w(t):
        t = np.abs(t)
        return np.where(t <= 1, (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1,
                        np.where(t < 2, a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a, 0.0))
    h, wd = pano.shape[:2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    out = np.zeros(x.shape + (pano.shape[2],))
    for dy in range(-1, 3):
        for dx in range(-1, 3):
            weight = w(x - (x0 + dx)) * w(y - (y0 + dy))
            out += weight[..., None] * pano[(y0 + dy) % h, (x0 + dx) % wd].astype(np.float64)
    return out


@pytest.fixture(scope="module")
def smooth_pano():
    h, w = 64, 128
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rng = np.random.default_rng(0)
    chans = []
    for _ in range(3):
        fx, fy = rng.integers(1, 4, size=2)
        chans.append(128 + 60 * np.sin(2 * np.pi * fx * xx / w + rng.uniform(0, 6)) * np.cos(
            np.pi * fy * yy / h) + 40 * np.cos(2 * np.pi * xx / w))
    return np.clip(np.stack(chans, -1) + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def view_fn():
    return jax.jit(perspective_view, static_argnames=("view_size", "fov", "pitch", "interpolation"))


coords_fn = jax.jit(panorama_coords, static_argnames=("pano_hw", "view_size", "fov", "pitch"))
resize_fn = jax.jit(resize_view, static_argnums=1)


CASES = [(0.0, 0.0), (123.4, 77.7), (359.0, 301.25), (200.0, 10.0)]


def test_coordinates_match_spec_math():
    for heading, rotation in CASES:
        x, y = coords_fn(heading, rotation, (64, 128), 21)
        ex, ey = spec_coords(heading, rotation, 64, 128, 21)
        dx = (np.asarray(x) - ex + 63.5) % 127 - 63.5          # the seam lon = +-pi is X = 0 or W-1
        assert np.abs(dx).max() < 1e-3 and np.abs(np.asarray(y) - ey).max() < 1e-3
    x, y = coords_fn(30.0, 40.0, (64, 128), 21, pitch=20.0)
    ex, ey = spec_coords(30.0, 40.0, 64, 128, 21, pitch=20.0)
    assert np.abs(np.asarray(x) - ex).max() < 1e-3 and np.abs(np.asarray(y) - ey).max() < 1e-3


def test_bilinear_matches_scipy_map_coordinates(smooth_pano, view_fn):
    for heading, rotation in CASES:
        ours = np.asarray(view_fn(jnp.asarray(smooth_pano), heading, rotation, view_size=24,
                                  interpolation="bilinear")).astype(float)
        ex, ey = spec_coords(heading, rotation, *smooth_pano.shape[:2], 24)
        ex, ey = np.round(ex * 32) / 32, np.round(ey * 32) / 32
        ref = np.stack([ndimage.map_coordinates(smooth_pano[..., c].astype(float), [ey, ex], order=1,
                                                mode="grid-wrap") for c in range(3)], -1)
        diff = np.abs(ours - np.clip(np.round(ref), 0, 255))
        assert diff.max() <= 2 and diff.mean() < 0.05


def test_remap_table_and_integer_positions():
    for interpolation, k in (("bicubic", 4), ("bilinear", 2)):
        table = cv2_remap_table(interpolation)
        assert table.shape == (32 * 32, k, k)
        np.testing.assert_array_equal(table.sum(axis=(1, 2)), np.full(32 * 32, 1 << 15))
        centre = np.zeros((k, k), np.int32)
        centre[k // 2 - 1, k // 2 - 1] = 1 << 15
        np.testing.assert_array_equal(table[0], centre)
    rng = np.random.default_rng(2)
    pano = rng.integers(0, 256, (8, 12, 3)).astype(np.uint8)
    xs, ys = np.meshgrid(np.arange(-12, 24), np.arange(-8, 16))
    sample = jax.jit(sample_panorama, static_argnames="interpolation")
    for interpolation in ("bicubic", "bilinear"):
        out = sample(jnp.asarray(pano), jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32),
                     interpolation=interpolation)
        np.testing.assert_array_equal(np.asarray(out), pano[ys % 8, xs % 12])


def test_bicubic_matches_independent_keys_and_is_close_to_spline(smooth_pano, view_fn):
    for heading, rotation in CASES:
        ours = np.asarray(view_fn(jnp.asarray(smooth_pano), heading, rotation, view_size=24)).astype(float)
        ex, ey = spec_coords(heading, rotation, *smooth_pano.shape[:2], 24)
        qx, qy = np.round(ex * 32) / 32, np.round(ey * 32) / 32
        ref = np.clip(np.round(keys_bicubic(smooth_pano, qx, qy)), 0, 255)
        diff = np.abs(ours - ref)
        assert diff.max() <= 2 and diff.mean() < 0.05
        spline = np.stack([ndimage.map_coordinates(smooth_pano[..., c].astype(float), [ey, ex], order=3,
                                                   mode="grid-wrap") for c in range(3)], -1)
        assert np.abs(ours - spline).mean() < 2.0
        nearest = smooth_pano[np.round(ey).astype(int) % 64, np.round(ex).astype(int) % 128].astype(float)
        assert np.abs(ours - nearest).mean() < 6.0


def test_view_centre_column_fraction_is_heading_plus_rotation(view_fn):
    width = 721
    cols = np.arange(width) / (width - 1) * 2 * np.pi
    row = np.stack([128 + 100 * np.cos(cols), 128 + 100 * np.sin(cols), np.zeros(width)], -1)
    pano = jnp.asarray(np.repeat(row[None], 64, 0).round().astype(np.uint8))
    rng = np.random.default_rng(1)
    for heading, rotation in list(CASES) + [tuple(rng.uniform(0, 360, 2)) for _ in range(3)]:
        view = np.asarray(view_fn(pano, heading, rotation, view_size=33)).astype(float)
        angles = np.degrees(np.arctan2(view[16, :, 1] - 128, view[16, :, 0] - 128)) % 360
        expected = (heading + rotation) % 360
        assert abs((angles[16] - expected + 180) % 360 - 180) < 1.0, (heading, rotation, angles[16])
        assert 0 < (angles[24] - angles[16]) % 360 < 90        # right of centre = clockwise (larger bearing)


def test_resize_is_bit_exact_with_pil_default_resize():
    rng = np.random.default_rng(3)
    for size_in, size_out in ((16, 24), (64, 40), (33, 100), (50, 7)):
        view = rng.integers(0, 256, (size_in, size_in, 3)).astype(np.uint8)
        ref = np.asarray(Image.fromarray(view).resize((size_out, size_out)))
        np.testing.assert_array_equal(np.asarray(resize_fn(jnp.asarray(view), size_out)), ref)


def test_batched_grids_layout_and_gap(smooth_pano, view_fn):
    np.testing.assert_allclose(np.asarray(grid_headings(10.0)), [235.0, 325.0, 55.0, 145.0])
    panos = jnp.stack([jnp.asarray(smooth_pano), jnp.asarray(smooth_pano[::-1])])
    idx, heading, rot = [1, 0, 1], [10.0, 95.0, 300.0], [33.0, 0.0, 181.5]
    grids = np.asarray(render_view_grids(panos, jnp.array(idx), jnp.array(heading), jnp.array(rot), view_size=16,
                                         resolution=24))
    assert grids.shape == (3, 53, 53, 3) and grids.dtype == np.uint8
    for b in range(3):
        grid = grids[b]
        assert not grid[24:29].any() and not grid[:, 24:29].any()          # the 5 px black gap
        for k, offset in enumerate((-135.0, -45.0, 45.0, 135.0)):           # (0,0) (29,0) (0,29) (29,29) in order
            x0, y0 = (k % 2) * 29, (k // 2) * 29
            view = view_fn(panos[idx[b]], (heading[b] + offset) % 360, rot[b], view_size=16)
            np.testing.assert_array_equal(grid[y0:y0 + 24, x0:x0 + 24], np.asarray(resize_fn(view, 24)))
    with pytest.raises(ValueError, match="views of shape"):
        assemble_grid(jnp.zeros((3, 8, 8, 3), jnp.uint8))


def _check_visible_where_it_stands(city, hidden, pano_index, target_xy, background, view_fn, width, view_size):
    """Render pano `pano_index` of `city` and of `hidden` (the same city without one object at target_xy): the
    changed pixels must sit at the object's compass bearing in the panorama, be mostly its board colour, and show
    up around the centre of the view facing it and nowhere in the opposite view."""
    pano = city.panos[pano_index]
    bearing = math.degrees(math.atan2(target_xy[0] - pano.xy[0], target_xy[1] - pano.xy[1])) % 360
    shown, not_shown = render_panorama(city, pano_index, width), render_panorama(hidden, pano_index, width)
    changed = np.abs(shown.astype(int) - not_shown.astype(int)).sum(-1) > 30
    cols = np.nonzero(changed.any(0))[0]
    expected_col = (bearing + pano.rotation) % 360 / 360 * (width - 1)
    assert cols.size > 3
    assert np.abs((cols - expected_col + width / 2) % (width - 1) - width / 2).max() < width / 12
    assert (np.abs(shown[changed].astype(float) - np.array(background, float)).sum(-1) < 60).mean() > 0.3
    diffs = {}
    for offset in (0.0, 180.0):
        views = [np.asarray(view_fn(jnp.asarray(img), bearing + offset, pano.rotation, view_size=view_size))
                 for img in (shown, not_shown)]
        diffs[offset] = np.abs(views[0].astype(int) - views[1].astype(int)).sum(-1) > 30
    assert diffs[0.0].sum() > 5 and diffs[180.0].sum() == 0
    assert abs(np.nonzero(diffs[0.0])[1].mean() - (view_size - 1) / 2) < view_size / 5


def test_shop_sign_visible_in_the_view_facing_it(view_fn):
    city = generate_city(get_style("soho"), 2, 3, 3)
    place = next(p for p in city.places if p.corner_of is not None)
    hidden = dataclasses.replace(city, walls=dataclasses.replace(
        city.walls, sign=np.where(city.walls.sign == place.sign, -1, city.walls.sign)))
    _check_visible_where_it_stands(city, hidden, city.node_pano[place.corner_of], place.xy,
                                   city.sign_background[place.sign], view_fn, 512, 64)


def test_street_name_blades_visible_in_the_view_facing_them(view_fn):
    city = generate_city(get_style("london"), 2, 3, 3)
    node = (1, 0)
    landmark = next(iter(city.street_landmarks[node].values()))
    signs = city.street_signs
    moved = np.where(np.linalg.norm(signs.pole_xy - landmark.xy, axis=1) < 1e-6, 1e5, 0.0)[:, None]
    hidden = dataclasses.replace(city, street_signs=dataclasses.replace(
        signs, pole_xy=signs.pole_xy + moved, p0=signs.p0 + np.repeat(moved, 2, 0),
        p1=signs.p1 + np.repeat(moved, 2, 0)))
    _check_visible_where_it_stands(city, hidden, city.node_pano[node], landmark.xy, city.style.street_sign[0],
                                   view_fn, 1024, 64)
