"""Configuration of a Llama-style decoder (also the text decoder of Mllama).

`LlamaConfig` is a frozen, hashable dataclass so it can be a static argument of `jax.jit`.
It is built from a Hugging Face `config.json` dict (`from_hf_dict`) and written back (`to_hf_dict`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_from_name(name: str) -> Any:
    """Map 'float32' / 'bfloat16' / 'float16' to the jnp dtype; ValueError names an unknown value."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _as_tuple_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama decoder stack.

    `rope_scaling` is a tuple of (key, value) pairs (hashable) or None; `eos_token_ids` a tuple of ids.
    `param_dtype` is the storage dtype of the weights, `compute_dtype` the dtype of matmul inputs
    (norms, softmax and logits are always computed in float32). `remat`: recompute each decoder layer's activations
    in the backward pass (gradient checkpointing) instead of keeping them, for training.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        dtype_from_name(self.param_dtype)
        dtype_from_name(self.compute_dtype)

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        """The rope scaling parameters as a dict (None when plain RoPE)."""
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @property
    def pad_id(self) -> int:
        """Token id used to pad generated sequences: pad_token_id, else the first EOS id, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_ids[0] if self.eos_token_ids else 0

    def with_dtypes(self, param_dtype: str, compute_dtype: str | None = None) -> "LlamaConfig":
        """Copy with other storage / compute dtypes (compute defaults to the storage dtype)."""
        return dataclasses.replace(self, param_dtype=param_dtype, compute_dtype=compute_dtype or param_dtype)

    def with_remat(self, remat: bool) -> "LlamaConfig":
        """Copy that recomputes (True) or keeps (False) each layer's activations for the backward pass."""
        return dataclasses.replace(self, remat=remat)

    @classmethod
    def from_hf_dict(cls, cfg: Mapping[str, Any], **overrides: Any) -> "LlamaConfig":
        """Build from a transformers `LlamaConfig` dict (config.json, or Mllama's `text_config`).

        Reads rope parameters from transformers-5 `rope_parameters` or the older `rope_theta` + `rope_scaling`.
        """
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        missing = [k for k in required if k not in cfg]
        if missing:
            raise ValueError(f"config is missing required key(s) {missing}")
        rope = dict(cfg.get("rope_parameters") or {})
        scaling = cfg.get("rope_scaling") or None
        if scaling:
            rope.update(scaling)
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"unsupported rope_type {rope_type!r} (supported: 'default', 'llama3')")
        rope_scaling = None
        if rope_type == "llama3":
            keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            absent = [k for k in keys if k not in rope]
            if absent:
                raise ValueError(f"llama3 rope scaling is missing key(s) {absent}")
            rope_scaling = (("rope_type", "llama3"),) + tuple((k, float(rope[k])) for k in keys)
        num_heads = int(cfg["num_attention_heads"])
        fields = dict(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // num_heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=_as_tuple_ids(cfg.get("eos_token_id")),
            pad_token_id=cfg.get("pad_token_id"),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers `LlamaForCausalLM` config.json dict."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = dict(self.rope_scaling, rope_theta=self.rope_theta)
            for k in ("original_max_position_embeddings",):
                rope[k] = int(rope[k])
        eos: Any = list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0]
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos if self.eos_token_ids else None,
            "pad_token_id": self.pad_token_id,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": self.param_dtype,
        }
