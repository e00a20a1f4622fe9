"""Hand-written V-IRL route directories in the real on-disk format (spec virl.md §1.3), for the tests.

`write_moma_route` reproduces the spec's worked example (§1.11): start, a 16 m leg heading 298 to Prince St, a 100 m
leg heading 212 to Aritzia (4 panos along it), a 50 m leg heading 120 to the MoMA Design Store (1 pano along it).
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

MOMA_MILESTONES = (
    ("1", "Prince St is on your front", "16 meters", "298 (northwest)"),
    ("2", "Aritzia is on your left front", "100 meters", "212 (southwest)"),
    ("3", "The destination MoMA Design Store is on your left", "50 meters", "120 (southeast)"),
)


def offset(p: tuple[float, float], metres: float, bearing_deg: float) -> tuple[float, float]:
    """Point `metres` from p along a compass bearing (local flat-earth approximation; exact values do not matter)."""
    b = math.radians(bearing_deg)
    dlat = metres * math.cos(b) / 111_320.0
    dlng = metres * math.sin(b) / (111_320.0 * math.cos(math.radians(p[0])))
    return (p[0] + dlat, p[1] + dlng)


def milestone_info(blocks) -> str:
    """A milestone_info string in the real V-IRL layout."""
    out = ""
    for idx, landmark, distance, heading in blocks:
        out += ("\n{\n" f'"intersection_idx": "{idx}",\n"landmarks": "{landmark}",\n"distance": "{distance}",\n'
                f'"human_heading": "0",\n"to_next_intersection_heading": "{heading}",\n' "}\n")
    return out


def write_route_dir(directory: Path, routes: list[dict], mapping: dict, skip_files: tuple[str, ...] = (),
                    pano_image=None) -> Path:
    """Write route_infos.json, gps_pano_mapping.pkl and street_views/ (jpgs + metadata) for every mapped pano;
    pano_image(i, pano_id) -> PIL image (default: a 16 x 8 uniform colour per pano). A given image is written
    losslessly (PNG data under the .jpg name, which PIL reads by content), so renders of it are exact."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "route_infos.json").write_text(json.dumps([routes, len(routes)]))
    with open(directory / "gps_pano_mapping.pkl", "wb") as fh:
        pickle.dump(mapping, fh)
    views = directory / "street_views"
    views.mkdir(exist_ok=True)
    for i, pano in enumerate(mapping.values()):
        if f"{pano}.jpg" not in skip_files and pano_image is not None:
            pano_image(i, pano).save(views / f"{pano}.jpg", format="PNG")
        elif f"{pano}.jpg" not in skip_files:
            Image.new("RGB", (16, 8), ((37 * i) % 256, 90, 160)).save(views / f"{pano}.jpg")
        if f"{pano}.metadata.json" not in skip_files:
            (views / f"{pano}.metadata.json").write_text(json.dumps({"rotation": float(i * 10 % 360), "pano_id": pano}))
    return directory


def moma_route(init_heading: int = 137, start=(40.7250, -73.9990), prefix: str = "m"):
    """(route dict, mapping) of the MoMA example: the start is moved 3 m off its pano to exercise relocation."""
    s = start
    g0 = offset(s, 16, 298)
    g1 = offset(g0, 100, 212)
    dest = offset(g1, 50, 120)
    mapping = {s: f"{prefix}_start", g0: f"{prefix}_prince", g1: f"{prefix}_aritzia", dest: f"{prefix}_moma"}
    for k in range(1, 5):
        mapping[offset(g0, 20 * k, 212)] = f"{prefix}_leg1_{k}"
    mapping[offset(g1, 25, 120)] = f"{prefix}_leg2_1"
    route = {
        "start_place": {"name": "Start", "relocated_geocode": list(offset(s, 3, 45))},
        "init_heading": init_heading,
        "route_results": {"geocode_list": [list(g0), list(g1), list(dest)], "landmark_list": [None, None],
                          "polyline": "", "distance": 166},
        "dest_place": {"name": "MoMA Design Store", "geocode": list(dest)},
        "milestone_info": milestone_info(MOMA_MILESTONES),
        "instruction": "unused",
    }
    return route, mapping


def straight_route(prefix: str, start, bearings_lengths, landmarks, init_heading: int = 0):
    """(route dict, mapping) of a route with legs (bearing, metres) and a pano every 20 m along each leg."""
    directions = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
    mapping = {start: f"{prefix}_s"}
    points, p = [], start
    for j, (bearing, length) in enumerate(bearings_lengths):
        for k in range(1, int(length // 20)):
            mapping[offset(p, 20 * k, bearing)] = f"{prefix}_{j}_{k}"
        p = offset(p, length, bearing)
        mapping[p] = f"{prefix}_g{j}"
        points.append(p)
    blocks = [(str(j + 1), landmarks[j], f"{length} meters", f"{bearing} ({directions[round(bearing / 45) % 8]})")
              for j, (bearing, length) in enumerate(bearings_lengths)]
    route = {"start_place": {"relocated_geocode": list(start)}, "init_heading": init_heading,
             "route_results": {"geocode_list": [list(x) for x in points], "landmark_list": [None] * (len(points) - 1)},
             "dest_place": {"name": "dest"}, "milestone_info": milestone_info(blocks)}
    return route, mapping


SMALL_CITY_DESTINATIONS = ("m_moma", "a_g2", "b_g0")  # the pano of each route's destination, in route order


def write_small_city(directory: Path, pano_image=None) -> Path:
    """Three routes: MoMA (fixed heading 137), and two with a random initial heading (init_heading 0); pano_image as
    in `write_route_dir`."""
    r0, m0 = moma_route()
    r1, m1 = straight_route("a", (40.7300, -73.9900), [(90, 120), (0, 60), (270, 45)],
                            ["Cafe A is on your right", "No landmark nearby",
                             "The destination Shop B is on your left front"])
    r2, m2 = straight_route("b", (40.7400, -73.9800), [(180, 80)], ["The destination Park C is on your behind"])
    return write_route_dir(directory, [r0, r1, r2], {**m0, **m1, **m2}, pano_image=pano_image)
