"""Multi-turn GP-L rollout throughput: the on-device rollout (`jaxrl_vlm.rollout.rollout`, one jit) against a host loop.

Both paths play the same B episodes (the same hands, from one `protocol.reset_batch`) of GeneralPoints-L
in-distribution with sequential revision, up to `--turns` replies per episode (an episode ends when a reply scores 5),
with the same model (the embedded SmolLM2-135M-Instruct, float32 or `--dtype bfloat16` on every path), greedy
decoding, up to `--max-new-tokens` tokens per reply, on the same device, in the same run:

- device: `rollout.rollout` of the environment-protocol task (`envs.general_points.task.make_task`, split in_dist:
  the first prompt assembled on the device from pre-tokenized pieces by `GPTask.prompt`, prefill, decode, token
  bytes, device verifier, revision suffix from the verifier's fragments, KV cache continued across turns, the
  budget's forced step), set up as `ppo_train.train_ppo` does (`protocol.reset_batch`, `policy_model(...).decoder`,
  `token_bytes.token_byte_table`); timed up to the rewards and reply lengths on the host. GP has one conversation
  per episode: the device arrays' conversation axis R is 1.
- host loops: what the reference does per turn, for the episodes not done: render each conversation with
  `tokenizer.apply_chat_template` (`prompt_tokens.gp_conversation`), tokenize, left-pad, generate (re-prefilling the
  whole conversation), decode the replies with the tokenizer, score them with the Python verifier
  (`verifier.score_response`), append reply + feedback, repeat. Two generators: our JAX KV-cache sampler
  (`api.sample`: the same model code as the device path, so the ratio isolates the rollout design) and transformers'
  `generate` on the same weights in torch (the reference's generation; skip with --no-transformers).

Greedy decoding on both sides, but the two conversations are not the same token sequences (the device assembles
pre-tokenized pieces and keeps the sampled reply tokens; the host re-tokenizes the rendered text), so replies can
differ; each path's generated tokens (incl. stop tokens) and replies played are reported, and tokens/s is generated
tokens / wall time. Episodes/s is B / wall time. Each path is run once to compile (greedy: the timed runs repeat the
same replies, so the host loop meets no new shapes; recorded as timed_runs_reproduced_warmup), then timed `--repeats`
times, alternating; the best time counts. The host loop's time is split into `api.sample` and host work.

Correctness check (asserted): the device rollout's reward for every reply it played equals `score_response` on the
tokenizer's decoding of that reply.

Usage: PYTHONPATH=. python benchmarks/rollout_throughput.py [--batch 8] [--turns 3] [--max-new-tokens 64]
[--repeats 3] [--dtype float32] [--out benchmarks/results/rollout_throughput[_bfloat16].json]; prints a table and
writes the JSON.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from typing import Any

import jax
import numpy as np

from jaxrl_vlm import rollout as rollout_lib
from jaxrl_vlm.config import base_config
from jaxrl_vlm.envs.general_points import prompt_tokens, verifier
from jaxrl_vlm.envs.general_points.task import make_task
from jaxrl_vlm.models import api, sampler
from jaxrl_vlm.models.tokenizer import load_tokenizer

from device_rollout import DevicePath, decode_reply  # benchmarks/device_rollout.py

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "rollout_throughput.json")
FACE_CARDS_AS_10 = True


def jax_generate(model: Any, max_new_tokens: int):
    """generate(ids int32[B, T] left-padded, mask bool[B, T], seed) -> (tokens int[B, N], lengths int[B]) with our
    JAX sampler (greedy)."""
    def generate(input_ids, mask, seed):
        out = api.sample(model, input_ids, mask, max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)
        return np.asarray(out.tokens), np.asarray(out.lengths)
    return generate


def torch_generate(path: str, pad_id: int, max_new_tokens: int, dtype: str):
    """The same generate signature with transformers' `generate` (greedy, torch CPU, `dtype`) on the same GGUF
    weights: the reference's generation."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=getattr(torch, dtype)).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])

    def generate(input_ids, mask, seed):
        del seed
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor(input_ids, dtype=torch.long),
                                 attention_mask=torch.tensor(mask, dtype=torch.long), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad_id).numpy()[:, input_ids.shape[1]:]
        lengths = np.array([next((k + 1 for k, t in enumerate(row) if t in eos), len(row)) for row in out])
        return out, lengths
    return generate


