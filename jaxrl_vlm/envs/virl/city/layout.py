"""Geometry of a synthetic city: a slightly irregular street grid, blocks of buildings with shop signs, a
street-name pole at every intersection, and a panorama point every ~10 m along every street.

Frame: local east/north metres around the style's origin. The grid has `nx` avenues (running along the style's
`grid_rotation` bearing) and `ny` cross streets; intersection (i, j) is where avenue i meets street j. One extra ring
of lattice lines outside the grid bounds the outer blocks, so every street has buildings on both sides.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxrl_vlm.envs.virl.city import geo
from jaxrl_vlm.envs.virl.city.names import place_names
from jaxrl_vlm.envs.virl.city.signs import sign_texture
from jaxrl_vlm.envs.virl.city.styles import CityStyle

Node = tuple[int, int]
PANO_SPACING_M = 10.0
NODE_JITTER_M = 2.0
SIGN_BOTTOM_M = 3.3
SIGN_HEIGHT_M = 1.6
CORNER_PLACE_PROB = 0.45
MIDBLOCK_PLACE_PROB = 0.3
BUILDING_WIDTH_M = (7.0, 16.0)
POLE_CURB_OFFSET_M = 0.6
POLE_HEIGHT_M = 4.2
BLADE_HEIGHT_M = 0.5
BLADE_MAX_LENGTH_M = 3.0
BLADE_BOTTOMS_M = (3.0, 3.6)
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


@dataclasses.dataclass(frozen=True)
class Pano:
    """A street-view capture point (`xy` is its position in the city frame, from the rounded geocode).

    `segment_*` describe the street it lies on, for lane markings and crosswalks; panos at intersections draw
    neither, so for them these fields just name one adjacent street.
    """

    pano_id: str
    geocode: tuple[float, float]
    xy: tuple[float, float]
    rotation: float
    segment_start: tuple[float, float]
    segment_dir: tuple[float, float]
    segment_length: float
    at_intersection: bool


@dataclasses.dataclass(frozen=True)
class Place:
    """A named landmark; `xy`/`geocode` is the centre of its sign on the facade facing `segment`."""

    name: str
    types: tuple[str, ...]
    place_id: str
    xy: tuple[float, float]
    geocode: tuple[float, float]
    sign: int
    segment: tuple[Node, Node]
    segment_fraction: float
    street: str
    corner_of: Node | None


@dataclasses.dataclass(frozen=True)
class Walls:
    """Building facades as 2-D wall segments (S of them), with everything the renderer needs.

    p0, p1: float64[S, 2] wall ends (the block is on the left of p0->p1, so p0->p1 reads left-to-right
    from the street). height, floor_height: float32[S]. colour: uint8[S, 3]. window_phase: float32[S] offset of
    the window grid along the wall. sign: int32[S] index of the sign texture (-1 if none). sign_rect: float32[S, 4]
    (s0, s1, z0, z1) of the sign in metres along the wall from p0 and above ground. facade_extent: float32[S, 2]
    where the whole block side containing the wall starts and ends, in metres along the wall from p0.
    """

    p0: np.ndarray
    p1: np.ndarray
    height: np.ndarray
    floor_height: np.ndarray
    colour: np.ndarray
    window_phase: np.ndarray
    sign: np.ndarray
    sign_rect: np.ndarray
    facade_extent: np.ndarray


@dataclasses.dataclass(frozen=True)
class StreetSigns:
    """Street-name blades on one pole per intersection (P poles, B = 2P blades, one per crossing street).

    pole_xy: float64[P, 2]. p0, p1: float64[B, 2] blade ends (text reads p0 -> p1 from the side right of
    p0 -> p1, and is mirrored back so that it also reads left-to-right from the other side). z: float32[B, 2]
    bottom and top above ground. texture: int32[B] index into City.signs.
    """

    pole_xy: np.ndarray
    p0: np.ndarray
    p1: np.ndarray
    z: np.ndarray
    texture: np.ndarray


@dataclasses.dataclass(frozen=True)
class City:
    """A generated city. `segments` maps an ordered node pair (a < b) to its pano indices from a to b."""

    style: CityStyle
    seed: int
    origin: tuple[float, float]
    nx: int
    ny: int
    node_xy: np.ndarray                      # float64[nx, ny, 2]
    node_pano: dict[Node, int]
    segments: dict[tuple[Node, Node], list[int]]
    panos: list[Pano]
    walls: Walls
    places: list[Place]
    signs: list[np.ndarray]                  # uint8[64, w_k, 3] textures (shop signs, then street blades)
    sign_background: list[tuple[int, int, int]]
    street_signs: StreetSigns
    street_landmarks: dict[Node, dict[str, Place]]   # node -> {street name: landmark at that node's pole}

    def pano_mapping(self) -> dict[tuple[float, float], str]:
        """{(lat, lng): pano_id} for every pano of the city (the gps_pano_mapping.pkl content)."""
        return {p.geocode: p.pano_id for p in self.panos}


def street_name(style: CityStyle, a: Node, b: Node) -> str:
    """Name of the street through adjacent intersections a and b (avenue i or cross street j)."""
    if a[0] == b[0]:
        return style.avenue_names[a[0] % len(style.avenue_names)]
    return style.street_names[a[1] % len(style.street_names)]


def random_id(rng: np.random.Generator, length: int = 22) -> str:
    """A Google-like identifier of `length` URL-safe characters."""
    return "".join(_ID_ALPHABET[rng.integers(0, len(_ID_ALPHABET), size=length)].tolist())


def _lattice(style: CityStyle, nx: int, ny: int, rng: np.random.Generator) -> np.ndarray:
    """float64[nx+2, ny+2, 2] lattice points (inner grid plus one outer ring), irregular spacing and jitter."""
    theta = math.radians(style.grid_rotation)
    avenue_dir = np.array([math.sin(theta), math.cos(theta)])
    street_dir = np.array([math.cos(theta), -math.sin(theta)])
    gaps_i = style.block_size[1] * rng.uniform(0.85, 1.15, size=nx + 1)
    gaps_j = style.block_size[0] * rng.uniform(0.85, 1.15, size=ny + 1)
    pos_i = np.concatenate([[0.0], np.cumsum(gaps_i)])
    pos_j = np.concatenate([[0.0], np.cumsum(gaps_j)])
    pos_i -= pos_i.mean()
    pos_j -= pos_j.mean()
    pts = pos_i[:, None, None] * street_dir + pos_j[None, :, None] * avenue_dir
    return pts + rng.uniform(-NODE_JITTER_M, NODE_JITTER_M, size=pts.shape)


def _inset_quad(corners: np.ndarray, inset: float) -> np.ndarray:
    """Counter-clockwise quadrilateral float[4, 2] moved inwards by `inset` metres on every side."""
    d = np.roll(corners, -1, axis=0) - corners
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    normal_in = np.stack([-d[:, 1], d[:, 0]], axis=1)
    base = corners + inset * normal_in
    out = np.empty_like(corners)
    for k in range(4):
        a, da = base[k - 1], d[k - 1]
        b, db = base[k], d[k]
        t = np.linalg.solve(np.stack([da, -db], axis=1), b - a)[0]
        out[k] = a + t * da
    return out


def _split_facade(rng: np.random.Generator, length: float) -> np.ndarray:
    """float64[n+1] fractions in [0, 1] splitting a block side of `length` metres into n building fronts of
    BUILDING_WIDTH_M[0]..[1] metres (the last one absorbs the remainder; a short side is one building)."""
    lo, hi = BUILDING_WIDTH_M
    widths: list[float] = []
    while sum(widths) < length - lo:
        widths.append(float(rng.uniform(lo, hi)))
    widths = widths or [length]
    widths[-1] += length - sum(widths)
    return np.concatenate([[0.0], np.cumsum(widths)]) / length


def _make_panos(style: CityStyle, nx: int, ny: int, node_xy: np.ndarray, origin: tuple[float, float],
                rng: np.random.Generator) -> tuple[list[Pano], dict[Node, int], dict[tuple[Node, Node], list[int]]]:
    panos: list[Pano] = []
    node_pano: dict[Node, int] = {}

    def add(xy: np.ndarray, seg_start: np.ndarray, seg_dir: np.ndarray, seg_len: float, at_node: bool) -> int:
        geocode = tuple(float(v) for v in geo.enu_to_latlng(xy, origin))
        xy_r = geo.latlng_to_enu(np.array(geocode), origin)
        panos.append(Pano(pano_id=random_id(rng), geocode=geocode, xy=(float(xy_r[0]), float(xy_r[1])),
                          rotation=round(float(rng.uniform(0.0, 360.0)), 2),
                          segment_start=(float(seg_start[0]), float(seg_start[1])),
                          segment_dir=(float(seg_dir[0]), float(seg_dir[1])), segment_length=float(seg_len),
                          at_intersection=at_node))
        return len(panos) - 1

    for i in range(nx):
        for j in range(ny):
            nb = (i, j + 1) if j + 1 < ny else (i, j - 1)
            d = node_xy[nb] - node_xy[i, j]
            node_pano[(i, j)] = add(node_xy[i, j], node_xy[i, j], d / np.linalg.norm(d), 0.0, True)
    segments: dict[tuple[Node, Node], list[int]] = {}
    for i in range(nx):
        for j in range(ny):
            for b in ((i + 1, j), (i, j + 1)):
                if b[0] >= nx or b[1] >= ny:
                    continue
                pa, pb = node_xy[i, j], node_xy[b]
                length = float(np.linalg.norm(pb - pa))
                n = max(2, int(round(length / PANO_SPACING_M)))
                u = (pb - pa) / length
                ids = [node_pano[(i, j)]]
                ids += [add(pa + (k / n) * (pb - pa), pa, u, length, False) for k in range(1, n)]
                ids.append(node_pano[b])
                segments[((i, j), b)] = ids
    return panos, node_pano, segments


def _attach_places(style: CityStyle, rng: np.random.Generator, walls: dict[str, list],
                   place_slots: list[tuple[int, tuple[Node, Node], Node | None]], node_xy: np.ndarray,
                   origin: tuple[float, float]) -> tuple[list[Place], list[np.ndarray], list[tuple[int, int, int]]]:
    """Name a place for every slot, hang its sign (centred on the wall, name texture) and locate it."""
    names = place_names(rng, len(place_slots))
    places: list[Place] = []
    signs: list[np.ndarray] = []
    sign_background: list[tuple[int, int, int]] = []
    for (wall_index, segment, corner), (name, types) in zip(place_slots, names):
        colour_idx = int(rng.integers(len(style.sign_backgrounds)))
        texture = sign_texture(name, style.sign_backgrounds[colour_idx], style.sign_text[colour_idx])
        p0, p1 = walls["p0"][wall_index], walls["p1"][wall_index]
        wall_len = float(np.linalg.norm(p1 - p0))
        aspect = texture.shape[1] / texture.shape[0]
        sign_w = min(SIGN_HEIGHT_M * aspect, wall_len - 1.0)
        sign_h = sign_w / aspect
        s0 = (wall_len - sign_w) / 2
        walls["sign"][wall_index] = len(signs)
        walls["sign_rect"][wall_index] = (s0, s0 + sign_w, SIGN_BOTTOM_M, SIGN_BOTTOM_M + sign_h)
        centre = p0 + (p1 - p0) * 0.5
        geocode = tuple(float(v) for v in geo.enu_to_latlng(centre, origin))
        a_xy, b_xy = node_xy[segment[0]], node_xy[segment[1]]
        frac = float(np.clip(np.dot(centre - a_xy, b_xy - a_xy) / np.dot(b_xy - a_xy, b_xy - a_xy), 0.0, 1.0))
        places.append(Place(name=name, types=types, place_id="ChIJ" + random_id(rng, 23),
                            xy=(float(centre[0]), float(centre[1])),
                            geocode=geocode, sign=len(signs), segment=segment, segment_fraction=frac,
                            street=street_name(style, *segment), corner_of=corner))
        signs.append(texture)
        sign_background.append(style.sign_backgrounds[colour_idx])
    return places, signs, sign_background


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _street_signs(style: CityStyle, rng: np.random.Generator, node_xy: np.ndarray, origin: tuple[float, float],
                  signs: list[np.ndarray], sign_background: list[tuple[int, int, int]]
                  ) -> tuple[StreetSigns, dict[Node, dict[str, Place]]]:
    """One pole per intersection on a random corner of the sidewalk, carrying a blade for each crossing street;
    appends the blade textures to `signs`. Returns the signs and the street landmarks at each pole."""
    nx, ny = node_xy.shape[:2]
    poles, p0s, p1s, zs, textures = [], [], [], [], []
    landmarks: dict[Node, dict[str, Place]] = {}
    for i in range(nx):
        for j in range(ny):
            node = (i, j)
            along_avenue = _unit(node_xy[i, j + 1] - node_xy[i, j]) if j + 1 < ny else _unit(
                node_xy[i, j] - node_xy[i, j - 1])
            along_street = _unit(node_xy[i + 1, j] - node_xy[i, j]) if i + 1 < nx else _unit(
                node_xy[i, j] - node_xy[i - 1, j])
            offset = style.road_width / 2 + POLE_CURB_OFFSET_M
            sx, sy = rng.choice([-1.0, 1.0], size=2)
            pole = node_xy[i, j] + offset * (sx * along_street + sy * along_avenue)
            geocode = tuple(float(v) for v in geo.enu_to_latlng(pole, origin))
            poles.append(pole)
            landmarks[node] = {}
            avenue_next = (i, j + 1) if j + 1 < ny else (i, j - 1)
            street_next = (i + 1, j) if i + 1 < nx else (i - 1, j)
            bottoms = rng.permutation(BLADE_BOTTOMS_M)
            for direction, nxt, bottom in ((along_avenue, avenue_next, bottoms[0]),
                                           (along_street, street_next, bottoms[1])):
                name = street_name(style, node, nxt)
                texture = sign_texture(name, style.street_sign[0], style.street_sign[1])
                aspect = texture.shape[1] / texture.shape[0]
                length = min(BLADE_HEIGHT_M * aspect, BLADE_MAX_LENGTH_M)
                p0s.append(pole - 0.5 * length * direction)
                p1s.append(pole + 0.5 * length * direction)
                zs.append((bottom, bottom + length / aspect))
                textures.append(len(signs))
                landmarks[node][name] = Place(name=name, types=("route",), place_id="ChIJ" + random_id(rng, 23),
                                              xy=(float(pole[0]), float(pole[1])), geocode=geocode, sign=len(signs),
                                              segment=(node, nxt) if node < nxt else (nxt, node),
                                              segment_fraction=0.0 if node < nxt else 1.0, street=name,
                                              corner_of=node)
                signs.append(texture)
                sign_background.append(style.street_sign[0])
    street_signs = StreetSigns(pole_xy=np.array(poles, np.float64), p0=np.array(p0s, np.float64),
                               p1=np.array(p1s, np.float64), z=np.array(zs, np.float32),
                               texture=np.array(textures, np.int32))
    return street_signs, landmarks


def generate_city(style: CityStyle, seed: int, nx: int = 6, ny: int = 6) -> City:
    """Build a deterministic city of nx x ny intersections in `style` from `seed` (no rendering happens here)."""
    if nx < 2 or ny < 2:
        raise ValueError(f"a city needs at least 2x2 intersections, got nx={nx}, ny={ny}")
    rng = np.random.default_rng([seed, nx, ny])
    lattice = _lattice(style, nx, ny, rng)
    node_xy = lattice[1:-1, 1:-1]
    origin = tuple(float(v) for v in geo.enu_to_latlng(np.zeros(2), style.origin, decimals=6))
    panos, node_pano, segments = _make_panos(style, nx, ny, node_xy, origin, rng)
    inset = style.road_width / 2 + style.sidewalk_width

    walls: dict[str, list] = {k: [] for k in ("p0", "p1", "height", "floor_height", "colour", "window_phase",
                                               "sign", "sign_rect", "facade_extent")}
    place_slots: list[tuple[int, tuple[Node, Node], Node | None]] = []   # (wall index, segment, corner node)
    for ci in range(nx + 1):
        for cj in range(ny + 1):
            ext = [(ci, cj), (ci + 1, cj), (ci + 1, cj + 1), (ci, cj + 1)]
            quad = _inset_quad(np.array([lattice[e] for e in ext]), inset)
            for k in range(4):
                a_ext, b_ext = ext[k], ext[(k + 1) % 4]
                a_in, b_in = (a_ext[0] - 1, a_ext[1] - 1), (b_ext[0] - 1, b_ext[1] - 1)
                faces = all(0 <= n[0] < nx and 0 <= n[1] < ny for n in (a_in, b_in))
                q0, q1 = quad[k], quad[(k + 1) % 4]
                length = float(np.linalg.norm(q1 - q0))
                edges = _split_facade(rng, length)
                n_buildings = len(edges) - 1
                for b in range(n_buildings):
                    floors = int(rng.integers(style.floors[0], style.floors[1] + 1))
                    walls["p0"].append(q0 + edges[b] * (q1 - q0))
                    walls["p1"].append(q0 + edges[b + 1] * (q1 - q0))
                    walls["height"].append(floors * style.floor_height + 0.6)
                    walls["floor_height"].append(style.floor_height * float(rng.uniform(0.95, 1.05)))
                    walls["colour"].append(style.facade_palette[int(rng.integers(len(style.facade_palette)))])
                    walls["window_phase"].append(float(rng.uniform(0.0, style.window_spacing)))
                    walls["sign"].append(-1)
                    walls["sign_rect"].append((0.0, 0.0, 0.0, 0.0))
                    walls["facade_extent"].append((-edges[b] * length, (1.0 - edges[b]) * length))
                    if not faces:
                        continue
                    segment = (a_in, b_in) if a_in < b_in else (b_in, a_in)
                    wall_index = len(walls["p0"]) - 1
                    if b == 0 and rng.random() < CORNER_PLACE_PROB:
                        place_slots.append((wall_index, segment, a_in))
                    elif b == n_buildings - 1 and n_buildings > 1 and rng.random() < CORNER_PLACE_PROB:
                        place_slots.append((wall_index, segment, b_in))
                    elif 0 < b < n_buildings - 1 and rng.random() < MIDBLOCK_PLACE_PROB:
                        place_slots.append((wall_index, segment, None))

    places, signs, sign_background = _attach_places(style, rng, walls, place_slots, node_xy, origin)
    street_signs, street_landmarks = _street_signs(style, rng, node_xy, origin, signs, sign_background)
    wall_arrays = Walls(
        p0=np.array(walls["p0"], np.float64), p1=np.array(walls["p1"], np.float64),
        height=np.array(walls["height"], np.float32), floor_height=np.array(walls["floor_height"], np.float32),
        colour=np.array(walls["colour"], np.uint8), window_phase=np.array(walls["window_phase"], np.float32),
        sign=np.array(walls["sign"], np.int32), sign_rect=np.array(walls["sign_rect"], np.float32),
        facade_extent=np.array(walls["facade_extent"], np.float32))
    return City(style=style, seed=seed, origin=origin, nx=nx, ny=ny, node_xy=node_xy, node_pano=node_pano,
                segments=segments, panos=panos, walls=wall_arrays, places=places, signs=signs,
                sign_background=sign_background, street_signs=street_signs, street_landmarks=street_landmarks)
