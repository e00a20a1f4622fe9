"""Expert SFT conversations of the configured task (spec training.md §3): the data entry point of the SFT job.

Each task's data package has an `sft_source` module whose `build_sft_dataset(config, data_dir)` builds (or reuses)
a TFDS dataset whose 'train' records hold 'prompt' (the user message text) and 'response' (the expert reply), and,
when task.language_only is False, 'image' (uint8[H, W, 3], shown before the prompt text). This module picks the
module by config.task.name, so the training layer never names a task or imports its packages.
"""
from __future__ import annotations

import functools
import importlib
import io
import os
from typing import Callable

import jax
import ml_collections as mlc
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from jaxrl_vlm.data.conversation import TokenizedConversation, tokenize_conversation

# Imported on use: a job loads only its own task's packages (environments, renderers).
SFT_SOURCES = {"gp": "jaxrl_vlm.data.gp_expert.sft_source", "virl": "jaxrl_vlm.data.virl_expert.sft_source"}


def _text(value) -> str:
    """TFDS data sources return Text features as bytes."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def expert_conversations(config: mlc.ConfigDict, tokenizer) -> tuple[Callable[[int], TokenizedConversation], int]:
    """(get_example(i), count): the task's expert conversations (user prompt, assistant reply; VL: the image first in
    the user message), tokenized on first use. Data lives in config.data.data_dir (default <out_dir>/data)."""
    name = config.task.name
    if name not in SFT_SOURCES:
        raise ValueError(f"config.task.name={name!r} has no expert SFT data: expected one of {sorted(SFT_SOURCES)}")
    data_dir = config.data.data_dir or os.path.join(config.out_dir, "data")
    build = functools.partial(importlib.import_module(SFT_SOURCES[name]).build_sft_dataset, config, data_dir)
    # Process 0 builds first; the others then reuse that copy on a shared filesystem or build their own.
    builder = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"{name} expert data built")
    builder = builder or build()
    source = builder.as_data_source()["train"]
    language_only = config.task.language_only

    @functools.lru_cache(maxsize=None)
    def get_example(i: int) -> TokenizedConversation:
        record = source[i]
        prompt, response = _text(record["prompt"]), _text(record["response"])
        if language_only:
            return tokenize_conversation(tokenizer, [{"role": "user", "content": prompt},
                                                     {"role": "assistant", "content": response}])
        image = record["image"]
        if isinstance(image, bytes):
            image = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        return tokenize_conversation(tokenizer, [user, {"role": "assistant", "content": response}], image)

    return get_example, len(source)
