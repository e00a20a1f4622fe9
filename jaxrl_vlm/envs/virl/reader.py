"""Reader of the V-IRL on-disk route format (spec virl.md §1.3).

A route directory holds `route_infos.json` (`[route_list, route_num]`), `gps_pano_mapping.pkl`
(`{(lat, lng): pano_id}`) and `street_views/{pano_id}.jpg` + `street_views/{pano_id}.metadata.json`.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from jaxrl_vlm.envs.virl.geo import haversine_m, unit_vectors

MAPPING_RADIUS_M = 20.0
DIRECTIONS = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
NO_LANDMARK_BLOCK = "No landmark nearby"


def parse_navigation_string(text: str) -> list[dict[str, str]]:
    """Blocks of a `milestone_info` string as string->string dicts (the reference `parse_navigation_string`)."""
    result = []
    for piece in text.split("}"):
        block = piece.strip().lstrip("{").strip()
        if not block:
            continue
        entry: dict[str, str] = {}
        for line in (ln.strip() for ln in block.split("\n")):
            if not line:
                continue
            line = line.rstrip(",")
            if ":" not in line:
                continue
            key, value = (part.strip() for part in line.split(":", 1))
            entry[key.strip("\"'")] = value.strip("\"'")
        if entry:
            result.append(entry)
    return result


@dataclasses.dataclass(frozen=True)
class Milestone:
    """One parsed `milestone_info` block: landmark text and the compass heading of the leg into it."""
    landmark: str
    heading_deg: int
    direction: str


@dataclasses.dataclass(frozen=True)
class Route:
    """The fields of one route dict that the environment reads."""
    index: int
    start: tuple[float, float]
    init_heading: int
    geocodes: tuple[tuple[float, float], ...]
    milestones: tuple[Milestone, ...]


def _parse_heading(value: str, where: str) -> tuple[int, str]:
    """'298 (northwest)' -> (298, 'northwest')."""
    try:
        deg = int(value.split("(")[0].strip())
        direction = value.split("(")[1].split(")")[0]
    except (IndexError, ValueError) as err:
        raise ValueError(f"{where}: bad to_next_intersection_heading {value!r}") from err
    if direction not in DIRECTIONS:
        raise ValueError(f"{where}: direction {direction!r} is not one of {DIRECTIONS}")
    return deg, direction


def parse_route(index: int, route: dict, source: str) -> Route:
    """Validate and convert one route dict; errors name the route index and the file."""
    where = f"{source}: route {index}"
    try:
        start = route["start_place"]["relocated_geocode"]
        geocodes = route["route_results"]["geocode_list"]
        milestone_info = route["milestone_info"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where}: missing field {err}") from err
    blocks = parse_navigation_string(milestone_info)
    if len(blocks) != len(geocodes) or not geocodes:
        raise ValueError(f"{where}: milestone_info has {len(blocks)} blocks but route_results.geocode_list has "
                         f"{len(geocodes)} geocodes (they must match and be non-empty)")
    milestones = []
    for j, block in enumerate(blocks):
        if "to_next_intersection_heading" not in block:
            raise ValueError(f"{where}: milestone block {j} lacks to_next_intersection_heading")
        deg, direction = _parse_heading(block["to_next_intersection_heading"], f"{where}, milestone block {j}")
        milestones.append(Milestone(block.get("landmarks", NO_LANDMARK_BLOCK), deg, direction))
    init_heading = route.get("init_heading", 0)
    if not isinstance(init_heading, (int, float)):
        raise ValueError(f"{where}: init_heading {init_heading!r} is not a number")
    return Route(index=index, start=(float(start[0]), float(start[1])), init_heading=int(init_heading),
                 geocodes=tuple((float(g[0]), float(g[1])) for g in geocodes), milestones=tuple(milestones))


class PanoMapping:
    """The GPS->pano mapping with the reference relocation rule (exact key, else nearest within 20 m)."""

    def __init__(self, mapping: dict, source: str = "<mapping>"):
        if not mapping:
            raise ValueError(f"{source}: the GPS->pano mapping is empty")
        self.source = source
        self.keys = np.array([(float(k[0]), float(k[1])) for k in mapping], np.float64)
        self.pano_ids = [str(v) for v in mapping.values()]
        self._exact = {(float(k[0]), float(k[1])): i for i, k in enumerate(mapping)}
        self._tree = cKDTree(unit_vectors(self.keys))

    def relocate(self, latlng: tuple[float, float]) -> int | None:
        """Index of the key equal to latlng, else of the nearest key by haversine if under 20 m, else None."""
        exact = self._exact.get((float(latlng[0]), float(latlng[1])))
        if exact is not None:
            return exact
        query = unit_vectors(np.array([latlng], np.float64))[0]
        _, nearest = self._tree.query(query)
        distance = haversine_m(self.keys[nearest], np.array(latlng, np.float64))
        return int(nearest) if distance < MAPPING_RADIUS_M else None

    def geocode(self, index: int) -> tuple[float, float]:
        """(lat, lng) of mapping key `index`."""
        return float(self.keys[index, 0]), float(self.keys[index, 1])


@dataclasses.dataclass
class RouteSet:
    """A loaded route directory: routes, pano mapping and the street-view folder."""
    directory: Path
    routes: list[Route]
    route_num: int
    mapping: PanoMapping

    @property
    def street_view_dir(self) -> Path:
        """The `street_views/` folder of the route directory."""
        return self.directory / "street_views"

    def pano_files(self, pano_index: int) -> tuple[Path, Path]:
        """(jpg, metadata json) paths of a pano."""
        pano = self.mapping.pano_ids[pano_index]
        return self.street_view_dir / f"{pano}.jpg", self.street_view_dir / f"{pano}.metadata.json"

    def check_pano(self, pano_index: int, route_index: int) -> None:
        """Raise FileNotFoundError naming the route and the file when a pano's jpg or metadata is missing."""
        for path in self.pano_files(pano_index):
            if not path.is_file():
                raise FileNotFoundError(f"route {route_index}: street view file {path} is missing")

    def rotation(self, pano_index: int) -> float:
        """The `rotation` field (degrees) of a pano's metadata file."""
        path = self.pano_files(pano_index)[1]
        try:
            return float(json.loads(path.read_text())["rotation"])
        except FileNotFoundError:
            raise
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: no numeric 'rotation' field") from err


def load_route_set(directory: str | Path) -> RouteSet:
    """Read `route_infos.json` and `gps_pano_mapping.pkl` of a route directory (pano files are checked later)."""
    directory = Path(directory)
    route_file, mapping_file = directory / "route_infos.json", directory / "gps_pano_mapping.pkl"
    for path in (route_file, mapping_file):
        if not path.is_file():
            raise FileNotFoundError(f"V-IRL route directory {directory}: {path.name} is missing")
    data = json.loads(route_file.read_text())
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], list)):
        raise ValueError(f"{route_file}: expected a JSON list [route_list, route_num]")
    routes = [parse_route(i, r, str(route_file)) for i, r in enumerate(data[0])]
    if not routes:
        raise ValueError(f"{route_file}: route_list is empty")
    with open(mapping_file, "rb") as fh:
        mapping = pickle.load(fh)
    if not isinstance(mapping, dict):
        raise ValueError(f"{mapping_file}: expected a pickled dict {{(lat, lng): pano_id}}")
    return RouteSet(directory=directory, routes=routes, route_num=data[1],
                    mapping=PanoMapping(mapping, str(mapping_file)))
