"""Read a llama.cpp GGUF Llama file as Hugging Face-named float32 tensors plus an HF-style config dict.

Quantised tensors are dequantised with the `gguf` package's helpers. llama.cpp stores q_proj / k_proj rows
permuted for its interleaved RoPE; `unpermute_qk` undoes that (as transformers' GGUF loader does), giving the
rotate-half layout of HF checkpoints.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def gguf_to_hf_name(name: str) -> str:
    """HF tensor name of a GGUF Llama tensor name; ValueError for an unknown one."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.fullmatch(name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.weight"
    raise ValueError(f"unknown GGUF tensor name {name!r} for a llama model")


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. weight: [num_heads*Dh, D] -> same shape, HF rotate-half row order."""
    half = weight.shape[0] // num_heads // 2
    w = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return w.swapaxes(1, 2).reshape(weight.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


class GGUFReaderLlama:
    """HF-named float32 tensors and config dict of a GGUF llama file (tensor by tensor)."""

    def __init__(self, path: str):
        import gguf

        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file {path!r} does not exist")
        self._gguf = gguf
        self._reader = gguf.GGUFReader(path)
        arch = _field(self._reader, "general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: unsupported GGUF architecture {arch!r} (supported: 'llama')")
        self._tensors = {gguf_to_hf_name(t.name): t for t in self._reader.tensors}
        self.config = self._config_dict()

    def _config_dict(self) -> dict[str, Any]:
        r = self._reader
        embed = self._tensors["model.embed_tokens.weight"]
        hidden = int(_field(r, "llama.embedding_length"))
        heads = int(_field(r, "llama.attention.head_count"))
        cfg: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": int(_field(r, "llama.vocab_size", int(embed.shape[-1]))),
            "hidden_size": hidden,
            "intermediate_size": int(_field(r, "llama.feed_forward_length")),
            "num_hidden_layers": int(_field(r, "llama.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(_field(r, "llama.attention.head_count_kv", heads)),
            "head_dim": int(_field(r, "llama.rope.dimension_count", hidden // heads)),
            "rms_norm_eps": float(_field(r, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(_field(r, "llama.rope.freq_base", 10000.0)),
            "max_position_embeddings": int(_field(r, "llama.context_length", 2048)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": _field(r, "tokenizer.ggml.bos_token_id"),
            "eos_token_id": _field(r, "tokenizer.ggml.eos_token_id"),
            "pad_token_id": _field(r, "tokenizer.ggml.padding_token_id"),
        }
        return cfg

    def keys(self) -> list[str]:
        """HF names of all tensors."""
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        """HF-order shape of tensor `name`."""
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def read(self, name: str) -> np.ndarray:
        """Dequantised float32 tensor `name` in HF layout."""
        t = self._tensors[name]
        w = self._gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(self.shape(name))
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_qk(w, self.config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_qk(w, self.config["num_key_value_heads"])
        return w
