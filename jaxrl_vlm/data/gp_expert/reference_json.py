"""Export expert examples in the reference SFT pipeline's JSON record format (spec training.md §3.1).

Each record is {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": response}]}; GP-VL
records add "image": "images/NNNNNN.png" (relative to the output folder, i.e. pass it as `--image_folder`) and
prefix the human value with "<image>\\n".
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from PIL import Image

IMAGE_MARKER = "<image>\n"


def _text(value: Any) -> str:
    """TFDS data sources return Text features as bytes; accept str too."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def reference_record(example: Mapping[str, Any], image_path: str | None = None) -> dict:
    """One reference JSON record of an example dict with 'prompt' and 'response' (str or bytes)."""
    prompt = _text(example["prompt"])
    record: dict = {}
    if image_path is not None:
        record["image"] = image_path
        prompt = IMAGE_MARKER + prompt
    record["conversations"] = [{"from": "human", "value": prompt},
                               {"from": "gpt", "value": _text(example["response"])}]
    return record


def write_reference_json(examples: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                         file_name: str = "data.json") -> str:
    """Write examples (e.g. `builder.as_data_source()['train']`) as a reference JSON list; return its path.

    Examples with an 'image' (uint8[H, W, 3]) get their image written to out_dir/images/{index:06d}.png.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for index in range(len(examples)):
        example = examples[index]
        image_path = None
        if "image" in example:
            image_path = f"images/{index:06d}.png"
            os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
            Image.fromarray(example["image"]).save(os.path.join(out_dir, image_path))
        records.append(reference_record(example, image_path))
    path = os.path.join(out_dir, file_name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
    return path
