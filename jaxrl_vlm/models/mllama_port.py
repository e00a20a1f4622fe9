"""Hugging Face Mllama (Llama-3.2-Vision) checkpoints -> `jaxrl_vlm.models.mllama` params.

`MLLAMA_KEY_TABLE` says which HF tensor fills which param and how (see `jaxrl_vlm.models.port.tensors.KeyRule`).
The text layers of the HF file are numbered 0..L-1 with cross-attention layers interleaved, while our params stack
self- and cross-attention layers separately, so `MllamaTensorReader` renames `model.language_model.layers.{i}.*` to
`text_self.{j}.*` / `text_cross.{j}.*` (j = index within its stack) before the table is applied.

Both on-disk layouts are read: transformers 5 (`model.vision_model.*`, `model.language_model.*`,
`model.multi_modal_projector.*`, `lm_head.*`) and the layout of the published Llama-3.2-11B-Vision files
(`vision_model.*`, `language_model.model.*`, `language_model.lm_head.*`, `multi_modal_projector.*`).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxrl_vlm.models import mllama
from jaxrl_vlm.models.config import dtype_from_name
from jaxrl_vlm.models.mllama import MllamaConfig
from jaxrl_vlm.models.port.llama import read_config_json
from jaxrl_vlm.models.port.safetensors_io import CheckpointReader
from jaxrl_vlm.models.port.tensors import KeyRule, TensorReader, load_tree

LEGACY_PREFIXES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_model.", "model.vision_model."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
_TEXT_LAYER = re.compile(r"model\.language_model\.layers\.(\d+)\.(.+)")


def canonical_hf_key(key: str) -> str:
    """A key of either on-disk layout in the transformers 5 layout."""
    for old, new in LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


class MllamaTensorReader:
    """A `TensorReader` over an HF Mllama checkpoint whose names are canonical and whose text layers are
    renamed to `text_self.{j}.*` / `text_cross.{j}.*` following `config.cross_attention_layers`."""

    def __init__(self, reader: TensorReader, config: MllamaConfig):
        self._reader = reader
        cross = {layer: j for j, layer in enumerate(config.cross_attention_layers)}
        plain = {layer: j for j, layer in enumerate(config.self_attention_layers)}
        self._names: dict[str, str] = {}
        for key in reader.keys():
            name = canonical_hf_key(key)
            match = _TEXT_LAYER.fullmatch(name)
            if match:
                layer, rest = int(match.group(1)), match.group(2)
                if layer in cross:
                    name = f"text_cross.{cross[layer]}.{rest}"
                elif layer in plain:
                    name = f"text_self.{plain[layer]}.{rest}"
                else:
                    raise ValueError(f"checkpoint tensor {key!r} belongs to text layer {layer}, but the config has "
                                     f"{config.text.num_layers} layers")
            self._names[name] = key

    def keys(self) -> list[str]:
        """Renamed tensor names."""
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of the renamed tensor `name`."""
        return self._reader.shape(self._names[name])

    def read(self, name: str) -> np.ndarray:
        """The renamed tensor `name`."""
        return self._reader.read(self._names[name])


def _vision_rules(hf: str, path: str, gated: bool) -> list[KeyRule]:
    pre = rf"model\.vision_model\.{hf}\.layers\.(?P<layer>\d+)\."
    name = f"model.vision_model.{hf}.layers.{{layer}}."
    rows = [
        ("self_attn.q_proj.weight", ("attn", "q"), "heads_in"),
        ("self_attn.k_proj.weight", ("attn", "k"), "heads_in"),
        ("self_attn.v_proj.weight", ("attn", "v"), "heads_in"),
        ("self_attn.o_proj.weight", ("attn", "o"), "heads_out"),
        ("mlp.fc1.weight", ("mlp", "fc1"), "transpose"),
        ("mlp.fc1.bias", ("mlp", "fc1_bias"), "copy"),
        ("mlp.fc2.weight", ("mlp", "fc2"), "transpose"),
        ("mlp.fc2.bias", ("mlp", "fc2_bias"), "copy"),
        ("input_layernorm.weight", ("attn_norm", "scale"), "copy"),
        ("input_layernorm.bias", ("attn_norm", "bias"), "copy"),
        ("post_attention_layernorm.weight", ("mlp_norm", "scale"), "copy"),
        ("post_attention_layernorm.bias", ("mlp_norm", "bias"), "copy"),
    ]
    if gated:
        rows += [("gate_attn", ("attn_gate",), "copy"), ("gate_ffn", ("mlp_gate",), "copy")]
    return [KeyRule(pre + re.escape(suffix), ("vision", path, *sub), layout, name + suffix)
            for suffix, sub, layout in rows]


