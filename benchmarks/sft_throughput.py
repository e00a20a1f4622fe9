"""SFT training throughput: our jitted SFT step vs a PyTorch/transformers training step, same model, batch and CPU.

Both sides train SmolLM2-135M-Instruct (the embedded GGUF, dequantised to float32) on the same token batch with
AdamW and gradient clipping at 1.0: transformers computes the causal-LM loss with `labels` and steps
`torch.optim.AdamW`; ours runs `make_sft_step` (loss, grads, clipping, AdamW in one jit, donated state).
Timing excludes the first (compiling / warm-up) steps. Prints a table and writes benchmarks/results/sft_throughput.json.

    python benchmarks/sft_throughput.py [--batch 4] [--seq 256] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np


def _batch(batch: int, seq: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(batch, seq)).astype(np.int32)
    loss_mask = np.zeros((batch, seq), bool)
    loss_mask[:, seq // 2:] = True
    return ids, np.ones((batch, seq), bool), loss_mask


def bench_jax(path: str, ids, attention, loss_mask, steps: int) -> float:
    """Seconds per step of our SFT step (after one compile step)."""
    import optax

    from jaxrl_vlm.models import api, llama
    from jaxrl_vlm.training.sft_step import init_train_state, make_sft_step

    model = api.load(path)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))
    apply = lambda p, i, m: llama.forward(p, i, m, model.config)
    step = jax.jit(make_sft_step(apply, tx), donate_argnums=0)
    state = init_train_state(model.params, tx)
    batch = {"input_ids": jax.numpy.asarray(ids), "attention_mask": jax.numpy.asarray(attention),
             "loss_mask": jax.numpy.asarray(loss_mask)}
    state, metrics = step(state, batch, jax.random.key(0))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.key(0))
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def bench_torch(path: str, ids, attention, loss_mask, steps: int) -> float:
    """Seconds per step of a transformers training step (after one warm-up step)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    input_ids = torch.tensor(ids, dtype=torch.long)
    labels = torch.where(torch.tensor(loss_mask), input_ids, torch.full_like(input_ids, -100))
    mask = torch.tensor(attention, dtype=torch.long)

    def one_step():
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    """Run both sides and report tokens/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sft_throughput.json"))
    args = parser.parse_args()

    from jaxrl_vlm.config import resolve_model_path

    path = resolve_model_path("embedded:smollm2")
    ids, attention, loss_mask = _batch(args.batch, args.seq, 49152)
    tokens = args.batch * args.seq
    ours = bench_jax(path, ids, attention, loss_mask, args.steps)
    theirs = bench_torch(path, ids, attention, loss_mask, args.steps)
    rows = [("jaxrl_vlm SFT step (jit)", ours), ("transformers + torch.optim.AdamW", theirs)]
    print(f"SmolLM2-135M SFT, batch {args.batch} x {args.seq} tokens, {args.steps} timed steps, "
          f"{jax.device_count()} JAX device(s), {os.cpu_count()} CPU(s)")
    print(f"{'implementation':36s}{'s/step':>10s}{'tokens/s':>12s}")
    for name, seconds in rows:
        print(f"{name:36s}{seconds:10.2f}{tokens / seconds:12.1f}")
    print(f"ratio (ours / transformers tokens/s): {theirs / ours:.2f}x")
    result = {"model": "SmolLM2-135M-Instruct (float32)", "batch": args.batch, "seq": args.seq,
              "timed_steps": args.steps, "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
              "ours_s_per_step": ours, "transformers_s_per_step": theirs,
              "ours_tokens_per_s": tokens / ours, "transformers_tokens_per_s": tokens / theirs,
              "ratio": theirs / ours}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
