"""TFDS builder of V-IRL expert SFT data (V-IRL-L and V-IRL-VL), written as array_record without TensorFlow.

Configs `l` and `vl` are bases; `build_expert_dataset` derives a config whose name records the route directory
(a hash of its route file), the episode count, an optional cap on the examples, seed, action space and image sizes,
so different datasets never share a directory. Features: prompt, response, gt_action, pano_id (text), route,
episode, step, heading (int32), and for VL the 2x2 grid image (the `views.py` renderer: views of `view_size` px
resized to `resolution`, canvas 2*resolution+5), PNG-encoded with PIL (TFDS would need TensorFlow to encode arrays).
Records keep generation order (episode, step); shuffle in the loader. Read with `builder.as_data_source()['train']`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jaxrl_vlm.data.virl_expert.examples import expert_steps
from jaxrl_vlm.envs.virl.rails import route_template
from jaxrl_vlm.envs.virl.reader import load_route_set


@dataclasses.dataclass(eq=False)
class VirlExpertConfig(tfds.core.BuilderConfig):
    """One V-IRL expert dataset: modality, route directory, size, seed, action space, image sizes.

    max_examples: keep only the first that many examples (the last episode may be cut short); None keeps every step
    of the num_episodes episodes."""
    vision: bool = False
    route_dir: Optional[str] = None
    num_episodes: int = 100
    max_examples: Optional[int] = None
    seed: int = 0
    absolute_action: bool = True
    view_size: int = 640
    resolution: int = 1200


class VirlExpert(tfds.core.GeneratorBasedBuilder):
    """V-IRL expert SFT examples (one `train` split). Build with file_format='array_record'."""

    code_path = epath.Path(__file__)  # skip TFDS's source lookup through the importlib_resources backport
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [VirlExpertConfig(name="l", description="V-IRL-L expert SFT data"),
                       VirlExpertConfig(name="vl", vision=True, description="V-IRL-VL expert SFT data")]

    def _info(self) -> tfds.core.DatasetInfo:
        config: VirlExpertConfig = self.builder_config
        features = {"prompt": tfds.features.Text(), "response": tfds.features.Text(),
                    "gt_action": tfds.features.Text(), "pano_id": tfds.features.Text(),
                    **{k: tfds.features.Scalar(dtype=np.int32) for k in ("route", "episode", "step", "heading")}}
        if config.vision:
            side = 2 * config.resolution + 5
            features["image"] = tfds.features.Image(shape=(side, side, 3), dtype=np.uint8, encoding_format="png")
        return tfds.core.DatasetInfo(builder=self, description=config.description,
                                     features=tfds.features.FeaturesDict(features), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: every example is generated
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        config: VirlExpertConfig = self.builder_config
        route_set = load_route_set(config.route_dir)
        templates = [route_template(route_set, r) for r in route_set.routes]
        grid = grid_renderer(config.view_size, config.resolution) if config.vision else None
        steps = expert_steps(templates, config.num_episodes, config.seed, config.vision, config.absolute_action)
        for i, ex in enumerate(itertools.islice(steps, config.max_examples)):
            example = {"prompt": ex.prompt, "response": ex.response, "gt_action": ex.gt_action,
                       "pano_id": route_set.mapping.pano_ids[ex.pano], "route": ex.route, "episode": ex.episode,
                       "step": ex.step, "heading": ex.heading}
            if grid is not None:
                jpg, _ = route_set.pano_files(ex.pano)
                panorama = np.asarray(Image.open(jpg).convert("RGB"))
                image = np.asarray(grid(panorama, np.float32(ex.heading), np.float32(route_set.rotation(ex.pano))))
                example["image"] = _png_bytes(image)
            yield i, example


@functools.lru_cache(maxsize=None)
def grid_renderer(view_size: int, resolution: int):
    """The (jitted) 2x2 grid renderer of the city package (`views.view_grid`):
    (uint8[H, W, 3] panorama, float32 heading,
    float32 rotation) -> uint8[2 * resolution + 5, 2 * resolution + 5, 3]."""
    from jaxrl_vlm.envs.virl.views import view_grid

    return functools.partial(view_grid, view_size=view_size, resolution=resolution)


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def expert_config(config_name: str, route_dir: str | os.PathLike, num_episodes: int, seed: int, *,
                  max_examples: Optional[int] = None, absolute_action: bool = True, view_size: int = 640,
                  resolution: int = 1200) -> VirlExpertConfig:
    """A config derived from 'l' or 'vl' whose name records every setting (route file by content hash)."""
    base = {c.name: c for c in VirlExpert.BUILDER_CONFIGS}.get(config_name)
    if base is None:
        raise ValueError(f"unknown config {config_name!r}; expected 'l' or 'vl'")
    route_file = Path(route_dir) / "route_infos.json"
    if not route_file.is_file():
        raise FileNotFoundError(f"V-IRL route directory {route_dir}: route_infos.json is missing")
    if not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"num_episodes must be a positive int, got {num_episodes!r}")
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples must be a positive int or None, got {max_examples!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    digest = hashlib.sha1(route_file.read_bytes()).hexdigest()[:10]
    name = f"{config_name}-routes{digest}-n{num_episodes}"
    if max_examples is not None:
        name += f"-first{max_examples}"
    name += f"-seed{seed}-{'abs' if absolute_action else 'rel'}"
    if base.vision:
        name += f"-view{view_size}-res{resolution}"
    return dataclasses.replace(base, name=name, route_dir=os.path.abspath(os.fspath(route_dir)),
                               num_episodes=num_episodes, max_examples=max_examples, seed=seed,
                               absolute_action=absolute_action, view_size=view_size, resolution=resolution)


def build_expert_dataset(data_dir: str | os.PathLike, config_name: str, route_dir: str | os.PathLike,
                         num_episodes: int, seed: int, **kwargs) -> VirlExpert:
    """Generate (or reuse, if already built) a V-IRL expert dataset under data_dir and return its builder."""
    config = expert_config(config_name, route_dir, num_episodes, seed, **kwargs)
    builder = VirlExpert(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare()
    return builder

