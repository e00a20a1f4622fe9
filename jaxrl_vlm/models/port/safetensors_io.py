"""Read and write Hugging Face safetensors checkpoints with numpy memmaps (bf16 via ml_dtypes), tensor by tensor.

Reading never loads a whole file: `CheckpointReader.read(name)` memory-maps one tensor.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _read_header(path: str) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


class CheckpointReader:
    """Tensors of an HF checkpoint directory: `model.safetensors.index.json` + shards, or one `model.safetensors`.

    FileNotFoundError names the missing directory, index, or shard file.
    """

    def __init__(self, directory: str):
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
        index_path = os.path.join(directory, INDEX_FILE)
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map: Mapping[str, str] = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
            files = [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"no {INDEX_FILE} or {SINGLE_FILE} in {directory!r}")
        self._entries: dict[str, tuple[str, dict[str, Any], int]] = {}
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.exists(path):
                raise FileNotFoundError(f"safetensors shard {path!r} listed in {INDEX_FILE} is missing")
            header, data_start = _read_header(path)
            for key, info in header.items():
                self._entries[key] = (path, info, data_start)

    def keys(self) -> list[str]:
        """All tensor names."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor `name` without reading it."""
        return tuple(self._entries[name][1]["shape"])

    def read(self, name: str) -> np.ndarray:
        """Memory-mapped numpy array of tensor `name` (read-only)."""
        if name not in self._entries:
            raise KeyError(f"tensor {name!r} not in checkpoint")
        path, info, data_start = self._entries[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == begin:
            return np.zeros(shape, _DTYPES[info["dtype"]])
        return np.memmap(path, dtype=_DTYPES[info["dtype"]], mode="r", offset=data_start + begin, shape=shape)


def _write_file(path: str, tensors: Mapping[str, np.ndarray]) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, arr in tensors.items():
        nbytes = arr.size * arr.dtype.itemsize
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())


def write_checkpoint(directory: str, tensors: Iterator[tuple[str, np.ndarray]],
                     max_shard_bytes: int | None = None) -> list[str]:
    """Write (name, array) pairs as safetensors: one `model.safetensors`, or shards of at most `max_shard_bytes`
    plus `model.safetensors.index.json`. Holds at most one shard in memory. Returns the file names written."""
    os.makedirs(directory, exist_ok=True)
    shard: dict[str, np.ndarray] = {}
    shard_bytes = 0
    tmp_names: list[str] = []
    weight_map: dict[str, int] = {}

    def flush() -> None:
        name = f"shard-{len(tmp_names):05d}.tmp"
        _write_file(os.path.join(directory, name), shard)
        tmp_names.append(name)

    for name, arr in tensors:
        nbytes = arr.size * arr.dtype.itemsize
        if max_shard_bytes is not None and shard and shard_bytes + nbytes > max_shard_bytes:
            flush()
            shard, shard_bytes = {}, 0
        shard[name] = arr
        shard_bytes += nbytes
        weight_map[name] = len(tmp_names)
    flush()
    if len(tmp_names) == 1:
        os.replace(os.path.join(directory, tmp_names[0]), os.path.join(directory, SINGLE_FILE))
        return [SINGLE_FILE]
    total = len(tmp_names)
    final = [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
    for tmp, name in zip(tmp_names, final):
        os.replace(os.path.join(directory, tmp), os.path.join(directory, name))
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {}, "weight_map": {k: final[i] for k, i in weight_map.items()}}, f, indent=1)
    return final + [INDEX_FILE]
