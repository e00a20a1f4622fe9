"""Multi-turn V-IRL-L rollout throughput: the on-device rollout (`jaxrl_vlm.rollout.rollout`, one jit) against the
host-driven evaluation loop.

Both paths play the same B episodes of a V-IRL-L split (default in_distribution) on a synthetic city (built in a
temp dir by `envs.virl.cities.ensure_city`: the training city's style and grid, thumbnail panoramas, since V-IRL-L
reads only their metadata), with the same model (the embedded SmolLM2-135M-Instruct, float32 or `--dtype bfloat16`
on both paths), greedy decoding, up to `--max-new-tokens` tokens per reply, `--verify-iter` replies per route point,
on the same device, in the same run. The episodes are the same: both reset with the keys of
`jax.random.split(PRNGKey(seed), B)` through the same `VirlEnv.reset` (route, initial heading, dropped candidate
points); the routes are asserted equal.

- device: `rollout.rollout` of the environment-protocol task (`envs.virl.task.make_task`): per route point a fresh
  conversation (spec virl.md §1.9) assembled on the device from pre-tokenized pieces (chat-template head, the Q_VIRL_L
  prompt of the state, generation prompt), prefill, decode, token bytes, device verifier, after a wrong reply the
  pre-tokenized 'You failed this trial because ...' turn with the KV cache continued, after `verify-iter` wrong
  replies the budget's forced failure without generating a reply (§1.6). Set up as `ppo_train.train_ppo` and the
  evaluator do (`protocol.reset_batch`, `policy_model(...).decoder`, `token_bytes.token_byte_table`); timed up to
  the rewards, lengths, success and counts on the host.
- host: the host-driven V-IRL evaluation (`tests/virl_host_eval.py`, `VirlModelPolicy` on `VirlEvaluator.run`, the
  loop of `envs.virl.evaluation.evaluate_virl`, whose setup (route loading, byte-token env params) is done once,
  outside the timing): the batched device env makes the prompt text of every running episode, then on the host each
  conversation is rendered with `tokenizer.apply_chat_template`, tokenized, left-padded (to a multiple of 256 tokens,
  B rows), sampled with `models.api.sample` (re-prefilling the whole conversation every call), decoded with the
  tokenizer and sent back to the env as bytes. Like the reference, it also generates the reply of the call that the
  env turns into the budget's forced failure without reading it (reported as forced_budget_replies).

What is equal: episodes, model, dtype, greedy, max new tokens per reply, the verifier and env (the same device
`VirlEnv.step`), the §1.9 protocol. What is not: the device assembles pre-tokenized prompt pieces and keeps the
sampled reply tokens in its cache, the host re-tokenizes the rendered text, so the token sequences (and greedy
replies) can differ; the episodes with identical replies on both paths are counted, and when all are identical the
success, env steps and step accuracy are asserted equal. Each path's replies played, env steps (every env step, forced
failures included, spec §1.8), generated tokens (incl. stop tokens, the host's counted on the real rows only) and
prefilled positions (padding included: the device prefills its task's prompt_width, the longest prompt any point of
any route can have, in every conversation; the host the rendered length rounded up to 256) are reported; episodes/s is
B / wall time, tokens/s generated tokens / wall time. Each path runs once to compile (recorded separately:
first_call_seconds), then `--repeats` times, alternating; the best time counts (greedy: a timed run repeats the
warm-up's replies, so no new shapes are met; recorded as timed_runs_reproduced_warmup). The host time is split into
`api.sample` and host work.

Usage: PYTHONPATH=. python benchmarks/virl_rollout_throughput.py [--batch 8] [--max-new-tokens 128] [--repeats 3]
[--verify-iter 2] [--split in_distribution] [--routes 24] [--dtype float32]
[--out benchmarks/results/virl_rollout_throughput[_bfloat16].json]; prints a table and writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import virl_host_eval  # noqa: E402  (tests/virl_host_eval.py: the host-driven V-IRL evaluator)

from jaxrl_vlm import rollout as rollout_lib  # noqa: E402
from jaxrl_vlm.config import EMBEDDED_MODEL, resolve_model_path  # noqa: E402
from jaxrl_vlm.envs.virl.cities import LANGUAGE_PANO_WIDTH, ensure_city  # noqa: E402
from jaxrl_vlm.envs.virl.env import VirlConfig, build_params, prompt_length_bound  # noqa: E402
from jaxrl_vlm.envs.virl.evaluation import SPLITS, VirlEvaluator, load_templates, utf8_encode  # noqa: E402
from jaxrl_vlm.envs.virl.task import make_task  # noqa: E402
from jaxrl_vlm.models import api, sampler  # noqa: E402
from jaxrl_vlm.models.tokenizer import load_tokenizer  # noqa: E402

from device_rollout import DevicePath, decode_reply  # noqa: E402  (benchmarks/device_rollout.py)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "virl_rollout_throughput.json")


class SampleMeter:
    """Stands in for `models.api` inside tests/virl_host_eval.py: `sample` is `api.sample`, timed (to the host
    arrays), its generated tokens counted on the first `real_rows` rows (the policy pads each chunk with copies of
    its first row) and its prefilled positions (padding included) counted; everything else is `api`'s."""

    def __init__(self):
        self.real_rows = None
        self.reset()

    def reset(self) -> None:
        self.seconds, self.tokens, self.prefilled, self.calls = 0.0, 0, 0, 0

    def sample(self, model, input_ids, attention_mask, **kwargs):
        start = time.perf_counter()
        out = api.sample(model, input_ids, attention_mask, **kwargs)
        lengths = np.asarray(out.lengths)
        self.seconds += time.perf_counter() - start
        self.tokens += int(lengths[:self.real_rows].sum())
        self.prefilled += int(np.asarray(input_ids).size)
        self.calls += 1
        return out

    def __getattr__(self, name: str):
        return getattr(api, name)


