"""GeneralPoints' expert SFT data for the training job (`jaxrl_vlm.data.expert`): the dataset matching config.task."""
from __future__ import annotations

import ml_collections as mlc

from jaxrl_vlm.data.gp_expert.builder import GpExpert, build_expert_dataset


def expert_config_name(task: mlc.ConfigDict) -> str:
    """Name of the GP expert TFDS config matching the task (modality, face rule, suit set)."""
    modality = "l" if task.language_only else "vl"
    rule = "face10" if task.face_cards_as_10 else "face_as_11_12_13"
    return f"{modality}_{rule}_{task.suits}"


def build_sft_dataset(config: mlc.ConfigDict, data_dir: str) -> GpExpert:
    """Build (or reuse) under data_dir the GP expert dataset of config.task: data.num_examples hands drawn with
    data.seed; GP-VL adds the hand's image uint8[task.resolution, task.resolution, 3] drawn with task.card_dir's art."""
    return build_expert_dataset(data_dir, expert_config_name(config.task), config.data.num_examples,
                                config.data.seed, resolution=config.task.resolution,
                                card_dir=config.task.card_dir or None)
