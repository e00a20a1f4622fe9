"""Memory and time of one RL update, GRPO against PPO, on the same batch and CPU.

Both sides run the RL job's jitted update (`rl_update.make_update` of `algorithms.build`, the state donated, as
`train_ppo` runs it) on SmolLM2-135M-Instruct (the embedded GGUF, float32) over one batch shaped like
configs/ppo_gp.py's: E conversations of a 160-token prompt and 2 turns of 64-token replies with a 40-token
revision feedback between them (L = 328 tokens), 2 epochs x 2 mini-batches, remat on. PPO: value head, GAE, one
scoring pass for old log-probs and values. GRPO: groups of 4, no value head, one scoring pass for old per-token
log-probs. Each algorithm runs in its own process, so its peak RSS is its own; XLA's memory analysis of the
compiled update (arguments: params + Adam state + batch; temporaries: activations and gradients) comes from the
same process. Timing excludes the compiling first update. Prints a table and writes
benchmarks/results/rl_update_memory.json.

    python benchmarks/rl_update_memory.py [--episodes 8] [--updates 2] [--model embedded:smollm2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

PROMPT, REPLY, FEEDBACK, TURNS = 160, 64, 40, 2


def host_batch(episodes: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """PPOBatch fields (host arrays) of `episodes` one-conversation episodes with TURNS replies each."""
    rng = np.random.default_rng(seed)
    width = PROMPT + TURNS * REPLY + (TURNS - 1) * FEEDBACK
    starts = np.asarray([PROMPT + t * (REPLY + FEEDBACK) for t in range(TURNS)], np.int32)
    ids = rng.integers(3, vocab, size=(episodes, width)).astype(np.int32)
    reply_tokens = np.stack([ids[:, s:s + REPLY] for s in starts], axis=1)
    return dict(ids=ids, mask=np.ones((episodes, width), bool), reply_tokens=reply_tokens,
                reply_len=np.full((episodes, TURNS), REPLY, np.int32),
                reply_start=np.broadcast_to(starts, (episodes, TURNS)).copy(),
                turn_valid=np.ones((episodes, TURNS), bool),
                reward=rng.choice([-1.0, 1.0, 5.0], size=(episodes, TURNS)).astype(np.float32),
                episode=np.arange(episodes, dtype=np.int32))


def child(algorithm: str, model_path: str, episodes: int, updates: int) -> dict:
    """Build, compile and time the update of one algorithm in this process; its measurements as a dict."""
    import jax
    import jax.numpy as jnp

    from jaxrl_vlm import config as config_lib
    from jaxrl_vlm.models import api
    from jaxrl_vlm.training import algorithms
    from jaxrl_vlm.training.flops import param_count
    from jaxrl_vlm.training.policy import policy_model
    from jaxrl_vlm.training.ppo_train import initial_ppo_state
    from jaxrl_vlm.training.rl_update import PPOBatch, make_update

    config = config_lib.base_config(job="ppo", run_name="bench")
    config.model.path = model_path
    config.ppo.algorithm = algorithm
    config.ppo.group_size = 4 if algorithm != "ppo" else 1
    config.ppo.episodes, config.ppo.epochs, config.ppo.minibatches = episodes, 2, 2
    model = api.load(config_lib.resolve_model_path(config.model.path))
    policy = policy_model(model, "float32", "float32", remat=True)
    state, (tx, _) = initial_ppo_state(config, model)
    update = jax.jit(make_update(algorithms.build(config, policy, jnp.asarray([-1], jnp.int32)), tx),
                     donate_argnums=0)
    batch = PPOBatch(**{k: jnp.asarray(v) for k, v in host_batch(episodes, model.config.vocab_size).items()})
    compiled = update.lower(state, batch, jax.random.key(0)).compile()
    memory = compiled.memory_analysis()
    times = []
    for u in range(updates + 1):
        clock = time.perf_counter()
        state, metrics = compiled(state, batch, jax.random.key(u))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - clock)
    return {"algorithm": algorithm, "trained_params": param_count(state.params),
            "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
            "xla_argument_bytes": memory.argument_size_in_bytes, "xla_temp_bytes": memory.temp_size_in_bytes,
            "xla_output_bytes": memory.output_size_in_bytes,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "first_update_s": times[0], "s_per_update": float(np.mean(times[1:])), "timed_updates": times[1:],
            "loss": float(metrics["loss"])}


def main() -> None:
    """Run each algorithm in a child process and report the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--updates", type=int, default=2, help="timed updates after the compiling one")
    parser.add_argument("--model", default="embedded:smollm2", help="a model.path (HF directory or .gguf)")
    parser.add_argument("--child", default="")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rl_update_memory.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.episodes, args.updates)))
        return
    load_before = os.getloadavg()
    rows = []
    for algorithm in ("ppo", "grpo"):
        run = subprocess.run([sys.executable, __file__, "--child", algorithm, "--episodes", str(args.episodes),
                              "--updates", str(args.updates), "--model", args.model], capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    load_after = os.getloadavg()
    mib = lambda b: b / 2 ** 20
    print(f"{args.model} float32, {args.episodes} conversations x {TURNS} turns of {REPLY} tokens "
          f"(L = {PROMPT + TURNS * REPLY + (TURNS - 1) * FEEDBACK}), 2 epochs x 2 mini-batches, "
          f"{args.updates} timed updates, {os.cpu_count()} CPU(s); load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print(f"{'algorithm':10s}{'params':>13s}{'state MiB':>11s}{'XLA args MiB':>14s}{'XLA temp MiB':>14s}"
          f"{'peak RSS MiB':>14s}{'s/update':>10s}")
    for r in rows:
        print(f"{r['algorithm']:10s}{r['trained_params']:13,d}{mib(r['state_bytes']):11.1f}"
              f"{mib(r['xla_argument_bytes']):14.1f}{mib(r['xla_temp_bytes']):14.1f}{mib(r['peak_rss_bytes']):14.1f}"
              f"{r['s_per_update']:10.2f}")
    ppo, grpo = rows
    print(f"GRPO / PPO: s/update {grpo['s_per_update'] / ppo['s_per_update']:.3f}, XLA temp "
          f"{grpo['xla_temp_bytes'] / ppo['xla_temp_bytes']:.3f}, peak RSS "
          f"{grpo['peak_rss_bytes'] / ppo['peak_rss_bytes']:.3f}")
    result = {"model": f"{args.model} (float32)", "episodes": args.episodes, "turns": TURNS,
              "reply_tokens": REPLY, "epochs": 2, "minibatches": 2, "timed_updates": args.updates,
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "load_average_before": load_before,
              "load_average_after": load_after, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