def host_loop(generate, tokenizer, ranks: np.ndarray, *, turns: int, pad_id: int) -> dict[str, Any]:
    """The reference's loop over turns for hands ranks int[B, 4]: render, tokenize, generate, decode, verify, append.

    Returns replies (list of B lists of str), rewards (B lists of float), generated tokens (incl. stop tokens) and
    the seconds spent in `generate` (the rest is host work: render, tokenize, pad, decode, verify), and the token
    positions prefilled (padding included).
    """
    batch = len(ranks)
    hands = [[int(r) for r in row] for row in ranks]
    replies: list[list[str]] = [[] for _ in range(batch)]
    feedbacks: list[list[str]] = [[] for _ in range(batch)]
    rewards: list[list[float]] = [[] for _ in range(batch)]
    done = [False] * batch
    generated, sample_s, prefilled = 0, 0.0, 0
    for turn in range(turns):
        live = [i for i in range(batch) if not done[i]]
        if not live:
            break
        ids = []
        for i in live:
            messages = prompt_tokens.gp_conversation(hands[i], replies[i], feedbacks[i],
                                                     face_cards_as_10=FACE_CARDS_AS_10, language_only=True)
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        width = max(map(len, ids))
        prefilled += len(live) * width
        input_ids = np.full((len(live), width), pad_id, np.int32)
        mask = np.zeros((len(live), width), bool)
        for row, x in enumerate(ids):
            input_ids[row, width - len(x):] = x
            mask[row, width - len(x):] = True
        start = time.perf_counter()
        tokens, lengths = generate(input_ids, mask, turn)
        sample_s += time.perf_counter() - start
        generated += int(lengths.sum())
        for row, i in enumerate(live):
            reply = decode_reply(tokenizer, tokens[row, :lengths[row]])
            reward, feedback = verifier.score_response(reply, hands[i], face_cards_as_10=FACE_CARDS_AS_10,
                                                       language_only=True)
            replies[i].append(reply)
            feedbacks[i].append(feedback)
            rewards[i].append(reward)
            done[i] = reward == verifier.REWARD_CORRECT
    return {"replies": replies, "rewards": rewards, "generated_tokens": generated, "sample_seconds": sample_s,
            "prefill_positions": prefilled}


