"""Routes through a synthetic city, written as V-IRL route dicts (spec §1.3) with `milestone_info` blocks.

A route starts at the street point in front of one place and ends at the street point in front of another. Its
key points (`route_results.geocode_list`) are the intersections where the walker turns, then the destination, as in
Google Directions steps. Every key point is the exact geocode of a pano. The landmark of a turn is a place within
LANDMARK_RADIUS_M of the intersection or (as "Prince St is on your front" in V-IRL data) the street turned into,
located at the intersection's street-name pole; "No landmark nearby" when no place is that close.
"""
from __future__ import annotations

import heapq
import json
import math
from typing import Any

import numpy as np

from jaxrl_vlm.envs.virl.city import geo
from jaxrl_vlm.envs.virl.city.layout import City, Node, Place, random_id, street_name

TURN_PENALTY_M = (0.0, 60.0)      # per-route range: low penalties give staircase routes with more turns
EDGE_NOISE_M = 40.0
STREET_LANDMARK_PROB = 0.3         # share of turns described by the name of the street turned into
LANDMARK_RADIUS_M = 25.0           # places this close to a turn's intersection can describe it
WALK_SPEED_MPS = 1.3


def milestone_block(index: int, landmark_text: str, distance_m: float, heading_deg: int) -> str:
    """One `milestone_info` block, byte-for-byte in the format of the real V-IRL files."""
    return ("\n{\n"
            f'"intersection_idx": "{index}",\n'
            f'"landmarks": "{landmark_text}",\n'
            f'"distance": "{int(round(distance_m))} meters",\n'
            '"human_heading": "0",\n'
            f'"to_next_intersection_heading": "{heading_deg} ({geo.compass_word(heading_deg)})",\n'
            "}\n")


def relation_text(origin: tuple[float, float], heading_deg: int, target: tuple[float, float]) -> str:
    """8-way word for where geocode `target` lies seen from `origin` while facing compass `heading_deg`."""
    return geo.relative_word(geo.initial_bearing(origin, target) - heading_deg)


def _street_pano(city: City, place: Place) -> int:
    """Index of the pano in front of `place`, strictly between the two intersections of its street."""
    ids = city.segments[place.segment]
    k = int(np.clip(round(place.segment_fraction * (len(ids) - 1)), 1, len(ids) - 2))
    return ids[k]


def _intersection_path(city: City, rng: np.random.Generator, start: Place, dest: Place) -> list[Node] | None:
    """Intersections visited from the start street to the destination street, by Dijkstra with a random turn
    penalty and randomly perturbed street lengths (so that equally short grid routes differ in shape).

    States are (node, arrival direction). The start and destination streets cannot be used between intersections,
    so the walker never turns back and never walks past the destination.
    """
    blocked = {start.segment, dest.segment}
    weights = {seg: float(np.linalg.norm(city.node_xy[seg[1]] - city.node_xy[seg[0]]))
               + float(rng.uniform(0, EDGE_NOISE_M)) for seg in city.segments if seg not in blocked}
    turn_penalty = float(rng.uniform(*TURN_PENALTY_M))
    a, b = start.segment
    heap: list[tuple[float, Node, tuple[int, int], tuple]] = []
    for exit_node, other in ((a, b), (b, a)):
        direction = (exit_node[0] - other[0], exit_node[1] - other[1])
        heapq.heappush(heap, (float(rng.uniform(0, 1)), exit_node, direction, (exit_node,)))
    best: dict[tuple[Node, tuple[int, int]], float] = {}
    c, d = dest.segment
    while heap:
        cost, node, direction, path = heapq.heappop(heap)
        if best.get((node, direction), math.inf) <= cost:
            continue
        best[(node, direction)] = cost
        if node in (c, d):
            return list(path)
        for step in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            if step == (-direction[0], -direction[1]):
                continue
            nxt = (node[0] + step[0], node[1] + step[1])
            seg = (node, nxt) if node < nxt else (nxt, node)
            if seg not in weights:
                continue
            turn = turn_penalty if step != direction else 0.0
            heapq.heappush(heap, (cost + weights[seg] + turn, nxt, step, path + (nxt,)))
    return None


def _turns(start: Place, dest: Place, path: list[Node]) -> list[tuple[Node, Node]]:
    """(intersection, next intersection or destination-street node) for each node of `path` where the walking
    direction changes."""
    a, b = start.segment
    first_prev = b if path[0] == a else a
    c, d = dest.segment
    last_next = d if path[-1] == c else c
    full = [first_prev] + path + [last_next]
    keep = []
    for k in range(1, len(full) - 1):
        before = (full[k][0] - full[k - 1][0], full[k][1] - full[k - 1][1])
        after = (full[k + 1][0] - full[k][0], full[k + 1][1] - full[k][1])
        if before != after:
            keep.append((full[k], full[k + 1]))
    return keep


def _places_near(city: City, node: Node, exclude: tuple[Place, ...]) -> list[Place]:
    """Places whose sign is within LANDMARK_RADIUS_M of intersection `node`, other than `exclude`."""
    centre = city.node_xy[node]
    return [p for p in city.places if p not in exclude
            and math.dist(p.xy, (float(centre[0]), float(centre[1]))) < LANDMARK_RADIUS_M]


