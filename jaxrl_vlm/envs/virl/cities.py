"""Synthetic V-IRL cities built on first use, for the route directories a job leaves empty (the real NYC routes
cannot be downloaded here).

`<task.city_cache>/train` (task.route_dir): the training city, style soho, seed 0, task.city_routes routes; training
data and the in-distribution and rule-OOD splits draw from it. `<task.city_cache>/ood` (task.ood_route_dir): seed 1,
18 routes over milan, lagos, hongkong and london, the size of the visual-OOD benchmark (spec virl.md §1.10).
A complete city holds MARKER, written last with its build settings: a killed build, or one with other settings, is
built again; a city is reused whenever its panoramas are at least as wide as the job needs.
"""
from __future__ import annotations

import dataclasses
import json
import os

import ml_collections as mlc

from jaxrl_vlm.envs.virl.make_city import write_city

MARKER = "city.json"
GRID = (6, 6)  # make_city's default: 459 panoramas in the soho city, 1427 in the four OOD ones
# V-IRL-L reads only the panoramas' metadata (rotation) and checks that their jpgs exist, so thumbnails do: the
# 1000-route training city and the OOD city took 3 s and 5 s to build on a 2-core CPU.
LANGUAGE_PANO_WIDTH = 64
# V-IRL-VL renders 90-degree views from them: 2048 px (make_city's default) puts 512 px of panorama into each 640 px
# view; 0.5 s per panorama and core, so minutes on few cores.
VISION_PANO_WIDTH = 2048


@dataclasses.dataclass(frozen=True)
class CitySpec:
    """One synthetic city: its sub-folder of task.city_cache, seed, styles (one city each) and route count
    (None: task.city_routes)."""
    name: str
    seed: int
    styles: tuple[str, ...]
    routes: int | None


CITIES = {"route_dir": CitySpec("train", 0, ("soho",), None),
          "ood_route_dir": CitySpec("ood", 1, ("milan", "lagos", "hongkong", "london"), 18)}


def ensure_city(directory: str, seed: int, routes: int, styles: tuple[str, ...], pano_width: int,
                workers: int = 1) -> bool:
    """Build the city into `directory` (rendering with `workers` processes) unless it holds a complete one with these
    settings and panoramas at least `pano_width` px wide. Returns True when it built."""
    settings = {"seed": seed, "routes": routes, "styles": list(styles), "grid": list(GRID)}
    marker = os.path.join(directory, MARKER)
    try:
        with open(marker) as f:
            built = json.load(f)
    except (FileNotFoundError, ValueError):
        built = {}
    if all(built.get(k) == v for k, v in settings.items()) and built.get("pano_width", 0) >= pano_width:
        return False
    if os.path.exists(marker):  # a rebuild killed halfway must not pass for the old city
        os.remove(marker)
    print(f"V-IRL: building the synthetic city {directory} ({', '.join(styles)}, seed {seed}, {routes} routes, "
          f"{pano_width} px panoramas; reused by later runs)", flush=True)
    write_city(directory, seed, routes, list(styles), pano_width, GRID, workers)
    with open(marker + ".tmp", "w") as f:
        json.dump({**settings, "pano_width": pano_width}, f)
    os.replace(marker + ".tmp", marker)  # atomic: a reader sees no marker or a whole one
    return True


def resolve_route_dirs(config: mlc.ConfigDict) -> None:
    """Point every empty V-IRL route directory the job reads (config.virl_route_keys) at its synthetic city under
    task.city_cache, building the city first if needed. Mutates config.task; no-op for GP.

    Call after jax.distributed.initialize: in a multi-process run process 0 builds while the others wait, then they
    reuse its copy on a shared filesystem or build their own (the output is deterministic)."""
    from jaxrl_vlm.config import virl_route_keys

    task = config.task
    if task.name != "virl":
        return
    keys = [key for key in virl_route_keys(config) if not task[key]]
    if not keys:
        return
    # thumbnails render faster in one process than a pool of workers starts
    width, workers = ((LANGUAGE_PANO_WIDTH, 1) if task.language_only
                      else (VISION_PANO_WIDTH, len(os.sched_getaffinity(0))))
    targets = {key: os.path.join(task.city_cache, CITIES[key].name) for key in keys}

    def build() -> None:
        for key, directory in targets.items():
            spec = CITIES[key]
            ensure_city(directory, spec.seed, spec.routes or task.city_routes, spec.styles, width, workers)

    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            build()
        multihost_utils.sync_global_devices("virl cities built")
    build()  # process 0 (or a single process): builds now or finds it built; the others: reuse or build their own
    for key, directory in targets.items():
        task[key] = directory
