"""Llama checkpoints (HF safetensors directory or GGUF file) <-> `jaxrl_vlm.models.llama` params.

`LLAMA_KEY_TABLE` is the single place that says which HF tensor fills which param and how.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxrl_vlm.models import llama
from jaxrl_vlm.models.config import LlamaConfig, dtype_from_name
from jaxrl_vlm.models.port.gguf_io import GGUFReaderLlama
from jaxrl_vlm.models.port.safetensors_io import CheckpointReader, write_checkpoint
from jaxrl_vlm.models.port.tensors import KeyRule, iter_hf_tensors, load_tree

_L = r"model\.layers\.(?P<layer>\d+)\."
LLAMA_KEY_TABLE: tuple[KeyRule, ...] = (
    KeyRule(r"model\.embed_tokens\.weight", ("embed",), "copy", "model.embed_tokens.weight"),
    KeyRule(_L + r"input_layernorm\.weight", ("layers", "attn_norm"), "copy",
            "model.layers.{layer}.input_layernorm.weight"),
    KeyRule(_L + r"self_attn\.q_proj\.weight", ("layers", "attn", "q"), "heads_in",
            "model.layers.{layer}.self_attn.q_proj.weight"),
    KeyRule(_L + r"self_attn\.k_proj\.weight", ("layers", "attn", "k"), "heads_in",
            "model.layers.{layer}.self_attn.k_proj.weight"),
    KeyRule(_L + r"self_attn\.v_proj\.weight", ("layers", "attn", "v"), "heads_in",
            "model.layers.{layer}.self_attn.v_proj.weight"),
    KeyRule(_L + r"self_attn\.o_proj\.weight", ("layers", "attn", "o"), "heads_out",
            "model.layers.{layer}.self_attn.o_proj.weight"),
    KeyRule(_L + r"post_attention_layernorm\.weight", ("layers", "mlp_norm"), "copy",
            "model.layers.{layer}.post_attention_layernorm.weight"),
    KeyRule(_L + r"mlp\.gate_proj\.weight", ("layers", "mlp", "gate"), "transpose",
            "model.layers.{layer}.mlp.gate_proj.weight"),
    KeyRule(_L + r"mlp\.up_proj\.weight", ("layers", "mlp", "up"), "transpose",
            "model.layers.{layer}.mlp.up_proj.weight"),
    KeyRule(_L + r"mlp\.down_proj\.weight", ("layers", "mlp", "down"), "transpose",
            "model.layers.{layer}.mlp.down_proj.weight"),
    KeyRule(r"model\.norm\.weight", ("final_norm",), "copy", "model.norm.weight"),
    KeyRule(r"lm_head\.weight", ("lm_head",), "transpose", "lm_head.weight"),
)
_IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


def key_table(config: LlamaConfig) -> tuple[KeyRule, ...]:
    """The key table rows that apply to `config` (no lm_head row with tied embeddings)."""
    if config.tie_word_embeddings:
        return tuple(r for r in LLAMA_KEY_TABLE if r.path != ("lm_head",))
    return LLAMA_KEY_TABLE


def read_config_json(directory: str) -> dict[str, Any]:
    """The parsed config.json of an HF checkpoint directory; FileNotFoundError names the missing file."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    with open(path) as f:
        return json.load(f)


def load_params(reader: Any, config: LlamaConfig, mesh: Mesh | None = None) -> dict[str, Any]:
    """Params of `config` from a tensor reader (HF names), each leaf placed on its sharding over `mesh`."""
    ignore = _IGNORED + ((r"lm_head\.weight",) if config.tie_word_embeddings else ())
    return load_tree(reader, key_table(config), llama.param_shapes(config), llama.param_logical_axes(config),
                     dtype_from_name(config.param_dtype), mesh, ignore)


def load_hf_directory(directory: str, dtype: str = "float32", compute_dtype: str | None = None,
                      mesh: Mesh | None = None) -> tuple[LlamaConfig, dict[str, Any]]:
    """(config, params) of a `LlamaForCausalLM` HF checkpoint directory."""
    config = LlamaConfig.from_hf_dict(read_config_json(directory)).with_dtypes(dtype, compute_dtype)
    return config, load_params(CheckpointReader(directory), config, mesh)


def load_gguf(path: str, dtype: str = "float32", compute_dtype: str | None = None,
              mesh: Mesh | None = None) -> tuple[LlamaConfig, dict[str, Any]]:
    """(config, params) of a llama GGUF file, dequantised to `dtype`."""
    reader = GGUFReaderLlama(path)
    config = LlamaConfig.from_hf_dict(reader.config).with_dtypes(dtype, compute_dtype)
    return config, load_params(reader, config, mesh)


def export_hf_directory(params: dict[str, Any], config: LlamaConfig, directory: str,
                        max_shard_bytes: int | None = None, dtype: str | None = None) -> list[str]:
    """Write params as an HF `LlamaForCausalLM` directory (config.json + safetensors) that transformers loads.

    Only process 0 writes when running multi-process. Returns the file names written.
    """
    import jax

    out_dtype = np.dtype(dtype_from_name(dtype or config.param_dtype))
    tensors = iter_hf_tensors(params, key_table(config), out_dtype)
    if jax.process_index() != 0:
        for _ in tensors:
            pass
        return []
    files = write_checkpoint(directory, tensors, max_shard_bytes)
    hf_config = config.to_hf_dict()
    hf_config["torch_dtype"] = dtype or config.param_dtype
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=1)
    return files + ["config.json"]
