"""Hugging Face Mllama (Llama-3.2-Vision) checkpoints -> `jaxrl_vlm.models.mllama` params, and `MllamaModel`,
the loaded model that `jaxrl_vlm.models.api.load` returns for `MllamaForConditionalGeneration` directories.

`MLLAMA_KEY_TABLE` says which HF tensor fills which param and how (see `jaxrl_vlm.models.port.tensors.KeyRule`).
The text layers of the HF file are numbered 0..L-1 with cross-attention layers interleaved, while our params stack
self- and cross-attention layers separately, so `MllamaTensorReader` renames `model.language_model.layers.{i}.*` to
`text_self.{j}.*` / `text_cross.{j}.*` (j = index within its stack) before the table is applied.

Both key layouts are read: transformers 5's in-memory names (`model.vision_model.*`, `model.language_model.*`,
`model.multi_modal_projector.*`, `lm_head.*`) and the on-disk names of the published Llama-3.2-11B-Vision files
(`vision_model.*`, `language_model.model.*`, `language_model.lm_head.*`, `multi_modal_projector.*`), which
transformers 5's `save_pretrained` also writes. Errors name tensors in the former layout.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxrl_vlm.models import mllama
from jaxrl_vlm.models import mllama_vision as vision_lib
from jaxrl_vlm.models.config import dtype_from_name
from jaxrl_vlm.models.image_processing import PREPROCESSOR_CONFIG_NAME, MllamaImageProcessorConfig, preprocess
from jaxrl_vlm.models.mllama import MllamaConfig
from jaxrl_vlm.models.port.llama import read_config_json
from jaxrl_vlm.models.port.safetensors_io import CheckpointReader, write_checkpoint
from jaxrl_vlm.models.port.tensors import KeyRule, TensorReader, iter_hf_tensors, load_tree
from jaxrl_vlm.models.sharding import MeshRules, pad_rows, padded_rows, put_global, to_host

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


_STACKED_TEXT = re.compile(r"(text_self|text_cross)\.(\d+)\.(.+)")


def export_hf_directory(params: dict[str, Any], config: MllamaConfig, directory: str,
                        max_shard_bytes: int | None = None, dtype: str | None = None) -> list[str]:
    """Write params as an HF `MllamaForConditionalGeneration` directory (config.json + safetensors, transformers 5
    names) that transformers loads. Every process must call it (leaves are gathered); only process 0 writes.
    Returns the file names written."""
    out_dtype = np.dtype(dtype_from_name(dtype or config.text.param_dtype))
    hf_layer = {("text_cross", j): layer for j, layer in enumerate(config.cross_attention_layers)}
    hf_layer.update({("text_self", j): layer for j, layer in enumerate(config.self_attention_layers)})

    def tensors():
        for name, array in iter_hf_tensors(params, MLLAMA_KEY_TABLE, out_dtype):
            stacked = _STACKED_TEXT.fullmatch(name)
            if stacked:
                layer = hf_layer[(stacked.group(1), int(stacked.group(2)))]
                name = f"model.language_model.layers.{layer}.{stacked.group(3)}"
            yield name, array

    if jax.process_index() != 0:
        for _ in tensors():
            pass
        return []
    files = write_checkpoint(directory, tensors(), max_shard_bytes)
    hf_config = config.to_hf_dict()
    hf_config["torch_dtype"] = dtype or config.text.param_dtype
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=1)
    return files + ["config.json"]


_text_logits = jax.jit(mllama.text_logits, static_argnames=("config", "mesh_rules"))
_encode_images = jax.jit(mllama.encode_images, static_argnames=("config",))
VISION_INPUTS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


class MllamaModel:
    """A loaded Llama-3.2-Vision model for `jaxrl_vlm.models.api`: config, params (a plain pytree), the sampler's
    decoder, and `logits` / `sampler_extra` taking the image inputs of `image_processing.preprocess` plus
    transformers' `cross_attention_mask` (see `mllama.cross_attention_mask_from_ids`)."""

    def __init__(self, config: MllamaConfig, params: dict[str, Any], mesh: Mesh | None = None,
                 image_config: MllamaImageProcessorConfig | None = None):
        self.config = config
        self.params = params
        self.mesh_rules = None if mesh is None else MeshRules(mesh)
        self.image_config = image_config or MllamaImageProcessorConfig(
            tile_size=config.vision.image_size, max_image_tiles=config.vision.max_num_tiles)
        self.decoder = mllama.MllamaDecoder(config, self.mesh_rules, self.image_config)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Token ids that end a generated sequence."""
        return self.config.text.eos_token_ids

    @property
    def pad_id(self) -> int:
        """Token id written after EOS in generated sequences."""
        return self.config.text.pad_id

    def put_batch(self, x: Any) -> jax.Array:
        """Place a host array [B, ...] on the batch sharding (or the default device without a mesh)."""
        x = np.asarray(x)
        if self.mesh_rules is None:
            return jnp.asarray(x)
        return put_global(x, self.mesh_rules.sharding(x.shape, ("batch",) + (None,) * (x.ndim - 1), "batch input"))

    def vision_inputs(self, images: Any, input_ids: Any) -> dict[str, np.ndarray]:
        """Host model inputs for nested images (a list per sample, see `image_processing.preprocess`) and the
        left-padded prompt ids int[B,S] holding one <|image|> token per image: pixel_values, aspect_ratio_ids,
        aspect_ratio_mask and cross_attention_mask, as transformers' MllamaProcessor builds them."""
        batch = preprocess(images, self.image_config)
        cross = mllama.cross_attention_mask_from_ids(np.asarray(input_ids), self.config.image_token_index,
                                                     batch.num_tiles, self.config.vision.max_num_tiles)
        return {"pixel_values": batch.pixel_values, "aspect_ratio_ids": batch.aspect_ratio_ids,
                "aspect_ratio_mask": batch.aspect_ratio_mask, "cross_attention_mask": cross}

    def _vision_arrays(self, vision: dict[str, Any]) -> dict[str, jax.Array] | None:
        unknown = sorted(set(vision) - set(VISION_INPUTS))
        if unknown:
            raise ValueError(f"unknown Mllama input(s) {unknown}; expected a subset of {list(VISION_INPUTS)}")
        given = {k: v for k, v in vision.items() if v is not None}
        if not given:
            return None
        missing = [k for k in VISION_INPUTS[:3] if k not in given]
        if missing:
            raise ValueError(f"Mllama image inputs lack {missing} (got {sorted(given)})")
        vision_lib.check_inputs(given["pixel_values"], given["aspect_ratio_ids"], given["aspect_ratio_mask"],
                                self.config.vision)
        dtypes = {"pixel_values": np.float32, "aspect_ratio_ids": np.int32, "aspect_ratio_mask": np.int32,
                  "cross_attention_mask": np.int32}
        return {k: self.put_batch(np.asarray(v, dtypes[k])) for k, v in given.items()}

    def sampler_extra(self, params: Any, **vision: Any) -> mllama.CrossAttentionState | None:
        """Cross-attention K/V of the images (computed once, reused by every decode step); None without images."""
        arrays = self._vision_arrays(vision)
        if arrays is None:
            return None
        return _encode_images(params, arrays["pixel_values"], arrays["aspect_ratio_ids"],
                              arrays["aspect_ratio_mask"], arrays.get("cross_attention_mask"), self.config)

    def logits(self, input_ids: Any, attention_mask: Any, **vision: Any) -> np.ndarray:
        """float32 logits np.ndarray[B,T,V] of left-padded int[B,T] input_ids with attention_mask [B,T] (any B: the
        rows and vision inputs are padded to the mesh's batch shards inside)."""
        rows = len(input_ids)
        padded = padded_rows(rows, self.mesh_rules)
        cross = self.sampler_extra(self.params, **{k: pad_rows(v, padded) for k, v in vision.items()})
        out = _text_logits(self.params, self.put_batch(pad_rows(input_ids, padded).astype(np.int32)),
                           self.put_batch(pad_rows(attention_mask, padded).astype(bool)), self.config, cross,
                           self.mesh_rules)
        return to_host(out)[:rows]

    def export(self, directory: str, *, max_shard_bytes: int | None = None, dtype: str | None = None) -> list[str]:
        """Write an HF `MllamaForConditionalGeneration` directory (config.json + safetensors); returns the files."""
        return export_hf_directory(self.params, self.config, directory, max_shard_bytes, dtype)


def load_model(directory: str, hf_config: dict[str, Any], dtype: str, mesh: Mesh | None) -> MllamaModel:
    """`jaxrl_vlm.models.api` loader for `MllamaForConditionalGeneration` directories (preprocessor_config.json
    is used when present)."""
    del hf_config
    config, params = load_hf_directory(directory, dtype, mesh=mesh)
    image_config = None
    if os.path.isfile(os.path.join(directory, PREPROCESSOR_CONFIG_NAME)):
        image_config = MllamaImageProcessorConfig.from_pretrained_dir(directory)
    return MllamaModel(config, params, mesh, image_config)