def _place_dict(place: Place, rng: np.random.Generator, distance: float, heading: float) -> dict[str, Any]:
    """A Google-Places-like dict of `place` (rating, reviews, photo reference etc. are random filler)."""
    return {
        "name": place.name,
        "geocode": [place.geocode[0], place.geocode[1]],
        "rating": round(float(rng.uniform(3.5, 5.0)), 1),
        "place_id": place.place_id,
        "distance": int(round(distance)),
        "n_reviews": int(rng.integers(5, 2000)),
        "heading": int(round(heading)) % 360,
        "photo_reference": random_id(rng, 40),
        "place_types": list(place.types) + ["point_of_interest", "establishment"],
        "plus_code": random_id(rng, 8).upper() + "+" + random_id(rng, 2).upper(),
        "vicinity": f"{int(rng.integers(1, 400))} {place.street}",
    }


def make_route(city: City, rng: np.random.Generator, start: Place, dest: Place) -> dict[str, Any] | None:
    """The V-IRL route dict from place `start` to place `dest`, or None when they cannot be joined."""
    if start.segment == dest.segment:
        return None
    path = _intersection_path(city, rng, start, dest)
    if path is None:
        return None
    start_pano = city.panos[_street_pano(city, start)]
    dest_pano = city.panos[_street_pano(city, dest)]
    turns = _turns(start, dest, path)
    keys = [city.panos[city.node_pano[n]].geocode for n, _ in turns] + [dest_pano.geocode]

    blocks, steps, landmark_list, distances, prev = [], [], [], [], start_pano.geocode
    for j, key in enumerate(keys):
        heading = int(round(geo.initial_bearing(prev, key))) % 360
        distance = geo.haversine_m(prev, key)
        distances.append(int(round(distance)))
        if j == len(keys) - 1:
            text = f"The destination {dest.name} is on your {relation_text(key, heading, dest.geocode)}"
        else:
            node, nxt = turns[j]
            options = _places_near(city, node, exclude=(start, dest))
            if rng.random() < STREET_LANDMARK_PROB:
                landmark = city.street_landmarks[node][street_name(city.style, node, nxt)]
            else:
                landmark = options[int(rng.integers(len(options)))] if options else None
            if landmark is None:
                text = "No landmark nearby"
                landmark_list.append(None)
            else:
                rel = relation_text(key, heading, landmark.geocode)
                text = f"{landmark.name} is on your {rel}"
                entry = _place_dict(landmark, rng, geo.haversine_m(key, landmark.geocode),
                                    geo.initial_bearing(key, landmark.geocode))
                entry.update(spatial_relation=rel, expression=text)
                landmark_list.append(entry)
        blocks.append(milestone_block(j + 1, text, distance, heading))
        steps.append(f"Head <b>{geo.compass_word(heading)}</b> for {int(round(distance))} m")
        prev = key

    start_dict = _place_dict(start, rng, 0.0, 0.0)
    start_dict["relocated_geocode"] = [start_pano.geocode[0], start_pano.geocode[1]]
    total = float(sum(distances))
    dest_dict = _place_dict(dest, rng, total, geo.initial_bearing(start_pano.geocode, dest.geocode))
    dest_dict["relocated_geocode"] = [dest_pano.geocode[0], dest_pano.geocode[1]]
    return {
        "start_place": start_dict,
        "dest_place": dest_dict,
        "init_heading": 0,
        "instruction": (f"Starting at {start.name}, follow the route for about {int(total)} meters "
                        f"until you reach {dest.name}."),
        "route_results": {
            "geocode_list": [[g[0], g[1]] for g in keys],
            "landmark_list": landmark_list,
            "distance_list": distances,
            "time_list": [int(round(d / WALK_SPEED_MPS)) for d in distances],
            "distance": int(round(total)),
            "time": int(round(total / WALK_SPEED_MPS)),
            "n_landmarks": sum(x is not None for x in landmark_list),
            "instructions": steps,
            "polyline": [[start_pano.geocode[0], start_pano.geocode[1]]] + [[g[0], g[1]] for g in keys],
        },
        "milestone_info": "".join(blocks),
    }


def make_routes(city: City, n_routes: int, seed: int) -> list[dict[str, Any]]:
    """`n_routes` distinct routes between random places of `city`, deterministic in `seed`."""
    if len(city.places) < 2:
        raise ValueError(f"city {city.style.name!r} (seed {city.seed}) has {len(city.places)} places; need >= 2")
    rng = np.random.default_rng([seed, 7919])
    routes, seen = [], set()
    for _ in range(max(100, 50 * n_routes)):
        if len(routes) == n_routes:
            break
        i, j = rng.choice(len(city.places), size=2, replace=False).tolist()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        route = make_route(city, rng, city.places[i], city.places[j])
        if route is not None:
            routes.append(route)
    if len(routes) < n_routes:
        raise ValueError(f"could only build {len(routes)} of {n_routes} distinct routes in city "
                         f"{city.style.name!r}; use a larger city")
    return routes


def route_infos_json(routes: list[dict[str, Any]]) -> str:
    """The route_infos.json text: `[route_list, route_num]` with route_num = number of routes."""
    return json.dumps([routes, len(routes)], indent=1)