def check_device_rewards(tokenizer, episodes: rollout_lib.Episodes, summary: dict[str, np.ndarray],
                         ranks: np.ndarray, eos_ids: jax.Array) -> list[list[str]]:
    """Assert that every played device reward equals the Python verifier on the decoded reply; returns the device
    replies as text (B lists)."""
    tokens = np.asarray(episodes.reply_tokens[:, 0])  # [B, R = 1, T, N]: GP's one conversation
    batch, turns, width = tokens.shape
    text_len = np.asarray(sampler.lengths_without_stop(tokens.reshape(-1, width), summary["reply_len"].reshape(-1),
                                                         eos_ids)).reshape(batch, turns)
    replies: list[list[str]] = [[] for _ in range(batch)]
    for b in range(batch):
        for t in range(turns):
            if not summary["played"][b, t]:
                continue
            text = decode_reply(tokenizer, tokens[b, t, :text_len[b, t]])
            expected, _ = verifier.score_response(text, ranks[b].tolist(), face_cards_as_10=FACE_CARDS_AS_10,
                                                  language_only=True)
            got = float(summary["reward"][b, t])
            if got != expected:
                raise AssertionError(f"episode {b} turn {t}: device reward {got} != Python verifier {expected} "
                                     f"for reply {text!r} (ranks {ranks[b].tolist()})")
            replies[b].append(text)
    return replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3, help="verify_iter: replies per episode at most")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--feedback-tokens", type=int, default=base_config("ppo", "defaults").ppo.feedback_tokens,
                        help="ppo.feedback_tokens: feedback width of the device rollout's revision chunk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-transformers", dest="transformers", action="store_false",
                        help="skip the host loop with transformers' generate (the reference's generation)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="param and compute dtype of every path")
    parser.add_argument("--out", default=None, help=f"default {RESULTS} (float32), else with a _<dtype> suffix")
    args = parser.parse_args()
    if args.out is None:
        args.out = RESULTS if args.dtype == "float32" else RESULTS.replace(".json", f"_{args.dtype}.json")

    path = api.default_model_path()
    model = api.load(path, dtype=args.dtype)
    tokenizer = load_tokenizer(path)
    task = make_task(tokenizer, "in_dist", language_only=True, verify_iter=args.turns,
                     feedback_tokens=args.feedback_tokens)
    assert task[0].conversations == 1 and task[0].turns == args.turns
    device = DevicePath(model, tokenizer, task, batch=args.batch, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
    reset_key, sample_key = jax.random.split(jax.random.key(args.seed))
    state = device.reset(reset_key)
    ranks = np.asarray(state.ranks)

    def run_device():  # GP plays one conversation per episode: drop the conversation axis (R = 1)
        episodes, summary = device(state, sample_key)
        return episodes, {k: v[:, 0] if k in ("reward", "reply_len", "played") else v for k, v in summary.items()}
    hosts = {"host_loop_jax": jax_generate(model, args.max_new_tokens)}
    if args.transformers:
        hosts["host_loop_transformers"] = torch_generate(path, model.pad_id, args.max_new_tokens, args.dtype)
    run_host = {name: functools.partial(host_loop, generate, tokenizer, ranks, turns=args.turns, pad_id=model.pad_id)
                for name, generate in hosts.items()}

    start = time.perf_counter()
    episodes, summary = run_device()
    device_first_s = time.perf_counter() - start
    host, host_first_s = {}, {}
    for name, run in run_host.items():
        start = time.perf_counter()
        host[name] = run()
        host_first_s[name] = time.perf_counter() - start
    device_replies = check_device_rewards(tokenizer, episodes, summary, ranks, device.eos_ids)

    device_s = float("inf")
    host_s = {name: float("inf") for name in run_host}
    host_sample_s = dict(host_s)
    reproduced = True
    for _ in range(args.repeats):
        start = time.perf_counter()
        _, again = run_device()
        device_s = min(device_s, time.perf_counter() - start)
        reproduced &= np.array_equal(again["reply_len"], summary["reply_len"])
        for name, run in run_host.items():
            start = time.perf_counter()
            host_again = run()
            seconds = time.perf_counter() - start
            if seconds < host_s[name]:
                host_s[name], host_sample_s[name] = seconds, host_again["sample_seconds"]
            reproduced &= host_again["replies"] == host[name]["replies"]
    if not reproduced:
        print("WARNING: a timed run did not reproduce the warm-up run's replies (new shapes may have been compiled "
              "inside the timing)")

    device_tokens = int(summary["reply_len"][summary["played"]].sum())
    device_played = int(summary["played"].sum())
    shapes = device.shapes
    later_turns = int(summary["played"][:, 1:].any(axis=0).sum())
    device_prefilled = args.batch * (shapes.prompt_width + later_turns * shapes.chunk_width)
    same_first = sum(d[0] == h[0] for d, h in zip(device_replies, host["host_loop_jax"]["replies"]))
    same_all = sum(d == h for d, h in zip(device_replies, host["host_loop_jax"]["replies"]))
    rows = {
        "device_rollout": {
            "seconds": device_s, "first_call_seconds": device_first_s, "episodes_per_s": args.batch / device_s,
            "tokens_per_s": device_tokens / device_s, "generated_tokens": device_tokens, "replies": device_played,
            "prefill_positions": device_prefilled, "successes": int(summary["success"].sum()),
            "mean_reward": float(summary["reward"][summary["played"]].mean())}}
    for name, h in host.items():
        rows[name] = {
            "seconds": host_s[name], "first_call_seconds": host_first_s[name],
            "episodes_per_s": args.batch / host_s[name],
            "tokens_per_s": h["generated_tokens"] / host_s[name], "generated_tokens": h["generated_tokens"],
            "sample_seconds": host_sample_s[name], "host_work_seconds": host_s[name] - host_sample_s[name],
            "prefill_positions": h["prefill_positions"], "replies": sum(map(len, h["rewards"])),
            "successes": sum(verifier.REWARD_CORRECT in r for r in h["rewards"]),
            "mean_reward": float(np.mean([x for r in h["rewards"] for x in r]))}
    ratios = {name: {key: rows["device_rollout"][key] / rows[name][key] for key in ("episodes_per_s", "tokens_per_s")}
              for name in host}

    print(f"GP-L rollout throughput: batch {args.batch}, up to {args.turns} turns, {args.max_new_tokens} new tokens, "
          f"greedy, {jax.devices()[0].platform} ({os.cpu_count()} cores), best of {args.repeats}")
    print(f"{'path':22s} {'seconds':>9s} {'episodes/s':>11s} {'tokens/s':>10s} {'tokens':>7s} {'replies':>8s} "
          f"{'successes':>9s} {'prefilled':>9s} {'compile+run s':>13s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['seconds']:9.2f} {r['episodes_per_s']:11.2f} {r['tokens_per_s']:10.1f} "
              f"{r['generated_tokens']:7d} {r['replies']:8d} {r['successes']:9d} "
              f"{r['prefill_positions']:9d} {r['first_call_seconds']:13.1f}")
    for name, ratio in ratios.items():
        print(f"{'device / ' + name.replace('host_loop_', 'host '):22s} {ratio['episodes_per_s']:6.2f}x episodes/s "
              f"{ratio['tokens_per_s']:6.2f}x tokens/s")
    print(f"device rewards == Python verifier on all {device_played} device replies; identical replies on the device "
          f"and the JAX host loop: first turn {same_first}/{args.batch} episodes, all turns {same_all}/{args.batch}")
    for name in host:
        print(f"{name}: {host_sample_s[name]:.2f} s generating, {host_s[name] - host_sample_s[name]:.2f} s of host "
              f"work (render, tokenize, pad, decode, verify)")

    result = {
        "benchmark": "rollout_throughput", "model": f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantised, {args.dtype})",
        "task": "GP-L in_dist", "batch": args.batch, "turns": args.turns, "max_new_tokens": args.max_new_tokens,
        "feedback_tokens": args.feedback_tokens, "prompt_width": shapes.prompt_width,
        "chunk_width": shapes.chunk_width, "greedy": True, "repeats": args.repeats, "seed": args.seed,
        "timed_runs_reproduced_warmup": reproduced,
        "device_rewards_match_python_verifier": True, "identical_first_replies": same_first,
        "identical_episodes": same_all, "device": str(jax.devices()[0]), "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
        "load_average_1m_at_end": os.getloadavg()[0], "results": rows, "ratio": ratios,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
