"""Flax Llama and Llama-3.2-Vision (Mllama): weight porting, the public API, the KV-cache sampler, sharding."""
from jaxrl_vlm.models.api import (LlamaModel, continue_sampling, default_model_path, generate, load,
                                  register_architecture, sample)
from jaxrl_vlm.models.config import LlamaConfig
from jaxrl_vlm.models.image_processing import MllamaImageProcessorConfig, preprocess
from jaxrl_vlm.models.mllama import MllamaConfig, mllama_11b_config
from jaxrl_vlm.models.mllama_port import MllamaModel

__all__ = [
    "LlamaConfig", "LlamaModel", "MllamaConfig", "MllamaImageProcessorConfig", "MllamaModel", "continue_sampling",
    "default_model_path", "generate", "load", "mllama_11b_config", "preprocess", "register_architecture", "sample",
]
