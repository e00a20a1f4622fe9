"""Models from their architecture alone: params as `jax.ShapeDtypeStruct`s carrying their shardings, no weight read.

`abstract_model(path, dtype=..., mesh=...)` builds the same model object `api.load` returns (`LlamaModel`,
`MllamaModel`: config, decoder, mesh rules) over abstract params, so every program of a job can be lowered and
compiled (`jax.jit(f).lower(...)`) for a mesh of devices that this host does not have (a TPU topology, a GPU node),
without host or device memory for the weights. `path` is what `api.load` takes: a directory with config.json (its
weights need not be there: configs/models/llama-3.2-11b-vision-instruct ships only the architecture) or a llama
`.gguf` file (its header is read).
"""
from __future__ import annotations

import os
from typing import Any

import jax
from jax.sharding import Mesh

from jaxrl_vlm.models import llama, mllama
from jaxrl_vlm.models.api import LlamaModel
from jaxrl_vlm.models.config import LlamaConfig, dtype_from_name
from jaxrl_vlm.models.mllama_port import MllamaModel
from jaxrl_vlm.models.image_processing import PREPROCESSOR_CONFIG_NAME, MllamaImageProcessorConfig
from jaxrl_vlm.models.port.gguf_io import GGUFReaderLlama
from jaxrl_vlm.models.port.llama import read_config_json
from jaxrl_vlm.models.sharding import tree_shardings

_is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def abstract_params(shapes: Any, axes: Any, dtype: Any, mesh: Mesh) -> Any:
    """Tree of `jax.ShapeDtypeStruct`s (dtype, each with the NamedSharding of its logical axes on `mesh`) for a
    tree of shapes (tuples of ints) and the matching tree of logical axes."""
    shardings = tree_shardings(shapes, axes, mesh)
    return jax.tree_util.tree_map(lambda shape, sharding: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding),
                                  shapes, shardings, is_leaf=_is_shape)


def abstract_model(path: str, *, dtype: str = "float32", mesh: Mesh) -> LlamaModel | MllamaModel:
    """The model object of `path` (config.json directory or .gguf file) with abstract params of `dtype` sharded on
    `mesh`. FileNotFoundError names a missing config; ValueError an architecture other than Llama / Mllama."""
    if path.endswith(".gguf"):
        hf_config = GGUFReaderLlama(path).config
    else:
        hf_config = read_config_json(path)
    if hf_config.get("model_type") == "mllama":
        config = mllama.MllamaConfig.from_hf_dict(hf_config, dtype)
        params = abstract_params(mllama.param_shapes(config), mllama.param_logical_axes(config),
                                 dtype_from_name(dtype), mesh)
        image_config = None
        if os.path.isfile(os.path.join(path, PREPROCESSOR_CONFIG_NAME)):
            image_config = MllamaImageProcessorConfig.from_pretrained_dir(path)
        return MllamaModel(config, params, mesh, image_config)
    if hf_config.get("model_type") == "llama" or "LlamaForCausalLM" in (hf_config.get("architectures") or []):
        config = LlamaConfig.from_hf_dict(hf_config).with_dtypes(dtype)
        params = abstract_params(llama.param_shapes(config), llama.param_logical_axes(config),
                                 dtype_from_name(dtype), mesh)
        return LlamaModel(config, params, mesh)
    raise ValueError(f"{path}: architecture {hf_config.get('architectures')} / model_type "
                     f"{hf_config.get('model_type')!r} cannot be planned; Llama and Mllama can")