def _text_rules() -> list[KeyRule]:
    plain = [
        ("input_layernorm.weight", ("attn_norm",), "copy"),
        ("self_attn.q_proj.weight", ("attn", "q"), "heads_in"),
        ("self_attn.k_proj.weight", ("attn", "k"), "heads_in"),
        ("self_attn.v_proj.weight", ("attn", "v"), "heads_in"),
        ("self_attn.o_proj.weight", ("attn", "o"), "heads_out"),
        ("post_attention_layernorm.weight", ("mlp_norm",), "copy"),
        ("mlp.gate_proj.weight", ("mlp", "gate"), "transpose"),
        ("mlp.up_proj.weight", ("mlp", "up"), "transpose"),
        ("mlp.down_proj.weight", ("mlp", "down"), "transpose"),
    ]
    cross = [
        ("input_layernorm.weight", ("attn_norm",), "copy"),
        ("cross_attn.q_proj.weight", ("attn", "q"), "heads_in"),
        ("cross_attn.k_proj.weight", ("attn", "k"), "heads_in"),
        ("cross_attn.v_proj.weight", ("attn", "v"), "heads_in"),
        ("cross_attn.o_proj.weight", ("attn", "o"), "heads_out"),
        ("cross_attn.q_norm.weight", ("attn", "q_norm"), "copy"),
        ("cross_attn.k_norm.weight", ("attn", "k_norm"), "copy"),
        ("cross_attn_attn_gate", ("attn_gate",), "copy"),
        ("post_attention_layernorm.weight", ("mlp_norm",), "copy"),
        ("mlp.gate_proj.weight", ("mlp", "gate"), "transpose"),
        ("mlp.up_proj.weight", ("mlp", "up"), "transpose"),
        ("mlp.down_proj.weight", ("mlp", "down"), "transpose"),
        ("cross_attn_mlp_gate", ("mlp_gate",), "copy"),
    ]
    rules = [KeyRule(r"text_self\.(?P<layer>\d+)\." + re.escape(s), ("layers", *p), lay, "text_self.{layer}." + s)
             for s, p, lay in plain]
    rules += [KeyRule(r"text_cross\.(?P<layer>\d+)\." + re.escape(s), ("cross_layers", *p), lay,
                      "text_cross.{layer}." + s) for s, p, lay in cross]
    return rules


def _single(hf: str, path: tuple[str, ...], layout: str = "copy") -> KeyRule:
    return KeyRule(re.escape(hf), path, layout, hf)


_V = "model.vision_model."
MLLAMA_KEY_TABLE: tuple[KeyRule, ...] = (
    _single(_V + "patch_embedding.weight", ("vision", "patch_embed")),
    _single(_V + "class_embedding", ("vision", "class_embed")),
    _single(_V + "gated_positional_embedding.embedding", ("vision", "pos_embed")),
    _single(_V + "gated_positional_embedding.gate", ("vision", "pos_gate")),
    _single(_V + "gated_positional_embedding.tile_embedding.weight", ("vision", "tile_pos_embed")),
    _single(_V + "pre_tile_positional_embedding.embedding.weight", ("vision", "pre_tile_embed")),
    _single(_V + "pre_tile_positional_embedding.gate", ("vision", "pre_tile_gate")),
    _single(_V + "post_tile_positional_embedding.embedding.weight", ("vision", "post_tile_embed")),
    _single(_V + "post_tile_positional_embedding.gate", ("vision", "post_tile_gate")),
    _single(_V + "layernorm_pre.weight", ("vision", "pre_norm", "scale")),
    _single(_V + "layernorm_pre.bias", ("vision", "pre_norm", "bias")),
    _single(_V + "layernorm_post.weight", ("vision", "post_norm", "scale")),
    _single(_V + "layernorm_post.bias", ("vision", "post_norm", "bias")),
    *_vision_rules("transformer", "local", gated=False),
    *_vision_rules("global_transformer", "global", gated=True),
    _single("model.multi_modal_projector.weight", ("projector", "kernel"), "transpose"),
    _single("model.multi_modal_projector.bias", ("projector", "bias")),
    _single("model.language_model.embed_tokens.weight", ("embed",)),
    *_text_rules(),
    _single("model.language_model.norm.weight", ("final_norm",)),
    _single("lm_head.weight", ("lm_head",), "transpose"),
)


def load_params(reader: TensorReader, config: MllamaConfig, mesh: Mesh | None = None) -> dict[str, Any]:
    """Params of `config` from a reader of HF-named Mllama tensors, each leaf placed on its sharding over `mesh`.

    ValueError names an unknown checkpoint tensor, a missing tensor or a shape mismatch.
    """
    return load_tree(MllamaTensorReader(reader, config), MLLAMA_KEY_TABLE, mllama.param_shapes(config),
                     mllama.param_logical_axes(config), dtype_from_name(config.text.param_dtype), mesh)


def load_hf_directory(directory: str, dtype: str = "float32", compute_dtype: str | None = None,
                      mesh: Mesh | None = None) -> tuple[MllamaConfig, dict[str, Any]]:
    """(config, params) of an HF `MllamaForConditionalGeneration` directory (config.json + safetensors)."""
    hf_config = read_config_json(directory)
    if hf_config.get("model_type") != "mllama":
        raise ValueError(f"{directory}/config.json has model_type {hf_config.get('model_type')!r}, expected 'mllama'")
    config = MllamaConfig.from_hf_dict(hf_config, dtype, compute_dtype)
    return config, load_params(CheckpointReader(directory), config, mesh)
