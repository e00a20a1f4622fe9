"""TFDS builder of GeneralPoints expert SFT data (GP-L and GP-VL), written as array_record, no TensorFlow needed.

Configs: modality (`l`, `vl`) x face rule (`face10`: J/Q/K count 10, in-distribution hands; `face_as_11_12_13`:
J/Q/K count 11/12/13, OOD hands) x suit set (`mixed`, `black`, `red`), named e.g. `vl_face10_black`. The number of
examples, the seed, the image resolution and an optional user card folder live on the config; `build_expert_dataset`
derives a config whose name carries them, so datasets that differ never share a directory.

Each example: prompt (user message text, spec §3), response (expert reply), formula (the solver string inside it),
ranks/suits/numbers int32[4], face_cards_as_10 (bool), and for VL an image uint8[res, res, 3] stored as PNG.
The image is PNG-encoded with PIL before it reaches TFDS (TFDS encodes arrays with TensorFlow, which is not
installed); reading back decodes with PIL.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import Iterator, Optional

import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jaxrl_vlm.data.gp_expert.examples import expert_examples
from jaxrl_vlm.envs.general_points.cards import CANVAS_SIZE, card_atlas, render_hands
from jaxrl_vlm.envs.general_points.sampling import SUIT_SETS

FACE_RULES = {"face10": True, "face_as_11_12_13": False}
MODALITIES = {"l": True, "vl": False}  # name -> language_only
RENDER_CHUNK = 8  # hands rendered per device call (fixed, so one compilation serves every chunk)


@dataclasses.dataclass(eq=False)
class GpExpertConfig(tfds.core.BuilderConfig):
    """One GP expert dataset: modality, face rule, suit set, size, seed, image resolution, card art."""

    language_only: bool = True
    face_cards_as_10: bool = True
    suits: str = "mixed"
    num_examples: int = 10_000
    seed: int = 0
    resolution: int = CANVAS_SIZE
    card_dir: Optional[str] = None


def _base_configs() -> list[GpExpertConfig]:
    configs = []
    for modality, language_only in MODALITIES.items():
        for rule, face10 in FACE_RULES.items():
            for suits in SUIT_SETS:
                configs.append(GpExpertConfig(
                    name=f"{modality}_{rule}_{suits}", language_only=language_only, face_cards_as_10=face10,
                    suits=suits,
                    description=f"GP-{modality.upper()} expert SFT data, rule {rule}, suits {suits}"))
    return configs


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class GpExpert(tfds.core.GeneratorBasedBuilder):
    """GeneralPoints expert SFT examples (one `train` split). Build with file_format='array_record'."""

    # TFDS 4.9.x finds a builder's source file through the `importlib_resources` backport, which it declares only
    # for Python < 3.9 (so it is usually absent); naming the file here skips that lookup.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _base_configs()

    def _info(self) -> tfds.core.DatasetInfo:
        config: GpExpertConfig = self.builder_config
        features = {
            "prompt": tfds.features.Text(),
            "response": tfds.features.Text(),
            "formula": tfds.features.Text(),
            "ranks": tfds.features.Tensor(shape=(4,), dtype=np.int32),
            "suits": tfds.features.Tensor(shape=(4,), dtype=np.int32),
            "numbers": tfds.features.Tensor(shape=(4,), dtype=np.int32),
            "face_cards_as_10": tfds.features.Scalar(dtype=np.bool_),
        }
        if not config.language_only:
            res = config.resolution
            features["image"] = tfds.features.Image(shape=(res, res, 3), dtype=np.uint8, encoding_format="png")
        return tfds.core.DatasetInfo(builder=self, description=config.description,
                                     features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: every example is generated
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        config: GpExpertConfig = self.builder_config
        ex = expert_examples(config.num_examples, config.seed, language_only=config.language_only,
                             face_cards_as_10=config.face_cards_as_10, suits=config.suits)
        atlas = None if config.language_only else jnp.asarray(card_atlas(config.card_dir))
        for start in range(0, config.num_examples, RENDER_CHUNK):
            stop = min(start + RENDER_CHUNK, config.num_examples)
            if atlas is not None:
                images = _render_chunk(ex.ranks[start:stop], ex.suits[start:stop], atlas, config.resolution)
            for i in range(start, stop):
                example = {
                    "prompt": ex.prompts[i], "response": ex.responses[i], "formula": ex.formulas[i],
                    "ranks": ex.ranks[i], "suits": ex.suits[i], "numbers": ex.numbers[i],
                    "face_cards_as_10": config.face_cards_as_10,
                }
                if atlas is not None:
                    example["image"] = _png_bytes(images[i - start])
                yield i, example


def _render_chunk(ranks: np.ndarray, suits: np.ndarray, atlas: jnp.ndarray, resolution: int) -> np.ndarray:
    """Render up to RENDER_CHUNK hands, padding to the fixed chunk size: uint8[len(ranks), res, res, 3]."""
    pad = RENDER_CHUNK - len(ranks)
    ranks = np.concatenate([ranks, np.ones((pad, 4), np.int32)])
    suits = np.concatenate([suits, np.zeros((pad, 4), np.int32)])
    return np.asarray(render_hands(ranks, suits, atlas, resolution=resolution))[: RENDER_CHUNK - pad]


def expert_config(config_name: str, num_examples: int, seed: int, *, resolution: int = CANVAS_SIZE,
                  card_dir: Optional[str | os.PathLike] = None) -> GpExpertConfig:
    """A config derived from a base config name (e.g. 'vl_face10_black') whose name records every setting."""
    base = {c.name: c for c in GpExpert.BUILDER_CONFIGS}.get(config_name)
    if base is None:
        names = sorted(c.name for c in GpExpert.BUILDER_CONFIGS)
        raise ValueError(f"unknown config {config_name!r}; expected one of {names}")
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    name = f"{config_name}-n{num_examples}-seed{seed}"
    if not base.language_only:
        name += f"-res{resolution}"
        if card_dir is not None:
            card_dir = os.path.abspath(os.fspath(card_dir))
            name += "-cards" + hashlib.sha1(card_atlas(card_dir).tobytes()).hexdigest()[:10]
    return dataclasses.replace(base, name=name, num_examples=num_examples, seed=seed, resolution=resolution,
                               card_dir=card_dir)


def build_expert_dataset(data_dir: str | os.PathLike, config_name: str, num_examples: int, seed: int, *,
                         resolution: int = CANVAS_SIZE, card_dir: Optional[str | os.PathLike] = None) -> GpExpert:
    """Generate (or reuse, if already built) an expert dataset under data_dir and return its builder.

    Read it with `builder.as_data_source()['train']` (random access, decoded NumPy dicts).
    """
    config = expert_config(config_name, num_examples, seed, resolution=resolution, card_dir=card_dir)
    builder = GpExpert(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare()
    return builder
