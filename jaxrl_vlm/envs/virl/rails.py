"""Instructions and ground-truth rails of V-IRL routes (spec virl.md §1.4), with explicit randomness.

The reference draws the initial heading and the drop pattern from Python's global `random`. Here a rail is a pure
function of the route and two explicit random inputs (see QUIRKS.md, "Randomness"):

* `heading0`: int in [0, 360), used only when the route's `init_heading` is missing or 0;
* `keep_draws`: float[K + 1, STRAIGHT_LINE_LENGTH] of uniforms in [0, 1); candidate i of leg idx is dropped iff
  `keep_draws[idx, i] < drop_rate` (the reference's `random.random() < drop_rate`).

Everything that does not depend on them (relocation, the 8 m test, sentence indices) is precomputed once per route in
a `RouteTemplate`, which is also what the device environment loads.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxrl_vlm.envs.virl.geo import geodesic_m
from jaxrl_vlm.envs.virl.reader import NO_LANDMARK_BLOCK, Route, RouteSet

STRAIGHT_LINE_LENGTH = 5
DROP_RATE = 0.5
INTERPOLATE_MIN_M = 5.0
KEEP_MIN_M = 8.0
NO_LANDMARK_POINT = "No landmarks nearby"
INTERSECTION_TEXT = "You observe an intersection"
FORWARD, STOP = "forward()", "stop()"
RELATIVE_LABELS = ("left", "right", "slightly left", "slightly right")


def relative_label(delta: int) -> str:
    """The reference's relative-turn label of a heading change in degrees (no wrap-around, quirk 1)."""
    if delta < -45:
        return "left"
    if delta > 45:
        return "right"
    return "slightly left" if delta <= 0 else "slightly right"


def turn(label: str) -> str:
    """'turn_direction(<label>)'."""
    return f"turn_direction({label})"


@dataclasses.dataclass(frozen=True)
class Slot:
    """A possible rail point: an interpolation candidate (kept or dropped at reset) or a key point (always kept).

    `pano` is the mapping index (-1 for a candidate that fails relocation or the 8 m test). `gt_relative` of the start
    point is None because it depends on the random initial heading. `instruction` is the 0-based sentence index.
    """
    is_candidate: bool
    leg: int
    candidate: int
    pano: int
    heading: int | None
    gt_absolute: str
    gt_relative: str | None
    observation: str
    intersection_observation: str
    instruction: int


@dataclasses.dataclass(frozen=True)
class RouteTemplate:
    """Everything about a route's rail that does not depend on the episode's random draws."""
    route_index: int
    random_heading: bool
    init_heading: int
    degrees: tuple[int, ...]
    directions: tuple[str, ...]
    landmarks: tuple[str, ...]
    slots: tuple[Slot, ...]

    @property
    def num_legs(self) -> int:
        """Legs of the rail: K + 1 (the start point counts as leg 0)."""
        return len(self.degrees) + 1

    def initial_heading(self, heading0: int) -> int:
        """The start heading: `init_heading`, or the random draw when it is 0 (quirk 4)."""
        return int(heading0) if self.random_heading else self.init_heading

    def first_label(self, heading0: int) -> str:
        """Relative label of the first turn (depends on the start heading)."""
        return relative_label(self.degrees[0] - self.initial_heading(heading0))

    def sentences(self, heading0: int) -> list[str]:
        """The 2K instruction sentences."""
        return self.sentences_with_first_label(self.first_label(heading0))

    def sentences_with_first_label(self, first_label: str) -> list[str]:
        """The 2K instruction sentences when the first turn's relative label is `first_label`."""
        k = len(self.degrees)
        out = []
        for j in range(k):
            rel = first_label if j == 0 else relative_label(self.degrees[j] - self.degrees[j - 1])
            lm = self.landmarks[j]
            if j == k - 1:
                out.append(f"Turn {rel} to face {self.directions[j]}.")
                out.append(f"Move forward until you reach destination where {lm}.")
            else:
                out.append(f"{'First, turn' if j == 0 else 'Turn'} {rel} to face {self.directions[j]}.")
                out.append("Move forward until you reach next intersection." if lm == NO_LANDMARK_BLOCK
                           else f"Move forward until you reach next intersection where {lm}.")
        return out

    def global_instruction(self, heading0: int) -> str:
        """'1. ...\\n2. ...\\n' (ends with a newline)."""
        return self.global_instruction_with_first_label(self.first_label(heading0))

    def global_instruction_with_first_label(self, first_label: str) -> str:
        """The global instruction when the first turn's relative label is `first_label`."""
        return "".join(f"{i + 1}. {s}\n" for i, s in enumerate(self.sentences_with_first_label(first_label)))


