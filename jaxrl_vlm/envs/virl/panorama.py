"""Procedural equirectangular street-view panoramas of a synthetic city (NumPy, vectorised over pixels).

Pixel convention, chosen so that the perspective-view math of spec §1.5 (views.py) sees compass bearing b at the
centre of the view with heading b:
* column c looks along compass bearing  b = 360 * c / (W - 1) - rotation  (degrees clockwise from north), so the
  view centre column fraction is (heading + rotation) / 360 mod 1, as in the reference;
* row r looks at elevation  -(r / (H - 1) - 0.5) * 180  degrees (row 0 is straight up, the last row straight down).
The camera stands on the street centreline, CAMERA_HEIGHT_M above the ground. Each column casts one horizontal ray
against the building facades (2-D wall segments); the first wall hit gives facade pixels between the ground and the
wall's height, sky above it, and ground (road, sidewalk, lane markings, crosswalks) below.

Panoramas are written as ordinary RGB JPEGs. The reference reads them with cv2 (BGR) and converts its views back to
RGB; our reader loads RGB with PIL, so both see the same colours.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image

from jaxrl_vlm.envs.virl.city.layout import POLE_HEIGHT_M, City

CAMERA_HEIGHT_M = 2.5
MAX_RAY_M = 400.0
STOREFRONT_TOP_M = 3.1
SUN_BEARING_DEG = 215.0
FOG_DISTANCE_M = 450.0
CLOUD_LAYER_M = 1500.0
STREET_SIGN_RANGE_M = 60.0
POLE_RADIUS_M = 0.07
POLE_COLOUR = np.array([70.0, 74.0, 78.0], np.float32)
LANE_OFFSET_M = 1.8


def column_bearings(width: int, rotation: float) -> np.ndarray:
    """float64[W] compass bearing in degrees [0, 360) seen by each panorama column for this `rotation`."""
    return (360.0 * np.arange(width) / (width - 1) - rotation) % 360.0


def row_elevations(height: int) -> np.ndarray:
    """float64[H] elevation in radians of each panorama row (positive above the horizon)."""
    return -(np.arange(height) / (height - 1) - 0.5) * math.pi


def _cast_rays(city: City, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, ...]:
    """First wall hit along each horizontal ray: (distance float32[W] (inf if none), wall int32[W],
    metres along the wall float32[W], |cos| of the angle between ray and wall normal float32[W],
    cos of the angle between ray and wall direction float32[W])."""
    walls = city.walls
    mid = 0.5 * (walls.p0 + walls.p1)
    half = 0.5 * np.linalg.norm(walls.p1 - walls.p0, axis=1)
    near = np.nonzero(np.linalg.norm(mid - origin, axis=1) < MAX_RAY_M + half)[0]
    p0, e = walls.p0[near], walls.p1[near] - walls.p0[near]
    length = np.linalg.norm(e, axis=1)
    outward = np.stack([e[:, 1], -e[:, 0]], axis=1) / length[:, None]
    rel = p0 - origin
    denom = dirs[:, None, 0] * e[None, :, 1] - dirs[:, None, 1] * e[None, :, 0]
    safe = np.where(np.abs(denom) < 1e-9, 1e-9, denom)
    t = (rel[None, :, 0] * e[None, :, 1] - rel[None, :, 1] * e[None, :, 0]) / safe
    s = (rel[None, :, 0] * dirs[:, None, 1] - rel[None, :, 1] * dirs[:, None, 0]) / safe
    facing = dirs @ outward.T
    valid = (t > 0.05) & (s >= 0.0) & (s <= 1.0) & (facing < -1e-6) & (np.abs(denom) >= 1e-9)
    t = np.where(valid, t, np.inf)
    best = np.argmin(t, axis=1)
    cols = np.arange(dirs.shape[0])
    dist = t[cols, best]
    hit = np.isfinite(dist)
    wall = np.where(hit, near[best] if len(near) else 0, -1).astype(np.int32)
    along = (s[cols, best] * length[best]).astype(np.float32)
    cos_inc = np.abs(facing[cols, best]).astype(np.float32)
    cos_along = ((dirs * e[best]).sum(axis=1) / length[best]).astype(np.float32)
    return dist.astype(np.float32), wall, along, cos_inc, cos_along


def _value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth deterministic noise in [0, 1] from a few random sinusoids of (x, y)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(np.broadcast(x, y).shape, np.float32)
    for octave in range(4):
        fx, fy = rng.uniform(0.5, 1.5, size=2) * 2.0 ** octave
        px, py = rng.uniform(0, 2 * math.pi, size=2)
        out += (np.sin(fx * x + px) * np.sin(fy * y + py + 0.7 * np.sin(x))).astype(np.float32) / 2 ** octave
    return 0.5 + out / 3.75


def _sky(city: City, bearing_rad: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    """float32[H, W, 3] sky colour: horizon-to-zenith gradient plus clouds on a flat layer above the city, so
    every panorama of the city sees the same clouds in the same compass directions."""
    style = city.style
    t = (np.clip(elevation / (math.pi / 2), 0.0, 1.0) ** 0.6).astype(np.float32)[:, None]
    horizon, zenith = np.array(style.sky_horizon, np.float32), np.array(style.sky_zenith, np.float32)
    base = horizon + (zenith - horizon) * t[..., None]
    reach = (CLOUD_LAYER_M / np.tan(np.clip(elevation, 0.03, None))).astype(np.float32)[:, None]
    cx = reach * np.sin(bearing_rad).astype(np.float32)[None, :]
    cy = reach * np.cos(bearing_rad).astype(np.float32)[None, :]
    rng = np.random.default_rng(city.seed + 17)
    noise = np.zeros(cx.shape, np.float32)
    for octave in range(5):
        angle = rng.uniform(0, 2 * math.pi)
        freq = 2 * math.pi / (2500.0 / 2.1 ** octave)
        phase = rng.uniform(0, 2 * math.pi)
        wave = cx * np.float32(freq * math.cos(angle)) + cy * np.float32(freq * math.sin(angle))
        noise += np.sin(wave + np.float32(phase)) * np.float32(1.7 ** -octave)
    noise = 0.5 + noise / 4.0
    threshold = 0.68 - 0.4 * style.cloud_amount
    fade = np.clip(elevation / 0.05, 0.0, 1.0).astype(np.float32)[:, None]
    cover = np.clip((noise - np.float32(threshold)) * np.float32(10.0), 0.0, 1.0) * fade
    grey = 245.0 - 55.0 * style.cloud_amount
    return base + (np.float32(grey) - base) * cover[..., None]


def _facade(city: City, wall: np.ndarray, along: np.ndarray, z: np.ndarray, light: np.ndarray) -> np.ndarray:
    """float32[N, 3] facade colour for N wall pixels given their wall index, metres along it, height z."""
    style, walls = city.style, city.walls
    colour = walls.colour[wall].astype(np.float32)
    floor_h = walls.floor_height[wall]
    top = walls.height[wall]
    length = np.linalg.norm(walls.p1[wall] - walls.p0[wall], axis=1).astype(np.float32)
    win_w, win_h = style.window_size
    sx = np.mod(along - walls.window_phase[wall], style.window_spacing)
    zf = np.mod(z, floor_h)
    window = ((np.abs(sx - style.window_spacing / 2) < win_w / 2) & (np.abs(zf - 0.55 * floor_h) < win_h / 2)
              & (z > STOREFRONT_TOP_M + 0.6) & (z < top - 1.0) & (along > 0.8) & (along < length - 0.8))
    cell = (np.floor((along - walls.window_phase[wall]) / style.window_spacing) * 7 + np.floor(z / floor_h) * 13
            + wall * 3)
    glint = (np.sin(cell * 12.9898) * 43758.5453) % 1.0
    glass = np.array(style.window_colour, np.float32) * (0.8 + 0.6 * glint[:, None])
    out = np.where(window[:, None], glass, colour)
    sill = (np.abs(zf - (0.55 * floor_h - win_h / 2 - 0.08)) < 0.08) & (z > STOREFRONT_TOP_M + 0.6) & (z < top - 1)
    cornice = (z > top - 0.6) | ((z > STOREFRONT_TOP_M) & (z < STOREFRONT_TOP_M + 0.25))
    trim = np.array(style.trim_colour, np.float32)
    out = np.where((sill | cornice)[:, None], trim, out)
    store = z <= STOREFRONT_TOP_M
    pane = store & (np.mod(along, 3.0) > 0.35) & (z > 0.5) & (z < STOREFRONT_TOP_M - 0.3)
    store_col = np.where(pane[:, None], np.array(style.window_colour, np.float32) * 1.3,
                         np.array(style.storefront_colour, np.float32))
    out = np.where(store[:, None], store_col, out)
    edge = (along < 0.15) | (along > length - 0.15)
    out = np.where(edge[:, None], out * 0.6, out)
    return out * light[:, None]


def _sample_texture(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float32[N, 3] bilinear samples of a uint8[h, w, 3] texture at u, v in [0, 1] (u left->right, v top->bottom)."""
    th, tw = texture.shape[:2]
    x = np.clip(u, 0.0, 1.0) * (tw - 1)
    y = np.clip(v, 0.0, 1.0) * (th - 1)
    x0 = np.clip(np.floor(x), 0, tw - 2).astype(np.int32)
    y0 = np.clip(np.floor(y), 0, th - 2).astype(np.int32)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    tex = texture.astype(np.float32)
    top = tex[y0, x0] * (1 - fx) + tex[y0, x0 + 1] * fx
    bottom = tex[y0 + 1, x0] * (1 - fx) + tex[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _signs(city: City, wall: np.ndarray, along: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask bool[N], colour float32[N, 3]) of shop-sign pixels among N wall pixels."""
    walls = city.walls
    sign = walls.sign[wall]
    rect = walls.sign_rect[wall]
    mask = (sign >= 0) & (along >= rect[:, 0]) & (along <= rect[:, 1]) & (z >= rect[:, 2]) & (z <= rect[:, 3])
    colour = np.zeros((wall.shape[0], 3), np.float32)
    idx = np.nonzero(mask)[0]
    r, k = rect[idx], sign[idx]
    u = (along[idx] - r[:, 0]) / (r[:, 1] - r[:, 0])
    v = (r[:, 3] - z[idx]) / (r[:, 3] - r[:, 2])
    for sign_id in np.unique(k):
        sel = k == sign_id
        colour[idx[sel]] = _sample_texture(city.signs[sign_id], u[sel], v[sel])
    return mask, colour


def _draw_street_signs(city: City, image: np.ndarray, origin: np.ndarray, dirs: np.ndarray, tan_el: np.ndarray,
                       hit_dist: np.ndarray) -> None:
    """Paint the poles and street-name blades within STREET_SIGN_RANGE_M onto `image` float32[H, W, 3] in place,
    farthest first, hidden behind nearer facades (hit_dist float32[W])."""
    signs = city.street_signs
    near = np.linalg.norm(signs.pole_xy - origin, axis=1) < STREET_SIGN_RANGE_M
    items = [("pole", k, float(np.linalg.norm(signs.pole_xy[k] - origin))) for k in np.nonzero(near)[0]]
    blade_near = near[np.repeat(np.arange(len(near)), 2)]
    items += [("blade", k, float(np.linalg.norm(0.5 * (signs.p0[k] + signs.p1[k]) - origin)))
              for k in np.nonzero(blade_near)[0]]
    for kind, k, _ in sorted(items, key=lambda item: -item[2]):
        if kind == "pole":
            centre = signs.pole_xy[k] - origin
            along = dirs @ centre
            miss2 = centre @ centre - along ** 2
            cols = np.nonzero((along > 0) & (miss2 < POLE_RADIUS_M ** 2))[0]
            t = along[cols] - np.sqrt(POLE_RADIUS_M ** 2 - miss2[cols])
            z_range = (0.0, POLE_HEIGHT_M)
        else:
            e = signs.p1[k] - signs.p0[k]
            rel = signs.p0[k] - origin
            denom = dirs[:, 0] * e[1] - dirs[:, 1] * e[0]
            safe = np.where(np.abs(denom) < 1e-9, 1e-9, denom)
            t_all = (rel[0] * e[1] - rel[1] * e[0]) / safe
            s_all = (rel[0] * dirs[:, 1] - rel[1] * dirs[:, 0]) / safe
            cols = np.nonzero((t_all > 0.05) & (s_all >= 0) & (s_all <= 1) & (np.abs(denom) >= 1e-9))[0]
            t = t_all[cols]
            z_range = tuple(signs.z[k])
        keep = t < hit_dist[cols]
        cols, t = cols[keep], t[keep]
        if cols.size == 0:
            continue
        z = CAMERA_HEIGHT_M + t[None, :] * tan_el[:, None]
        rows, which = np.nonzero((z >= z_range[0]) & (z <= z_range[1]))
        if rows.size == 0:
            continue
        if kind == "pole":
            image[rows, cols[which]] = POLE_COLOUR
            continue
        s = s_all[cols[which]]
        facing_front = (dirs[cols[which]] @ np.array([e[1], -e[0]])) < 0
        u = np.where(facing_front, s, 1.0 - s)
        v = (z_range[1] - z[rows, which]) / (z_range[1] - z_range[0])
        image[rows, cols[which]] = _sample_texture(city.signs[signs.texture[k]], u, v)


def _ground(city: City, pano_index: int, dist_ground: np.ndarray, dirs: np.ndarray,
            hits: tuple[np.ndarray, ...]) -> np.ndarray:
    """float32[h, W, 3] ground colour for the rows below the horizon (dist_ground float32[h, 1] metres).

    A ground point is sidewalk when it lies within the sidewalk width of the block side that its column's ray hits
    (measured perpendicular to that side, and within the side's extent plus the corner)."""
    style, pano = city.style, city.panos[pano_index]
    hit_dist, wall, along, cos_inc, cos_along = hits
    road = np.array(style.road_colour, np.float32)
    walk = np.array(style.sidewalk_colour, np.float32)
    hit = np.isfinite(hit_dist)
    back = np.where(hit, hit_dist, MAX_RAY_M)[None, :] - dist_ground
    to_wall = back * cos_inc[None, :]
    extent = city.walls.facade_extent[np.maximum(wall, 0)]
    s_ground = along[None, :] - back * cos_along[None, :]
    margin = style.sidewalk_width
    within = (s_ground > extent[None, :, 0] - margin) & (s_ground < extent[None, :, 1] + margin)
    sidewalk = hit[None, :] & (to_wall < style.sidewalk_width) & within
    curb = sidewalk & (to_wall > style.sidewalk_width - 0.25)
    out = np.where(sidewalk[..., None], walk, road)
    out = np.where(curb[..., None], walk * 0.75, out)
    if not pano.at_intersection:
        qx = pano.xy[0] - pano.segment_start[0] + dist_ground * dirs[None, :, 0]
        qy = pano.xy[1] - pano.segment_start[1] + dist_ground * dirs[None, :, 1]
        ux, uy = pano.segment_dir
        along = qx * ux + qy * uy
        perp = qx * uy - qy * ux + LANE_OFFSET_M
        inset = style.road_width / 2 + style.sidewalk_width
        on_road = ~sidewalk & (np.abs(perp) < style.road_width / 2)
        dash = on_road & (np.abs(perp) < 0.1) & (along > inset) & (along < pano.segment_length - inset) & (
            np.mod(along, 6.0) < 3.0)
        near_end = np.minimum(np.abs(along - (inset - 1.8)), np.abs(along - (pano.segment_length - inset + 1.8)))
        zebra = on_road & (near_end < 1.5) & (np.mod(perp, 1.0) < 0.55)
        paint = np.array(style.lane_colour, np.float32)
        out = np.where(dash[..., None], paint, out)
        out = np.where(zebra[..., None], np.float32(235.0), out)
    return out


def render_panorama(city: City, pano_index: int, width: int = 2048, height: int | None = None) -> np.ndarray:
    """uint8[H, W, 3] equirectangular RGB panorama of pano `pano_index` (H defaults to W // 2)."""
    if not 0 <= pano_index < len(city.panos):
        raise ValueError(f"pano_index {pano_index} out of range [0, {len(city.panos)})")
    height = height or width // 2
    if width < 8 or height < 4:
        raise ValueError(f"panorama size {width}x{height} too small")
    style, pano = city.style, city.panos[pano_index]
    origin = np.array(pano.xy)
    bearing = np.radians(column_bearings(width, pano.rotation))
    dirs = np.stack([np.sin(bearing), np.cos(bearing)], axis=1)
    hits = _cast_rays(city, origin, dirs)
    hit_dist, wall, along = hits[:3]
    elevation = row_elevations(height)
    tan_el = np.tan(np.clip(elevation, -1.55, 1.55)).astype(np.float32)

    below = elevation < 0
    image = np.empty((height, width, 3), np.float32)
    image[~below] = _sky(city, bearing, elevation[~below])
    skyline = 0.03 + 0.05 * _value_noise(bearing * 9.0, np.zeros_like(bearing), city.seed + 5)
    far = (~np.isfinite(hit_dist))[None, :] & (elevation[:, None] < skyline[None, :]) & ~below[:, None]
    haze = np.array(style.sky_horizon, np.float32) * 0.8 + np.array(style.facade_palette[0], np.float32) * 0.2
    image = np.where(far[..., None], haze, image)

    dist_ground = CAMERA_HEIGHT_M / np.maximum(-tan_el[below], 1e-4)
    ground = _ground(city, pano_index, dist_ground[:, None], dirs, hits)
    fog = 1.0 - np.exp(-dist_ground / FOG_DISTANCE_M)[:, None, None]
    image[below] = ground * (1 - fog) + np.array(style.sky_horizon, np.float32) * fog

    wall_hit = wall >= 0
    z = CAMERA_HEIGHT_M + np.where(wall_hit, hit_dist, 0.0)[None, :] * tan_el[:, None]
    on_wall = wall_hit[None, :] & (z >= 0) & (z <= np.where(wall_hit, city.walls.height[wall], 0)[None, :])
    rows, cols = np.nonzero(on_wall)
    if rows.size:
        w, a, zz = wall[cols], along[cols], z[rows, cols]
        e = city.walls.p1[w] - city.walls.p0[w]
        outward = np.stack([e[:, 1], -e[:, 0]], axis=1) / np.linalg.norm(e, axis=1, keepdims=True)
        sun = np.array([math.sin(math.radians(SUN_BEARING_DEG)), math.cos(math.radians(SUN_BEARING_DEG))])
        light = (0.72 + 0.28 * (outward @ sun)).astype(np.float32)
        colour = _facade(city, w, a, zz, light)
        sign_mask, sign_colour = _signs(city, w, a, zz)
        colour = np.where(sign_mask[:, None], sign_colour, colour)
        fog_w = (1.0 - np.exp(-hit_dist[cols] / FOG_DISTANCE_M))[:, None]
        image[rows, cols] = colour * (1 - fog_w) + np.array(style.sky_horizon, np.float32) * fog_w

    _draw_street_signs(city, image, origin, dirs, tan_el, hit_dist)
    rng = np.random.default_rng([city.seed, pano_index])
    image += rng.normal(0.0, 2.0, size=(height, width, 1)).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_panorama(city: City, pano_index: int, street_views_dir: str, width: int = 2048,
                   jpeg_quality: int = 90) -> str:
    """Render pano `pano_index` and write `{pano_id}.jpg` (RGB JPEG) and `{pano_id}.metadata.json` (with
    `rotation`) into `street_views_dir`; returns the JPEG path."""
    pano = city.panos[pano_index]
    os.makedirs(street_views_dir, exist_ok=True)
    path = os.path.join(street_views_dir, f"{pano.pano_id}.jpg")
    Image.fromarray(render_panorama(city, pano_index, width)).save(path, quality=jpeg_quality)
    meta = {"pano_id": pano.pano_id, "lat": pano.geocode[0], "lng": pano.geocode[1], "rotation": pano.rotation,
            "date": "2024-06", "copyright": "synthetic (jaxrl_vlm)"}
    with open(os.path.join(street_views_dir, f"{pano.pano_id}.metadata.json"), "w") as f:
        json.dump(meta, f)
    return path
