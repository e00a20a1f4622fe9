"""Synthetic V-IRL cities: on-disk format (spec §1.3), geometry of routes and milestones, determinism, styles.

The parser, bearings and direction words used for checking are written here independently of the generator.
"""
import json
import math
import os
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from jaxrl_vlm.envs.virl.city import STYLES, generate_city, get_style, make_routes
from jaxrl_vlm.envs.virl.make_city import main, write_city
from jaxrl_vlm.envs.virl.panorama import render_panorama

SPEC_BLOCK = ('\n{\n"intersection_idx": "1",\n"landmarks": "Prince St is on your front",\n"distance": "16 meters",\n'
              '"human_heading": "0",\n"to_next_intersection_heading": "298 (northwest)",\n}\n')
COMPASS = ["north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest"]
RELATIONS = ["front", "right front", "right", "right behind", "behind", "left behind", "left", "left front"]
BLOCK_RE = re.compile(r'\n\{\n"intersection_idx": "(\d+)",\n"landmarks": "([^"\n]+)",\n"distance": "(\d+) meters",\n'
                      r'"human_heading": "0",\n"to_next_intersection_heading": "(\d+) \((\w+)\)",\n\}\n')


def parse_navigation_string(text):
    """Spec §1.3 parser: split on '}', strip '{', split lines on the first ':', strip quotes and trailing commas."""
    blocks = []
    for piece in text.split("}"):
        piece = piece.strip()
        if not piece:
            continue
        if piece.startswith("{"):
            piece = piece[1:]
        block = {}
        for line in piece.split("\n"):
            line = line.strip()
            if not line:
                continue
            if line.endswith(","):
                line = line[:-1]
            if ":" not in line:
                continue
            key, value = line.split(":", 1)
            block[key.strip().strip("'\"")] = value.strip().strip("'\"")
        if block:
            blocks.append(block)
    return blocks


def flat_bearing(a, b):
    """Bearing a->b in degrees on a local flat-earth (equirectangular) approximation."""
    dy = math.radians(b[0] - a[0])
    dx = math.radians(b[1] - a[1]) * math.cos(math.radians((a[0] + b[0]) / 2))
    return math.degrees(math.atan2(dx, dy)) % 360


def haversine(a, b):
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b[1] - a[1]) / 2) ** 2
    return 2 * 6371000 * math.asin(math.sqrt(h))


