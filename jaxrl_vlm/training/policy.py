"""What PPO needs from a loaded Llama or Mllama model, as pure functions over a params pytree.

`PolicyModel` is hashable (a static jit argument). It gives the final hidden states of a batch of sequences
(teacher forcing, for scoring replies and values), logits from hidden states, the image encoding of Mllama
(computed once per batch of conversations, inside the same jit so that training reaches the vision tower), and the
sampler's `DecodeModel` for the rollout. Params and compute dtypes are chosen here (e.g. fp32 master weights with
bf16 compute).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax

from jaxrl_vlm.models import llama, mllama
from jaxrl_vlm.models.api import LlamaModel
from jaxrl_vlm.models.config import LlamaConfig
from jaxrl_vlm.models.image_processing import MllamaImageProcessorConfig
from jaxrl_vlm.models.mllama_port import MllamaModel
from jaxrl_vlm.models.sharding import MeshRules


@dataclasses.dataclass(frozen=True)
class PolicyModel:
    """A Llama (config: LlamaConfig) or Mllama (config: MllamaConfig) causal LM seen as a policy."""

    config: Any
    mesh_rules: MeshRules | None = None
    image_config: MllamaImageProcessorConfig | None = None

    @property
    def is_vision(self) -> bool:
        """Whether the model takes images (Mllama)."""
        return not isinstance(self.config, LlamaConfig)

    @property
    def hidden_size(self) -> int:
        """Width D of the final hidden states."""
        return (self.config.text if self.is_vision else self.config).hidden_size

    @property
    def decoder(self) -> Any:
        """The sampler's `DecodeModel` (KV-cache prefill/decode step) with the same dtypes."""
        if self.is_vision:
            return mllama.MllamaDecoder(self.config.with_remat(False), self.mesh_rules, self.image_config)
        return llama.LlamaDecoder(self.config.with_remat(False), self.mesh_rules)

    def vision_inputs(self, images: jax.Array, input_ids: jax.Array) -> dict[str, jax.Array]:
        """Mllama inputs (pixel_values, aspect_ratio_ids, aspect_ratio_mask, cross_attention_mask) of one image per
        row on the device: images uint8[B, H, W, 3] shown by the token rows int32[B, S]
        (`mllama.vision_inputs_on_device`)."""
        return mllama.vision_inputs_on_device(images, input_ids, self.config, self.image_config)

    def encode_images(self, params: Any, vision: Mapping[str, jax.Array] | None,
                      cross_attention_mask: jax.Array | None = None) -> Any:
        """Mllama cross-attention state of vision arrays (pixel_values float32[B,M,T,C,S,S], aspect_ratio_ids /
        aspect_ratio_mask int32) for token rows described by cross_attention_mask int32[B,S,M,T]; None for a text
        model or without images."""
        if not self.is_vision or not vision:
            return None
        return mllama.encode_images(params, vision["pixel_values"], vision["aspect_ratio_ids"],
                                    vision["aspect_ratio_mask"], cross_attention_mask, self.config, self.mesh_rules)

    def hidden(self, params: Any, input_ids: jax.Array, token_mask: jax.Array, cross: Any = None) -> jax.Array:
        """Final hidden states [B,T,D] (compute dtype) of int32[B,T] ids with token_mask bool[B,T], no cache."""
        if self.is_vision:
            hidden, _ = mllama.hidden_states(params, input_ids, token_mask, self.config, cross,
                                             mesh_rules=self.mesh_rules)
        else:
            hidden, _ = llama.hidden_states(params, input_ids, token_mask, self.config, mesh_rules=self.mesh_rules)
        return hidden

    def logits(self, params: Any, hidden: jax.Array) -> jax.Array:
        """float32 logits [..., V] of hidden states [..., D]."""
        if self.is_vision:
            return mllama.lm_logits(params, hidden, self.config)
        return llama.lm_logits(params, hidden, self.config)


def policy_model(model: Any, param_dtype: str, compute_dtype: str, remat: bool = False) -> PolicyModel:
    """The `PolicyModel` of a loaded `LlamaModel` / `MllamaModel`; remat recomputes decoder layers in backward."""
    config = model.config.with_dtypes(param_dtype, compute_dtype).with_remat(remat)
    if isinstance(model, LlamaModel):
        return PolicyModel(config, model.mesh_rules)
    if isinstance(model, MllamaModel):
        return PolicyModel(config, model.mesh_rules, model.image_config)
    raise NotImplementedError(f"PPO supports Llama and Mllama models, got {type(model).__name__}")
