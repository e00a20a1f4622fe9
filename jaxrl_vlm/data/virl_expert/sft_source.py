"""V-IRL's expert SFT data for the training job (`jaxrl_vlm.data.expert`): the dataset matching config.task.

data.num_examples counts SFT examples (rail steps), as for GP, not episodes: the dataset holds the first
data.num_examples steps of the expert episodes drawn with data.seed over task.route_dir, so the last episode may be
cut short. Every episode has at least one step, so that many episodes always suffice. Actions are absolute (the
in-distribution action space the reference trains on); V-IRL-VL grids are views of task.view_size px resized to
task.resolution, as evaluated.
"""
from __future__ import annotations

import os

import ml_collections as mlc

from jaxrl_vlm.data.virl_expert.builder import VirlExpert, build_expert_dataset

def build_sft_dataset(config: mlc.ConfigDict, data_dir: str) -> VirlExpert:
    """Build (or reuse) under data_dir the V-IRL expert dataset of config.task (config 'l' if task.language_only
    else 'vl'); V-IRL-VL records add the grid image uint8[2 * task.resolution + 5, 2 * task.resolution + 5, 3]."""
    route_dir = config.task.route_dir
    if not route_dir:
        raise ValueError("config.task.route_dir is empty: V-IRL SFT data comes from expert rollouts over a route "
                         "directory (route_infos.json, gps_pano_mapping.pkl, street_views/; the job entry points "
                         "fill an empty one with a synthetic city, envs.virl.cities.resolve_route_dirs)")
    if not os.path.isfile(os.path.join(route_dir, "route_infos.json")):
        raise FileNotFoundError(f"config.task.route_dir {route_dir!r} has no route_infos.json (a V-IRL route "
                                "directory, e.g. from python -m jaxrl_vlm.envs.virl.make_city)")
    n = config.data.num_examples
    return build_expert_dataset(data_dir, "l" if config.task.language_only else "vl", route_dir, n,
                                config.data.seed, max_examples=n, view_size=config.task.view_size,
                                resolution=config.task.resolution)
