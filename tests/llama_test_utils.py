"""Shared helpers for the Llama tests: tiny random transformers checkpoints and reference logits."""
from __future__ import annotations

import numpy as np

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}


def tiny_hf_llama(directory: str, *, tied: bool, seed: int = 0, max_shard_size: str | None = "40KB",
                  num_heads: int = 4, num_kv_heads: int = 2, vocab_size: int = 128):
    """Save a tiny random transformers LlamaForCausalLM (llama3 rope scaling, GQA) to `directory`; return it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, max_position_embeddings=128,
        tie_word_embeddings=tied, rope_parameters=dict(LLAMA3_ROPE), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(directory, **kwargs)
    return model


def left_padded_batch(rng: np.random.RandomState, lengths: list[int], vocab: int, low: int = 3,
                      pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random left-padded int32 ids [B, max(lengths)] and int32 mask."""
    width = max(lengths)
    ids = np.full((len(lengths), width), pad_id, np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = rng.randint(low, vocab, n)
        mask[row, width - n:] = 1
    return ids, mask


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits [B,T,V] of a left-padded batch with position ids from the mask (as in `generate`)."""
    import torch

    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.float().numpy()