@dataclasses.dataclass(frozen=True)
class RailPoint:
    """One rail point as in the reference `gt_rail_info` (instruction_idx is 1-based)."""
    pano: int
    heading: int
    gt_action: str
    relative_action: str
    observation: str
    intersection_observation: str
    instruction: str
    instruction_idx: int

    @property
    def oracle_observation(self) -> str:
        """'{observation}; {intersection_observation}', the intersection part blanked at stop()."""
        inter = "" if self.gt_action == STOP else self.intersection_observation
        return f"{self.observation}; {inter}"


def route_template(route_set: RouteSet, route: Route) -> RouteTemplate:
    """Relocate a route's points, interpolate its candidates and index its sentences (reference loop of §1.4)."""
    mapping = route_set.mapping
    where = f"route {route.index} of {route_set.directory / 'route_infos.json'}"

    def relocate_key(latlng: tuple[float, float], what: str) -> int:
        """Mapping index of a key point (must relocate; its files must exist)."""
        pano = mapping.relocate(latlng)
        if pano is None:
            raise ValueError(f"{where}: {what} {latlng} has no pano within 20 m in {mapping.source}")
        route_set.check_pano(pano, route.index)
        return pano

    k = len(route.milestones)
    degrees = tuple(m.heading_deg for m in route.milestones)
    directions = tuple(m.direction for m in route.milestones)
    landmarks = tuple(m.landmark for m in route.milestones)
    start = relocate_key(route.start, "start position")
    raw_points = [mapping.geocode(start)] + list(route.geocodes)
    point_landmarks = [NO_LANDMARK_POINT] + list(landmarks)
    gt_abs = [turn(d) for d in directions] + [STOP]
    later_turns = [turn(relative_label(degrees[j] - degrees[j - 1])) for j in range(1, k)]
    gt_rel: list[str | None] = [None] + later_turns + [STOP]
    slots: list[Slot] = []
    ins = 0
    prev = mapping.geocode(start)
    for idx, raw in enumerate(raw_points):
        distance = geodesic_m(prev, raw)
        pano = relocate_key(raw, "start position" if idx == 0 else f"geocode_list[{idx - 1}]")
        g = mapping.geocode(pano)
        heading = None if idx == 0 else degrees[idx - 1]
        if distance > INTERPOLATE_MIN_M:
            n = STRAIGHT_LINE_LENGTH
            for i in range(1, n + 1):
                q = (prev[0] * (1 - i / n) + g[0] * (i / n), prev[1] * (1 - i / n) + g[1] * (i / n))
                cand = mapping.relocate(q)
                if cand is not None:
                    qr = mapping.geocode(cand)
                    if geodesic_m(prev, qr) > KEEP_MIN_M and geodesic_m(g, qr) > KEEP_MIN_M:
                        route_set.check_pano(cand, route.index)
                    else:
                        cand = None
                slots.append(Slot(True, idx, i - 1, -1 if cand is None else cand, heading, FORWARD, FORWARD,
                                  NO_LANDMARK_POINT, "", ins))
            ins += 1
        if gt_abs[idx] == STOP:
            ins -= 1
        slots.append(Slot(False, idx, -1, pano, heading, gt_abs[idx], gt_rel[idx], point_landmarks[idx],
                          INTERSECTION_TEXT if idx > 0 else "", ins))
        ins += 1
        prev = g
    return RouteTemplate(route_index=route.index, random_heading=route.init_heading == 0,
                         init_heading=route.init_heading, degrees=degrees, directions=directions,
                         landmarks=landmarks, slots=tuple(slots))


def sample_episode_randomness(rng: np.random.Generator, num_legs: int) -> tuple[int, np.ndarray]:
    """(heading0 int in [0, 360), keep_draws float64[num_legs, STRAIGHT_LINE_LENGTH]) from a numpy Generator."""
    return int(rng.integers(0, 360)), rng.random((num_legs, STRAIGHT_LINE_LENGTH))


def build_rail(template: RouteTemplate, heading0: int, keep_draws: np.ndarray, absolute_action: bool = True,
               drop_rate: float = DROP_RATE) -> list[RailPoint]:
    """The episode's rail given the explicit random inputs (module docstring)."""
    keep_draws = np.asarray(keep_draws)
    if keep_draws.shape != (template.num_legs, STRAIGHT_LINE_LENGTH):
        raise ValueError(f"keep_draws has shape {keep_draws.shape}, "
                         f"expected {(template.num_legs, STRAIGHT_LINE_LENGTH)}")
    sentences = template.sentences(heading0)
    start_heading = template.initial_heading(heading0)
    rail = []
    for s in template.slots:
        if s.is_candidate and (keep_draws[s.leg, s.candidate] < drop_rate or s.pano < 0):
            continue
        rel = s.gt_relative if s.gt_relative is not None else turn(template.first_label(heading0))
        rail.append(RailPoint(pano=s.pano, heading=start_heading if s.heading is None else s.heading,
                              gt_action=s.gt_absolute if absolute_action else rel, relative_action=rel,
                              observation=s.observation, intersection_observation=s.intersection_observation,
                              instruction=sentences[s.instruction], instruction_idx=s.instruction + 1))
    return rail
