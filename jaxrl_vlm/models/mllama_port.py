"""Porting Hugging Face Mllama (Llama-3.2-Vision) checkpoints to our Flax NNX modules.

The HF key of every parameter is derived from its NNX path (our module tree mirrors transformers'), with the
transposes a PyTorch `Linear`/`Conv2d` weight needs. Both on-disk layouts are accepted: transformers 5
(`model.vision_model.*`, `model.language_model.*`, `model.multi_modal_projector.*`, `lm_head.*`) and the layout of
the published Llama-3.2-11B-Vision files (`vision_model.*`, `language_model.model.*`, `language_model.lm_head.*`,
`multi_modal_projector.*`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"

# Top-level attributes of our model -> HF prefix (transformers 5 layout).
TOP_LEVEL_PREFIXES = {
    "vision_model": "model.vision_model",
    "multi_modal_projector": "model.multi_modal_projector",
    "language_model": "model.language_model",
    "lm_head": "lm_head",
}

# Path suffixes whose HF name differs from the generic rule (kernel/scale -> weight, others unchanged).
SUFFIX_OVERRIDES = {
    ("gated_positional_embedding", "tile_embedding"): ("gated_positional_embedding", "tile_embedding", "weight"),
    ("pre_tile_positional_embedding", "embedding"): ("pre_tile_positional_embedding", "embedding", "weight"),
    ("post_tile_positional_embedding", "embedding"): ("post_tile_positional_embedding", "embedding", "weight"),
    ("embed_tokens", "embedding"): ("embed_tokens", "weight"),
}

# Published 11B layout -> transformers 5 layout (first matching prefix wins).
LEGACY_PREFIXES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_model.", "model.vision_model."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def canonical_hf_key(key: str) -> str:
    """Maps a key of either on-disk layout to the transformers 5 layout."""
    for old, new in LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def hf_key_for_path(path: tuple[Any, ...]) -> str:
    """Our NNX parameter path, e.g. ('vision_model', 'transformer', 'layers', 0, 'mlp', 'fc1', 'kernel'),
    -> its transformers 5 key, e.g. 'model.vision_model.transformer.layers.0.mlp.fc1.weight'."""
    names = tuple(str(p) for p in path)
    if names[0] not in TOP_LEVEL_PREFIXES:
        raise KeyError(f"no HF prefix known for parameter path {'.'.join(names)}")
    body = names[1:]
    for suffix, replacement in SUFFIX_OVERRIDES.items():
        if body[-len(suffix):] == suffix:
            body = body[: -len(suffix)] + replacement
            break
    else:
        if body[-1] in ("kernel", "scale"):
            body = body[:-1] + ("weight",)
    return ".".join((TOP_LEVEL_PREFIXES[names[0]], *body))


def to_param_layout(path: tuple[Any, ...], tensor: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """HF tensor -> our layout: Linear weights [out, in] -> kernels [in, out]; the patch Conv2d weight
    [D, C, p, p] -> kernel [C*p*p, D]; everything else unchanged."""
    if str(path[-1]) != "kernel":
        return tensor
    if tensor.ndim == 4:
        return tensor.reshape(tensor.shape[0], -1).T
    if tensor.ndim != 2:
        raise ValueError(f"expected a 2-D Linear weight for {'.'.join(map(str, path))}, got shape {tensor.shape}")
    return tensor.T


def safetensors_files(directory: str | os.PathLike) -> list[str]:
    """The safetensors files of an HF checkpoint directory (sharded via the index file, or a single file)."""
    directory = os.fspath(directory)
    index = os.path.join(directory, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not weight_map:
            raise ValueError(f"{index} has no 'weight_map'")
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not os.path.isfile(os.path.join(directory, name))]
        if missing:
            raise FileNotFoundError(f"{index} lists shards missing from {directory}: {missing}")
        return [os.path.join(directory, name) for name in files]
    single = os.path.join(directory, SAFETENSORS_SINGLE)
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"no {SAFETENSORS_INDEX} or {SAFETENSORS_SINGLE} in {directory}")


def read_hf_tensors(directory: str | os.PathLike) -> dict[str, jax.Array]:
    """All tensors of an HF checkpoint directory as host JAX arrays keyed by transformers 5 names."""
    from safetensors import safe_open

    tensors: dict[str, jax.Array] = {}
    for file in safetensors_files(directory):
        with safe_open(file, framework="flax") as f:
            for key in f.keys():
                tensors[canonical_hf_key(key)] = f.get_tensor(key)
    return tensors


def load_hf_params(
    module_factory: Callable[[], nnx.Module],
    tensors: Mapping[str, np.ndarray | jax.Array],
    *,
    source: str = "checkpoint",
    allow_unused: tuple[str, ...] = (),
) -> nnx.Module:
    """Builds `module_factory()` abstractly (no random init) and fills every parameter from HF `tensors`.

    Raises KeyError naming the missing HF key, ValueError on a shape mismatch, and ValueError listing HF keys that
    no parameter used (unless they start with one of `allow_unused`). Params keep the dtype the factory declares.
    """
    abstract = nnx.eval_shape(module_factory)
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    used: set[str] = set()
    for path, variable in flat.items():
        key = hf_key_for_path(path)
        if key not in tensors:
            raise KeyError(f"{source}: missing tensor {key!r} for parameter {'.'.join(map(str, path))}")
        value = to_param_layout(path, tensors[key])
        expected = tuple(variable.value.shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)} after layout conversion, "
                f"parameter {'.'.join(map(str, path))} expects {expected}"
            )
        variable.value = jnp.asarray(value, dtype=variable.value.dtype)
        used.add(key)
    unused = sorted(k for k in tensors if k not in used and not k.startswith(allow_unused))
    if unused:
        raise ValueError(f"{source}: tensors not used by the model: {unused[:10]}{' ...' if len(unused) > 10 else ''}")
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
