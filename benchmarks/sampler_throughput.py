"""Generated tokens/s of the JAX KV-cache sampler vs transformers' `generate` (greedy, torch CPU) on SmolLM2-135M.

Same random 64-token prompts for both, 64 new tokens, EOS disabled so every row generates all tokens. Each dtype
(float32, bfloat16) is compared with transformers in the same dtype.
Usage: PYTHONPATH=. python benchmarks/sampler_throughput.py [--batches 1 8 32] [--dtypes float32 bfloat16] [--out PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import numpy as np

from jaxrl_vlm.models import api

PROMPT_LEN = 64
NEW_TOKENS = 64


def time_ours(model: api.LlamaModel, ids: np.ndarray, repeats: int) -> float:
    """Best wall-clock seconds of `api.generate` over `repeats` runs after one compile run."""
    mask = np.ones_like(ids)
    api.generate(model, ids, mask, max_new_tokens=NEW_TOKENS)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = api.generate(model, ids, mask, max_new_tokens=NEW_TOKENS)
        best = min(best, time.perf_counter() - start)
        assert out.shape == ids.shape[:1] + (NEW_TOKENS,)
    return best


def time_torch(model, ids: np.ndarray, repeats: int) -> float:
    """Best wall-clock seconds of transformers' greedy `generate` over `repeats` runs after one warm-up."""
    import torch

    x = torch.tensor(ids, dtype=torch.long)
    mask = torch.ones_like(x)
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(input_ids=x[:, :8], attention_mask=mask[:, :8], max_new_tokens=4, do_sample=False,
                       pad_token_id=0)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(input_ids=x, attention_mask=mask, **kwargs)
            best = min(best, time.perf_counter() - start)
            assert out.shape[1] == ids.shape[1] + NEW_TOKENS
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "sampler_throughput.json"))
    args = parser.parse_args()

    import torch
    import transformers

    path = api.default_model_path()
    rows = []
    for dtype in args.dtypes:
        model = api.load(path, dtype=dtype)
        model = api.LlamaModel(dataclasses.replace(model.config, eos_token_ids=()), model.params)
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=getattr(torch, dtype)).eval()
        reference.generation_config.eos_token_id = None
        rng = np.random.RandomState(0)
        for batch in args.batches:
            ids = rng.randint(3, model.config.vocab_size, (batch, PROMPT_LEN)).astype(np.int32)
            ours = time_ours(model, ids, args.repeats)
            theirs = time_torch(reference, ids, args.repeats)
            tokens = batch * NEW_TOKENS
            rows.append({"dtype": dtype, "batch": batch, "jax_tokens_per_s": tokens / ours,
                         "torch_tokens_per_s": tokens / theirs, "ratio": theirs / ours, "jax_seconds": ours,
                         "torch_seconds": theirs})
            print(f"{dtype} batch {batch}: jax {tokens / ours:8.1f} tok/s  torch {tokens / theirs:8.1f} tok/s  "
                  f"ratio {theirs / ours:.2f}", flush=True)

    print(f"\n{'dtype':>8} | {'batch':>5} | {'jax tok/s':>10} | {'torch tok/s':>11} | {'jax/torch':>9}")
    for r in rows:
        print(f"{r['dtype']:>8} | {r['batch']:>5} | {r['jax_tokens_per_s']:>10.1f} | "
              f"{r['torch_tokens_per_s']:>11.1f} | {r['ratio']:>9.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to each dtype)", "prompt_len": PROMPT_LEN,
                   "new_tokens": NEW_TOKENS, "greedy": True, "device": str(jax.devices()[0]),
                   "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "machine": platform.processor() or platform.machine(), "results": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
