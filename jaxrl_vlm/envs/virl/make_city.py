"""Write synthetic V-IRL cities in the real on-disk format (spec §1.3).

  python -m jaxrl_vlm.envs.virl.make_city --out DIR --seed S --routes N [--style NAME[,NAME...]]
      [--pano-width W] [--grid NX NY] [--workers K]

writes DIR/route_infos.json (`[route_list, route_num]`), DIR/gps_pano_mapping.pkl (`{(lat, lng): pano_id}`) and
DIR/street_views/{pano_id}.jpg + {pano_id}.metadata.json for every pano of every city. Several comma-separated
styles (or `all`) give several cities (different regions of the world) in one route file, routes split evenly in
style order, as the visual-OOD route file of V-IRL mixes regions. Output is a deterministic function of the arguments.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import multiprocessing
import os
import pickle
from typing import Any

from jaxrl_vlm.envs.virl.city import DEFAULT_STYLE, STYLES, generate_city, get_style, make_routes, route_infos_json
from jaxrl_vlm.envs.virl.city.layout import City
from jaxrl_vlm.envs.virl.panorama import write_panorama


def _render_range(city: City, street_views: str, width: int, indices: list[int]) -> int:
    """Render and write the panos `indices` of `city`; returns how many were written."""
    for k in indices:
        write_panorama(city, k, street_views, width)
    return len(indices)


def write_city(out_dir: str, seed: int, n_routes: int, styles: list[str], pano_width: int = 2048,
               grid: tuple[int, int] = (6, 6), workers: int = 1, verbose: bool = False) -> dict[str, Any]:
    """Generate one city per style, `n_routes` routes in total, and write the on-disk dataset to `out_dir`.

    Returns a summary {"routes", "panos", "places", "styles"}.
    """
    if n_routes < 1:
        raise ValueError(f"--routes must be >= 1, got {n_routes}")
    if not styles:
        raise ValueError("at least one style is needed")
    if pano_width < 16:
        raise ValueError(f"--pano-width must be >= 16, got {pano_width}")
    street_views = os.path.join(out_dir, "street_views")
    os.makedirs(street_views, exist_ok=True)
    routes, mapping, n_places = [], {}, 0
    for k, name in enumerate(styles):
        city = generate_city(get_style(name), seed + 1000 * k, grid[0], grid[1])
        share = n_routes // len(styles) + (1 if k < n_routes % len(styles) else 0)
        if share:
            for route in make_routes(city, share, seed + 1000 * k):
                route["city"] = name
                routes.append(route)
        mapping.update(city.pano_mapping())
        n_places += len(city.places)
        indices = list(range(len(city.panos)))
        chunks = [indices[i::max(1, workers)] for i in range(max(1, workers))]
        render = functools.partial(_render_range, city, street_views, pano_width)
        if workers > 1:
            # spawn, not fork: jobs call this after JAX has started its threads (cities.py), and forking a
            # multithreaded process can deadlock the children
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                done = sum(pool.map(render, chunks))
        else:
            done = render(indices)
        if verbose:
            print(f"city {name}: {len(city.panos)} panos ({done} rendered), {len(city.places)} places, "
                  f"{share} routes", flush=True)
    with open(os.path.join(out_dir, "route_infos.json"), "w") as f:
        f.write(route_infos_json(routes))
    with open(os.path.join(out_dir, "gps_pano_mapping.pkl"), "wb") as f:
        pickle.dump(mapping, f)
    return {"routes": len(routes), "panos": len(mapping), "places": n_places, "styles": list(styles)}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--routes", type=int, required=True, help="total number of routes")
    parser.add_argument("--style", default=DEFAULT_STYLE,
                        help=f"style name, comma-separated names (one city each) or 'all' ({', '.join(STYLES)})")
    parser.add_argument("--pano-width", type=int, default=2048, help="panorama width in px (height = width / 2)")
    parser.add_argument("--grid", type=int, nargs=2, default=(6, 6), metavar=("NX", "NY"),
                        help="intersections per city along each axis")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering panoramas")
    args = parser.parse_args(argv)
    styles = list(STYLES) if args.style == "all" else [s.strip() for s in args.style.split(",") if s.strip()]
    summary = write_city(args.out, args.seed, args.routes, styles, args.pano_width, tuple(args.grid), args.workers,
                         verbose=True)
    print(f"wrote {summary['routes']} routes and {summary['panos']} panoramas to {args.out}")


if __name__ == "__main__":
    main()