METER = SampleMeter()
virl_host_eval.models_api = METER


class MeteredPolicy(virl_host_eval.VirlModelPolicy):
    """`VirlModelPolicy` unchanged, recording each episode's replies in order, split into the ones the env scores
    and the ones of a forced-failure call (state.remaining == 0: the env does not read them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.played: dict[int, list[str]] = {}
        self.forced = 0

    def __call__(self, batch):
        if len(batch.episodes) > self.batch_size:
            raise ValueError("the meter counts one sample chunk per call: batch_size must be >= the episodes")
        METER.real_rows = len(batch.episodes)
        out = super().__call__(batch)
        for e, remaining in zip(batch.episodes, batch.state.remaining):
            if remaining > 0:
                self.played.setdefault(int(e), []).append(self.conversations[int(e)].last_reply)
            else:
                self.forced += 1
        return out


class HostPath:
    """The host-driven evaluation loop (`evaluate_virl`'s `VirlEvaluator.run`) with `VirlModelPolicy`."""

    def __init__(self, model: Any, tokenizer, city_dir: str, *, split: str, batch: int, verify_iter: int,
                 max_new_tokens: int, seed: int):
        setting = SPLITS[split]
        _, templates = load_templates(city_dir)
        self.params, _ = build_params(templates, utf8_encode, setting.absolute_action, False)
        config = VirlConfig(verify_iter=verify_iter, max_prompt_tokens=prompt_length_bound(self.params))
        self.evaluator = VirlEvaluator(config)  # one instance: its jitted env functions compile once
        self.routes = (np.arange(batch) % len(templates) if setting.ordered else np.full(batch, -1)).astype(np.int32)
        self.model, self.tokenizer = model, tokenizer
        self.batch, self.max_new_tokens, self.seed = batch, max_new_tokens, seed

    def __call__(self) -> dict[str, Any]:
        policy = MeteredPolicy(self.model, self.tokenizer, vision=False, batch_size=self.batch,
                               max_new_tokens=self.max_new_tokens, temperature=0.0, seed=self.seed)
        METER.reset()
        result = self.evaluator.run(policy, self.params, self.routes, self.seed, byte_tokens=True)
        replies = [policy.played.get(b, []) for b in range(self.batch)]
        return {"result": result, "replies": replies, "forced_budget_replies": policy.forced,
                "generated_tokens": METER.tokens, "sample_seconds": METER.seconds,
                "prefill_positions": METER.prefilled, "sample_calls": METER.calls}


def device_replies(tokenizer, episodes: rollout_lib.Episodes, summary: dict[str, np.ndarray],
                   eos_ids: jax.Array) -> list[list[str]]:
    """Each episode's played replies as text, in play order (conversation, then turn)."""
    tokens = np.asarray(episodes.reply_tokens)
    batch, rounds, turns, width = tokens.shape
    text_len = np.asarray(sampler.lengths_without_stop(tokens.reshape(-1, width), summary["reply_len"].reshape(-1),
                                                         eos_ids)).reshape(batch, rounds, turns)
    return [[decode_reply(tokenizer, tokens[b, r, t, :text_len[b, r, t]])
             for r in range(rounds) for t in range(turns) if summary["played"][b, r, t]] for b in range(batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="episodes (one batch on each path)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--verify-iter", type=int, default=2, help="replies per route point at most (§1.6)")
    parser.add_argument("--split", default="in_distribution", choices=sorted(SPLITS))
    parser.add_argument("--routes", type=int, default=24, help="routes of the synthetic city")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="param and compute dtype of both paths")
    parser.add_argument("--out", default=None, help=f"default {RESULTS} (float32), else with a _<dtype> suffix")
    args = parser.parse_args()
    if args.out is None:
        args.out = RESULTS if args.dtype == "float32" else RESULTS.replace(".json", f"_{args.dtype}.json")

    path = resolve_model_path(EMBEDDED_MODEL)
    model = api.load(path, dtype=args.dtype)
    tokenizer = load_tokenizer(path)
    with tempfile.TemporaryDirectory() as city_dir:
        ensure_city(city_dir, args.seed, args.routes, ("soho",), LANGUAGE_PANO_WIDTH)
        device = DevicePath(model, tokenizer, make_task(tokenizer, args.split, city_dir, verify_iter=args.verify_iter),
                            batch=args.batch, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
        run_host = HostPath(model, tokenizer, city_dir, split=args.split, batch=args.batch,
                            verify_iter=args.verify_iter, max_new_tokens=args.max_new_tokens, seed=args.seed)
    state = device.reset(jax.random.PRNGKey(args.seed))  # the keys `VirlEvaluator.run` resets with
    sample_key = jax.random.key(args.seed + 1)  # unused at temperature 0
    run_device = lambda: device(state, sample_key)

    start = time.perf_counter()
    episodes, summary = run_device()
    device_first_s = time.perf_counter() - start
    start = time.perf_counter()
    host = run_host()
    host_first_s = time.perf_counter() - start
    device_routes = np.asarray(state.route).tolist()
    if device_routes != host["result"]["routes"]:
        raise AssertionError(f"the paths play different routes: device {device_routes}, host "
                             f"{host['result']['routes']}")
    replies = device_replies(tokenizer, episodes, summary, device.eos_ids)

    device_s = host_s = float("inf")
    host_sample_s = float("inf")
    reproduced = True
    for _ in range(args.repeats):
        start = time.perf_counter()
        _, again = run_device()
        device_s = min(device_s, time.perf_counter() - start)
        reproduced &= all(np.array_equal(again[k], summary[k]) for k in ("reply_len", "played", "reward"))
        start = time.perf_counter()
        host_again = run_host()
        seconds = time.perf_counter() - start
        if seconds < host_s:
            host_s, host_sample_s = seconds, host_again["sample_seconds"]
        reproduced &= host_again["replies"] == host["replies"]
    if not reproduced:
        print("WARNING: a timed run did not reproduce the warm-up run's replies (new shapes may have been compiled "
              "inside the timing)")

    played = summary["played"]
    hits, steps = summary["counts"]["step_accuracy"]
    device_steps = int(steps.sum())
    rounds_run = played[:, :, 0].any(axis=0)
    later_turns = int(played[:, :, 1:].any(axis=0).sum())
    device_prefilled = args.batch * (int(rounds_run.sum()) * device.shapes.prompt_width
                                     + later_turns * device.shapes.chunk_width)
    device_tokens = int(summary["reply_len"][played].sum())
    h = host["result"]
    same_first = sum(bool(d) and bool(o) and d[0] == o[0] for d, o in zip(replies, host["replies"]))
    same_all = sum(d == o for d, o in zip(replies, host["replies"]))
    rows = {
        "device_rollout": {
            "seconds": device_s, "first_call_seconds": device_first_s, "episodes_per_s": args.batch / device_s,
            "tokens_per_s": device_tokens / device_s, "generated_tokens": device_tokens,
            "replies_played": int(played.sum()), "replies_generated": int(played.sum()),
            "forced_budget_replies": 0, "env_steps": device_steps,
            "prefill_positions": device_prefilled, "conversations": int(played[:, :, 0].sum()),
            "success": float(summary["success"].mean()),
            "step_accuracy": int(hits.sum()) / max(device_steps, 1),
            "overflow": int(summary["overflow"].sum())},
        "host_loop": {
            "seconds": host_s, "first_call_seconds": host_first_s, "episodes_per_s": args.batch / host_s,
            "tokens_per_s": host["generated_tokens"] / host_s, "generated_tokens": host["generated_tokens"],
            "replies_played": sum(map(len, host["replies"])),
            "replies_generated": sum(map(len, host["replies"])) + host["forced_budget_replies"],
            "forced_budget_replies": host["forced_budget_replies"], "env_steps": h["num_steps"],
            "prefill_positions": host["prefill_positions"], "sample_calls": host["sample_calls"],
            "sample_seconds": host_sample_s, "host_work_seconds": host_s - host_sample_s,
            "success": h["success_rate"], "step_accuracy": h["per_step_accuracy"]}}
    if same_all == args.batch:  # identical replies everywhere: the outcomes must be the host's
        for key in ("success", "env_steps", "step_accuracy"):
            d, o = rows["device_rollout"][key], rows["host_loop"][key]
            if not np.isclose(d, o):
                raise AssertionError(f"identical replies on both paths but {key} differs: device {d}, host {o}")
    ratio = {key: rows["device_rollout"][key] / rows["host_loop"][key] for key in ("episodes_per_s", "tokens_per_s")}

    print(f"V-IRL-L rollout throughput: {args.split}, {args.batch} episodes, verify_iter {args.verify_iter}, "
          f"{args.max_new_tokens} new tokens, greedy, {args.dtype}, {jax.devices()[0].platform} "
          f"({os.cpu_count()} cores), best of {args.repeats}")
    print(f"{'path':15s} {'seconds':>9s} {'episodes/s':>11s} {'tokens/s':>10s} {'tokens':>7s} {'played':>7s} "
          f"{'+forced':>7s} {'steps':>6s} {'success':>8s} {'step acc':>8s} {'prefilled':>9s} {'compile+run s':>13s}")
    for name, r in rows.items():
        print(f"{name:15s} {r['seconds']:9.2f} {r['episodes_per_s']:11.2f} {r['tokens_per_s']:10.1f} "
              f"{r['generated_tokens']:7d} {r['replies_played']:7d} {r['forced_budget_replies']:7d} "
              f"{r['env_steps']:6d} {r['success']:8.3f} "
              f"{r['step_accuracy']:8.3f} {r['prefill_positions']:9d} {r['first_call_seconds']:13.1f}")
    print(f"{'device / host':15s} {ratio['episodes_per_s']:6.2f}x episodes/s {ratio['tokens_per_s']:6.2f}x tokens/s")
    print(f"same routes on both paths; identical replies on the device and the host: first reply "
          f"{same_first}/{args.batch} episodes, all replies {same_all}/{args.batch}; host replies include "
          f"{host['forced_budget_replies']} forced-failure replies the env does not read")
    print(f"host_loop: {host_sample_s:.2f} s in api.sample ({host['sample_calls']} calls), "
          f"{host_s - host_sample_s:.2f} s of host work (env, render, tokenize, pad, decode)")

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
               "jax_devices": [str(d) for d in jax.devices()], "load_average_at_end": list(os.getloadavg())}
    result = {
        "benchmark": "virl_rollout_throughput",
        "model": f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantised, {args.dtype})", "task": f"V-IRL-L {args.split}",
        "machine": machine,
        "workload": {"episodes": args.batch, "verify_iter": args.verify_iter, "max_new_tokens": args.max_new_tokens,
                     "city": {"routes": args.routes, "seed": args.seed, "styles": ["soho"],
                              "pano_width": LANGUAGE_PANO_WIDTH},
                     "prompt_width": device.shapes.prompt_width, "chunk_width": device.shapes.chunk_width,
                     "conversations_per_episode_max": device.env.conversations, "greedy": True,
                     "repeats": args.repeats, "seed": args.seed},
        "timed_runs_reproduced_warmup": reproduced, "routes": device_routes,
        "identical_first_replies": same_first, "identical_episodes": same_all,
        "results": rows, "ratio": ratio,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