def sector(angle, names):
    return names[int(((angle % 360) + 22.5) // 45) % 8]


def near_boundary(angle, tol=1.0):
    return abs(((angle % 45) - 22.5)) < tol


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("virl_city")
    main(["--out", str(out), "--seed", "3", "--routes", "8", "--style", "soho,lagos", "--pano-width", "64",
          "--grid", "3", "3"])
    with open(out / "route_infos.json") as f:
        routes, route_num = json.load(f)
    with open(out / "gps_pano_mapping.pkl", "rb") as f:
        mapping = pickle.load(f)
    return out, routes, route_num, mapping


def nearest_key(mapping_keys, point):
    d = [haversine(k, point) for k in mapping_keys]
    k = int(np.argmin(d))
    return mapping_keys[k], d[k]


def test_parser_reads_spec_example():
    blocks = parse_navigation_string(SPEC_BLOCK * 2)
    assert len(blocks) == 2
    assert blocks[0] == {"intersection_idx": "1", "landmarks": "Prince St is on your front", "distance": "16 meters",
                         "human_heading": "0", "to_next_intersection_heading": "298 (northwest)"}
    assert BLOCK_RE.fullmatch(SPEC_BLOCK)


def test_files_and_format(city_dir):
    out, routes, route_num, mapping = city_dir
    assert len(routes) == 8 and route_num == 8
    assert {r["city"] for r in routes} == {"soho", "lagos"}
    assert all(isinstance(k, tuple) and len(k) == 2 and all(isinstance(v, float) for v in k) for k in mapping)
    assert len(set(mapping.values())) == len(mapping)
    files = set(os.listdir(out / "street_views"))
    for pano in mapping.values():
        assert f"{pano}.jpg" in files
        meta = json.loads((out / "street_views" / f"{pano}.metadata.json").read_text())
        assert 0.0 <= float(meta["rotation"]) < 360.0
    pano = next(iter(mapping.values()))
    with Image.open(out / "street_views" / f"{pano}.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 32)
    for r in routes:
        assert r["init_heading"] == 0
        for key in ("name", "geocode", "place_id", "place_types", "vicinity"):
            assert key in r["dest_place"] and key in r["start_place"]
        k = len(r["route_results"]["geocode_list"])
        assert len(r["route_results"]["landmark_list"]) == k - 1
        assert isinstance(r["milestone_info"], str)


def test_milestones_match_geometry(city_dir):
    _, routes, _, mapping = city_dir
    for r in routes:
        geocodes = [tuple(g) for g in r["route_results"]["geocode_list"]]
        start = tuple(r["start_place"]["relocated_geocode"])
        blocks = parse_navigation_string(r["milestone_info"])
        assert len(blocks) == len(geocodes) >= 1
        raw = BLOCK_RE.findall(r["milestone_info"])
        assert "".join(m.group(0) for m in BLOCK_RE.finditer(r["milestone_info"])) == r["milestone_info"]
        assert [int(m[0]) for m in raw] == list(range(1, len(geocodes) + 1))
        prev = start
        for j, (g, block) in enumerate(zip(geocodes, blocks)):
            deg_text, word = block["to_next_intersection_heading"].split(" ")
            deg = int(deg_text)
            true_bearing = flat_bearing(prev, g)
            assert abs((deg - true_bearing + 180) % 360 - 180) <= 1.0, (deg, true_bearing)
            assert word == f"({sector(deg, COMPASS)})"
            assert abs(int(block["distance"].split()[0]) - haversine(prev, g)) <= 1.0
            landmark = r["route_results"]["landmark_list"][j] if j < len(geocodes) - 1 else r["dest_place"]
            if landmark is None:
                assert block["landmarks"] == "No landmark nearby"
            else:
                rel_angle = flat_bearing(g, tuple(landmark["geocode"])) - deg
                prefix = "The destination " if j == len(geocodes) - 1 else ""
                expected = f"{prefix}{landmark['name']} is on your {sector(rel_angle, RELATIONS)}"
                assert block["landmarks"] == expected or near_boundary(rel_angle), (block["landmarks"], expected)
                assert haversine(g, tuple(landmark["geocode"])) < 40.0
            prev = g


def test_route_points_are_panos_and_interpolation_relocates(city_dir):
    _, routes, _, mapping = city_dir
    keys = list(mapping)
    for r in routes:
        start = tuple(r["start_place"]["relocated_geocode"])
        geocodes = [tuple(g) for g in r["route_results"]["geocode_list"]]
        assert start in mapping and all(g in mapping for g in geocodes)
        assert start not in geocodes
        prev = start
        for g in geocodes:
            leg = haversine(prev, g)
            assert leg > 5.0
            kept = 0
            for i in range(1, 5):
                q = tuple(np.array(prev) * (1 - i / 5) + np.array(g) * (i / 5))
                key, dist = nearest_key(keys, q)
                assert dist < 7.5, (q, dist)                 # a pano every ~10 m along the street
                kept += haversine(prev, key) > 8 and haversine(g, key) > 8
            if leg > 40.0:
                assert kept >= 2
            prev = g


def test_determinism_by_seed():
    style = get_style("milan")
    a, b, c = (generate_city(style, s, 3, 3) for s in (5, 5, 6))
    assert a.pano_mapping() == b.pano_mapping() and a.pano_mapping() != c.pano_mapping()
    assert make_routes(a, 3, 1) == make_routes(b, 3, 1)
    assert make_routes(a, 3, 1) != make_routes(a, 3, 2)
    np.testing.assert_array_equal(render_panorama(a, 4, 64), render_panorama(b, 4, 64))


def test_styles_have_distinct_colour_statistics():
    stats = {}
    for name in STYLES:
        city = generate_city(get_style(name), 0, 3, 3)
        pano = render_panorama(city, len(city.panos) // 2, 128).astype(np.float64)
        stats[name] = np.concatenate([pano[:16].mean(axis=(0, 1)), pano[16:32].mean(axis=(0, 1))])
    names = sorted(stats)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.linalg.norm(stats[a] - stats[b]) > 10.0, (a, b)


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="--routes"):
        write_city(str(tmp_path), 0, 0, ["soho"])
    with pytest.raises(ValueError, match="unknown city style"):
        get_style("atlantis")
    with pytest.raises(ValueError, match="2x2"):
        generate_city(get_style("soho"), 0, 1, 3)
    with pytest.raises(ValueError, match="pano_index"):
        render_panorama(generate_city(get_style("soho"), 0, 2, 2), 10_000, 32)
